"""Scan masks against the spec's allowed-key sets, and the masking property of a ScanBlock."""
from __future__ import annotations

import pytest
import torch

from scanssc_ros.model.scan import ScanBlock, ScanBlockLayer, scan_mask


def allowed_keys(axis: str, q: int, L: int) -> set:
    if axis == "depth":
        return set(range(0, max(q, L // 2 - 1) + 1))
    if axis == "height":
        return set(range(q, L))
    lo, hi = min(q, L - 1 - q), max(q, L - 1 - q)
    return set(range(lo, hi + 1)) | set(range(L // 4, 3 * L // 4))


@pytest.mark.parametrize("axis,L", [("depth", 128), ("width", 128), ("height", 16), ("depth", 16), ("width", 16),
                                    ("height", 128), ("width", 8)])
def test_mask_equals_spec_allowed_sets(axis, L):
    m = scan_mask(axis, L)
    assert m.shape == (L, L) and m.dtype == torch.bool
    for q in range(L):
        got = {k for k in range(L) if not m[q, k]}
        assert got == allowed_keys(axis, q, L), (axis, q)
        assert q in got  # no fully blocked row (would make the softmax NaN)


@pytest.mark.parametrize("L", [16, 128])
def test_mask_equals_official_construction(L):
    """The official code builds the masks from triangles; rebuild them that way for an independent check."""
    ones = torch.ones(L, L)
    depth = torch.triu(ones, diagonal=1) == 1
    depth[:, : L // 2] = False
    height = torch.tril(ones, diagonal=-1) == 1
    half = L // 2
    quarter = torch.tril(torch.ones(half, half), diagonal=-1) == 1
    top = torch.cat((quarter, quarter.flip(dims=[-1])), dim=-1)
    width = torch.cat((top, top.flip(dims=[-2])), dim=0)
    width[:, L // 4: -(L // 4)] = False
    assert torch.equal(scan_mask("depth", L), depth)
    assert torch.equal(scan_mask("height", L), height)
    assert torch.equal(scan_mask("width", L), width)


def test_unknown_axis_raises():
    with pytest.raises(ValueError, match="unknown scan axis"):
        scan_mask("time", 8)


@pytest.mark.parametrize("axis", ["depth", "width", "height"])
def test_blocked_keys_do_not_influence_query(axis):
    torch.manual_seed(0)
    L, C = 16, 16
    layer = ScanBlockLayer(C, 32, 4, axis, dropout=0.1).eval()
    x = torch.randn(3, L, C)
    pos = torch.randn(1, L, C)
    base = layer(x, pos)
    m = scan_mask(axis, L)
    for q in (0, 5, L // 2, L - 1):
        blocked = m[q].nonzero().flatten()
        if len(blocked):
            x2 = x.clone()
            x2[:, blocked] = torch.randn(3, len(blocked), C) * 5
            assert torch.allclose(layer(x2, pos)[:, q], base[:, q], atol=1e-5), (axis, q)
        allowed = (~m[q]).nonzero().flatten()
        other = [k for k in allowed.tolist() if k != q]
        if other:  # an allowed key must matter, or the test above could pass vacuously
            x3 = x.clone()
            x3[:, other[0]] += torch.randn(C) * 3.0  # not a constant shift: LayerNorm would remove it
            assert not torch.allclose(layer(x3, pos)[:, q], base[:, q], atol=1e-4)


def test_scan_block_routes_axes_of_the_volume():
    """Perturbing one voxel only changes voxels on its own line along the block's axis."""
    torch.manual_seed(1)
    B, X, Y, Z, C = 1, 8, 8, 4, 8
    vol = torch.randn(B, X, Y, Z, C)
    pos = torch.randn(Y, Z, C)
    for axis, line in (("depth", lambda d: (d[1] == 3) & (d[2] == 2)),
                       ("width", lambda d: (d[0] == 5) & (d[2] == 2)),
                       ("height", lambda d: (d[0] == 5) & (d[1] == 3))):
        blk = ScanBlock(C, 2, 16, axis).eval()
        base = blk(vol, pos)
        v2 = vol.clone()
        v2[0, 5, 3, 2] += torch.randn(C) * 2.0
        changed = (blk(v2, pos) - base).abs().amax(-1)[0] > 1e-6
        idx = torch.stack(torch.meshgrid(torch.arange(X), torch.arange(Y), torch.arange(Z), indexing="ij"))
        assert not (changed & ~line(idx)).any(), axis
        assert changed[5, 3, 2]
