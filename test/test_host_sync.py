"""Host synchronisations of the CUDA forward, counted on the CPU (``model.host_sync``), and the sync-free forms
of the lift, the proposal and the cross-attention's scatter checked against the selections they replaced."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from scanssc_ros.config import variant
from scanssc_ros.geometry import GridSpec
from scanssc_ros.model import lift
from scanssc_ros.model.examples import example_inputs
from scanssc_ros.model.host_sync import SyncProbe, cuda_paths, forward_syncs
from scanssc_ros.model.lift import lss_pool, truncated_voxel_index
from scanssc_ros.model.proposal import voxel_proposal
from scanssc_ros.model.scanssc import ScanSSC


def _ops(probe: SyncProbe) -> list:
    return sorted(op for op, _ in probe.syncs)


@pytest.mark.parametrize("make, expect", [
    (lambda t, m: t.sum().item(), ["item"]),
    (lambda t, m: int(t[0, 0]), ["item"]),
    (lambda t, m: bool(t[0, 0] > 0), ["is_nonzero"]),
    (lambda t, m: t.nonzero(), ["nonzero"]),
    (lambda t, m: torch.where(m), ["where"]),
    (lambda t, m: t[m], ["index"]),
    (lambda t, m: t.clone().index_put_((m,), torch.tensor(0.0)), ["index_put_"]),
    (lambda t, m: torch.unique(t), ["_unique2"]),
    (lambda t, m: torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3])), ["repeat_interleave"]),
    (lambda t, m: torch.linalg.inv(t[:3, :3]), ["linalg_inv"]),
    (lambda t, m: t.cpu(), ["cpu"]),
    (lambda t, m: t.numpy(), ["numpy"]),
    (lambda t, m: t.tolist(), ["tolist"]),
    # none of these waits: sizes known beforehand, integer indices, statuses left on the device
    (lambda t, m: t[torch.tensor([0, 2])], []),
    (lambda t, m: t.repeat_interleave(2, dim=1), []),
    (lambda t, m: torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]), output_size=6), []),
    (lambda t, m: torch.where(m, t, 0.0), []),
    (lambda t, m: torch.linalg.inv_ex(t[:3, :3]).inverse, []),
    (lambda t, m: torch.zeros(5).index_add_(0, torch.tensor([0, 0, 4]), torch.ones(3)), []),
])
def test_probe_finds_the_ops_that_wait_for_the_device(make, expect):
    t = torch.randn(4, 4) + 4 * torch.eye(4)
    m = t > 0
    methods = [torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist]
    with torch.inference_mode(), SyncProbe() as probe:
        make(t, m)
    assert _ops(probe) == expect
    assert [torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist] == methods  # unpatched on exit


@pytest.mark.parametrize("name", ["tiny", "lite"])
def test_cuda_forward_waits_only_for_the_query_count(name):
    """The CUDA branches of a forward, run on the CPU: the one host wait left is the number of proposal voxels,
    which sizes the cross-attention's queries. The lift's selection of the points inside the grid (one wait per
    chunk: 14 in the paper model), the proposal's, the cross-attention's scatter of the real queries and the
    camera matrices' inversion checks used to wait as well."""
    torch.manual_seed(0)
    cfg = variant(name)
    with cuda_paths():
        probe = forward_syncs(ScanSSC(cfg).eval(), example_inputs(cfg))
    assert [(op, where.split(":")[0]) for op, where in probe.syncs] == [("item", "model/encoder.py")], probe.syncs
    assert probe.total == 1


def _lss_pool_selected(context, depth, points, grid):
    """The lift as it was: the inside points selected per chunk (a value-sized result), then summed."""
    B, C, h, w = context.shape
    N = grid.num_voxels
    flat, inside = truncated_voxel_index(points, grid)
    flat = flat + (torch.arange(B) * N)[:, None, None, None]
    ctx = context.permute(0, 2, 3, 1)
    out = ctx.new_zeros(B * N, C)
    for d in range(depth.shape[1]):
        src = depth[:, d:d + 1, :, :, None] * ctx[:, None]
        keep = inside[:, d:d + 1]
        out.index_add_(0, flat[:, d:d + 1][keep], src[keep])
    return out.view(B, *grid.dims, C).permute(0, 4, 1, 2, 3)


def test_lss_pool_spare_rows_sum_exactly_what_the_selection_summed():
    torch.manual_seed(3)
    grid = GridSpec((0.0, -2.0, -1.0), 0.25, (16, 16, 8))
    B, C, D, h, w = 2, 5, 6, 7, 9
    context = torch.randn(B, C, h, w, requires_grad=True)
    depth = torch.rand(B, D, h, w, requires_grad=True)
    # about half the points outside the grid, on every side
    points = torch.rand(B, D, h, w, 3, dtype=torch.float64) * torch.tensor([5.0, 5.0, 2.5]) - \
        torch.tensor([0.5, 2.5, 1.25])
    assert 0.3 < truncated_voxel_index(points, grid)[1].float().mean() < 0.7
    ref = _lss_pool_selected(context, depth, points, grid)
    # one depth bin per chunk, as in the selection above, so both add each voxel's terms in the same order
    with mock.patch.object(lift, "_MAX_ROWS_X_CH", B * h * w * C):
        out = lss_pool(context, depth, points, grid)
    assert torch.equal(out, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (context, depth), g)
    ref_grads = torch.autograd.grad(ref, (context, depth), g)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(grads, ref_grads))


def test_lss_pool_spare_rows_do_not_leak_into_the_grid():
    """Every point outside the grid: nothing lands in the volume, however many spare rows they share."""
    grid = GridSpec((0.0, 0.0, 0.0), 1.0, (4, 4, 2))
    B, C, D, h, w = 1, 3, 4, 6, 50  # 1200 points: more than the spare rows, so rows are shared
    points = torch.full((B, D, h, w, 3), -5.0)
    out = lss_pool(torch.ones(B, C, h, w), torch.ones(B, D, h, w), points, grid)
    assert out.shape == (B, C, 4, 4, 2) and not out.any()


def test_proposal_batch_falls_back_per_sample():
    """A sample with fewer than 2 kept voxels gets every voxel as a query; the other sample keeps its own
    proposal (the fallback is a per-sample OR now, not a masked write)."""
    grid = GridSpec((0.0, -3.2, -1.6), 0.8, (8, 8, 4))
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    T = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    A = torch.eye(3)
    torch.manual_seed(9)
    depth = torch.stack([torch.zeros(1, 12, 16), torch.rand(1, 12, 16) * 6 + 0.5])
    single = voxel_proposal(depth[1:], K[None], T[None], A[None], grid)
    for paths in (cuda_paths, None):
        with paths() if paths else torch.no_grad():
            both = voxel_proposal(depth, K[None].expand(2, -1, -1), T[None].expand(2, -1, -1),
                                  A[None].expand(2, -1, -1), grid)
        assert both[0].all()
        assert 2 <= single.sum() < single.numel() and torch.equal(both[1], single[0])
