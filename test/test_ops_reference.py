"""Every fast op of the model against a slow, obvious reference (small sizes, float64 where it matters)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scanssc_ros.geometry import GridSpec, unproject_pixels
from scanssc_ros.model import fastpath, msda
from scanssc_ros.model.deform_conv import DeformConv2dPack, deform_conv2d
from scanssc_ros.model.dfa3d import dfa3d_sample
from scanssc_ros.model.lift import lss_pool, truncated_voxel_index
from scanssc_ros.model.msda import ms_deform_attn
from scanssc_ros.model.neighborhood_attention import NeighborhoodCrossAttention2D, neighborhood_attention_2d
from scanssc_ros.model.proposal import voxel_proposal
from scanssc_ros.model.scan import masked_attention, scan_mask
from scanssc_ros.model.stereo_depth import stereo_onehot


def bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (C, H, W); pixel-centre coordinates; corners outside contribute zero."""
    C, H, W = img.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(C, dtype=img.dtype)
    for cy in (y0, y0 + 1):
        for cx in (x0, x0 + 1):
            if 0 <= cx < W and 0 <= cy < H:
                out += (1 - abs(x - cx)) * (1 - abs(y - cy)) * img[:, cy, cx]
    return out


# ----------------------------------------------------------------------------------------- deformable conv
def deform_conv_loop(x, offset, weight, groups):
    B, C, H, W = x.shape
    Cout, Cg, k, _ = weight.shape
    out = torch.zeros(B, Cout, H, W, dtype=x.dtype)
    og = Cout // groups
    for b in range(B):
        for i in range(H):
            for j in range(W):
                for t in range(k * k):
                    ki, kj = divmod(t, k)
                    py = i - 1 + ki + offset[b, 2 * t, i, j].item()
                    px = j - 1 + kj + offset[b, 2 * t + 1, i, j].item()
                    s = bilinear(x[b], px, py)
                    for o in range(Cout):
                        g = o // og
                        out[b, o, i, j] += (weight[o, :, ki, kj] * s[g * Cg:(g + 1) * Cg]).sum()
    return out


def test_deform_conv_matches_loop():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    off = torch.randn(1, 18, 4, 5, dtype=torch.float64) * 1.5
    fast = deform_conv2d(x, off, w, padding=1, groups=4)
    ref = deform_conv_loop(x, off, w, groups=4)
    assert torch.allclose(fast.double(), ref, atol=1e-4)


def test_deform_conv_zero_offset_is_conv2d():
    torch.manual_seed(1)
    layer = DeformConv2dPack(8, 12, 3, padding=1, groups=4)
    x = torch.randn(1, 8, 9, 11)
    ref = F.conv2d(x, layer.weight, padding=1, groups=4)
    assert torch.allclose(layer(x), ref, atol=1e-5)
    assert torch.count_nonzero(layer.conv_offset.weight) == 0


# ----------------------------------------------------------------------------------------- MSDA
def msda_loop(value, shapes, loc, wts):
    B, Q, nH = loc.shape[:3]
    P, Dh = loc.shape[4], value.shape[-1]
    ref = torch.zeros(B, Q, nH * Dh, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            for h in range(nH):
                start = 0
                for lvl, (hh, ww) in enumerate(shapes):
                    img = value[b, start:start + hh * ww, h].T.reshape(Dh, hh, ww)
                    for p in range(P):
                        x = loc[b, q, h, lvl, p, 0].item() * ww - 0.5
                        y = loc[b, q, h, lvl, p, 1].item() * hh - 0.5
                        ref[b, q, h * Dh:(h + 1) * Dh] += wts[b, q, h, lvl, p] * bilinear(img, x, y)
                    start += hh * ww
    return ref


def _msda_case(dtype, Q=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    B, nH, Dh, P = 2, 2, 3, 3
    shapes = [(4, 5), (2, 3)]
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, nH, Dh, dtype=dtype, generator=g)
    loc = torch.rand(B, Q, nH, len(shapes), P, 2, dtype=dtype, generator=g) * 1.4 - 0.2  # some samples outside
    wts = torch.rand(B, Q, nH, len(shapes), P, dtype=dtype, generator=g)
    return value, shapes, loc, wts


def test_msda_matches_bilinear_loop():
    value, shapes, loc, wts = _msda_case(torch.float64)
    assert torch.allclose(ms_deform_attn(value, shapes, loc, wts).double(), msda_loop(value, shapes, loc, wts),
                          atol=1e-5)


def test_msda_gather_path_matches_loop_and_grid_sample(monkeypatch):
    # float32 CPU inference takes the channels-last gather; several chunks, samples far outside, exactly on the
    # border and NaN (NaN out, as from grid_sample), a non-contiguous value
    value, shapes, loc, wts = _msda_case(torch.float32, Q=40, seed=5)
    loc[0, 0, 0, 0, 0] = torch.tensor([-3.0, 0.5])
    loc[0, 1, 0, 0, 1] = torch.tensor([0.5, 7.0])
    loc[1, 2, 1, 1, 2] = torch.tensor([1.0, 0.0])
    loc[1, 3, 0, 0, 0] = torch.tensor([float("nan"), 0.5])
    value = value.transpose(2, 3).contiguous().transpose(2, 3)
    monkeypatch.setattr(msda, "_GATHER_ENTRIES", 2 * 2 * 4 * 3 * 7)  # 7 queries per chunk
    calls = []
    real = msda.gather_sum
    monkeypatch.setattr(msda, "gather_sum", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fast = ms_deform_attn(value, shapes, loc, wts)
        with fastpath.reference_ops():
            ref = ms_deform_attn(value, shapes, loc, wts)
    assert calls == [1] and fast.dtype == torch.float32
    nan = torch.zeros_like(fast, dtype=torch.bool)
    nan[1, 3, :3] = True  # head 0 of the query with the NaN sample
    assert torch.equal(fast.isnan(), nan) and torch.equal(ref.isnan(), nan)
    assert torch.allclose(fast[~nan], ref[~nan], atol=2e-6)
    loop = msda_loop(value.double(), shapes, loc.double().nan_to_num(0.5), wts.double())
    assert torch.allclose(fast.double()[~nan], loop[~nan], atol=1e-5)


def test_msda_gather_path_declines_tables_past_float_exactness(monkeypatch):
    value, shapes, loc, wts = _msda_case(torch.float32)
    monkeypatch.setattr(msda, "_GATHER_MAX_ROWS", 2 * 2 * (7 * 8 + 5 * 6))  # exactly the padded rows: too many
    assert msda.gather_table(value, shapes) is None
    with torch.no_grad():
        with fastpath.reference_ops():
            ref = ms_deform_attn(value, shapes, loc, wts)
        assert torch.equal(ms_deform_attn(value, shapes, loc, wts), ref)


def test_msda_chunking_does_not_change_result():
    torch.manual_seed(3)
    value = torch.randn(1, 30, 2, 4)
    loc = torch.rand(1, 50, 2, 1, 3, 2)
    w = torch.rand(1, 50, 2, 1, 3)
    with fastpath.reference_ops():  # max_samples chunks the grid_sample reference
        a = ms_deform_attn(value, [(5, 6)], loc, w)
        b = ms_deform_attn(value, [(5, 6)], loc, w, max_samples=30)
    assert torch.allclose(a, b, atol=1e-6)
    # with autograd the samples are not weighted in place: same values, and the gradients reach every input
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, w)]
    c = ms_deform_attn(*leaves[:1], [(5, 6)], *leaves[1:], max_samples=30)
    assert torch.equal(c.detach(), b)
    c.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)


# ----------------------------------------------------------------------------------------- DFA3D
def _dfa3d_case(dtype=torch.float64, seed=4):
    g = torch.Generator().manual_seed(seed)
    B, h, w, D, nH, Dh, Q, P = 2, 4, 6, 7, 2, 3, 5, 3
    value = torch.randn(B, h * w, nH, Dh, dtype=dtype, generator=g)
    depth = torch.rand(B, h * w, D, dtype=dtype, generator=g).softmax(-1)
    loc = torch.rand(B, Q, nH, P, 3, dtype=dtype, generator=g) * 1.3 - 0.15
    wts = torch.rand(B, Q, nH, P, dtype=dtype, generator=g)
    return value, depth, (h, w), loc, wts


def test_dfa3d_equals_trilinear_sampling_of_lifted_volume():
    value, depth, (h, w), loc, wts = _dfa3d_case()
    B, S, nH, Dh = value.shape
    D = depth.shape[-1]
    Q, P = loc.shape[1], loc.shape[3]
    fast = dfa3d_sample(value, depth, (h, w), loc, wts)
    # explicit lifted volume per head: (B*nH, Dh, D, h, w) = value[c, y, x] * depth[d, y, x]
    vol = torch.einsum("bsnc,bsd->bncds", value, depth).reshape(B * nH, Dh, D, h, w)
    grid = (2 * loc - 1).permute(0, 2, 1, 3, 4).reshape(B * nH, Q, P, 1, 3)  # (x=u, y=v, z=d)
    s = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]
    ref = (s * wts.permute(0, 2, 1, 3).reshape(B * nH, 1, Q, P)).sum(-1)  # B*nH, Dh, Q
    ref = ref.view(B, nH, Dh, Q).permute(0, 3, 1, 2).reshape(B, Q, nH * Dh)
    assert torch.allclose(fast.double(), ref, atol=1e-6)


def test_dfa3d_half_bin_offset():
    # a location exactly at bin i's reference depth (i + 0.5) / D reads bin i alone
    D = 5
    value = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    depth = torch.tensor([[[0.1, 0.2, 0.3, 0.15, 0.25]]], dtype=torch.float64)
    for i in range(D):
        loc = torch.tensor([0.5, 0.5, (i + 0.5) / D], dtype=torch.float64).view(1, 1, 1, 1, 3)
        out = dfa3d_sample(value, depth, (1, 1), loc, torch.ones(1, 1, 1, 1, dtype=torch.float64))
        assert out.item() == pytest.approx(depth[0, 0, i].item())


def test_dfa3d_gradcheck():
    value, depth, hw, loc, wts = _dfa3d_case(seed=5)
    value = value[:1, :, :1, :2].clone().requires_grad_()
    depth = depth[:1].clone().requires_grad_()
    wts = wts[:1, :3, :1].clone().requires_grad_()
    loc = loc[:1, :3, :1]
    assert torch.autograd.gradcheck(lambda v, d, a: dfa3d_sample(v, d, hw, loc, a), (value, depth, wts),
                                    fast_mode=True)


# ----------------------------------------------------------------------------------------- neighbourhood attn
def test_neighborhood_attention_matches_pixel_loop():
    torch.manual_seed(6)
    B, nH, H, W, Dh, k = 1, 1, 6, 7, 3, 5
    q = torch.randn(B, nH, H, W, Dh, dtype=torch.float64)
    kk = torch.randn(B, nH, H, W, Dh, dtype=torch.float64)
    v = torch.randn(B, nH, H, W, Dh, dtype=torch.float64)
    rpb = torch.randn(nH, 2 * k - 1, 2 * k - 1, dtype=torch.float64)
    fast = neighborhood_attention_2d(q, kk, v, rpb, k)
    ref = torch.zeros_like(fast)
    for h in range(nH):
        for i in range(H):
            for j in range(W):
                si = min(max(i - k // 2, 0), H - k)  # clamped window, as NATTEN
                sj = min(max(j - k // 2, 0), W - k)
                logits, vals = [], []
                for a in range(si, si + k):
                    for b in range(sj, sj + k):
                        logits.append((q[0, h, i, j] * kk[0, h, a, b]).sum() + rpb[h, a - i + k - 1, b - j + k - 1])
                        vals.append(v[0, h, a, b])
                attn = torch.stack(logits).softmax(0)
                ref[0, h, i, j] = (attn[:, None] * torch.stack(vals)).sum(0)
    assert torch.allclose(fast, ref, atol=1e-10)


def test_neighborhood_cross_attention_module_shapes_and_gradients():
    m = NeighborhoodCrossAttention2D(8, num_heads=2, kernel_size=3)
    q, kv = torch.randn(2, 5, 6, 8), torch.randn(2, 5, 6, 8, requires_grad=True)
    out = m(q, kv)
    out.sum().backward()
    assert out.shape == (2, 5, 6, 8) and kv.grad is not None and m.rpb.grad is not None


# ----------------------------------------------------------------------------------------- scan attention
def test_batched_scan_attention_matches_per_sequence_loop():
    torch.manual_seed(7)
    C, nH, L, S = 8, 2, 12, 3
    mha = nn.MultiheadAttention(C, nH, batch_first=True).double().eval()
    qk, v = torch.randn(S, L, C, dtype=torch.float64), torch.randn(S, L, C, dtype=torch.float64)
    for axis in ("depth", "width", "height"):
        blocked = scan_mask(axis, L)
        fast = masked_attention(mha, qk, v, blocked, 0.0, chunk=2)
        ref = torch.stack([mha(qk[s:s + 1], qk[s:s + 1], v[s:s + 1], attn_mask=blocked)[0][0] for s in range(S)])
        assert torch.allclose(fast, ref, atol=1e-10), axis


# ----------------------------------------------------------------------------------------- LSS pooling
def test_index_add_pooling_matches_point_loop():
    torch.manual_seed(8)
    grid = GridSpec((0.0, -1.0, -0.5), 0.5, (4, 4, 2))
    B, C, D, h, w = 2, 3, 4, 2, 3
    ctx, dep = torch.randn(B, C, h, w), torch.rand(B, D, h, w)
    pts = torch.rand(B, D, h, w, 3) * torch.tensor([2.6, 2.6, 1.6]) + torch.tensor([-0.4, -1.2, -0.8])
    fast = lss_pool(ctx, dep, pts, grid)
    ref = torch.zeros(B, C, *grid.dims)
    for b in range(B):
        for d in range(D):
            for i in range(h):
                for j in range(w):
                    rel = (pts[b, d, i, j] - torch.tensor(grid.origin)) / grid.voxel_size
                    idx = [int(r) for r in rel.tolist()]  # int() truncates toward zero, as the official .long()
                    if all(0 <= t < n for t, n in zip(idx, grid.dims)):
                        ref[b, :, idx[0], idx[1], idx[2]] += dep[b, d, i, j] * ctx[b, :, i, j]
    assert torch.allclose(fast, ref, atol=1e-5)


def test_truncation_quirk_keeps_points_just_below_lower_bound():
    grid = GridSpec((0.0, 0.0, 0.0), 0.4, (2, 2, 2))
    pts = torch.tensor([[-0.1, 0.1, 0.1], [-0.5, 0.1, 0.1], [0.5, 0.1, 0.1]])
    flat, inside = truncated_voxel_index(pts, grid)
    assert inside.tolist() == [True, False, True]
    assert flat[0].item() == 0 and flat[2].item() == 4


# ----------------------------------------------------------------------------------------- proposal, stereo
def test_voxel_proposal_matches_point_loop():
    torch.manual_seed(9)
    grid = GridSpec((0.0, -3.2, -1.6), 0.8, (8, 8, 4))
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    T = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])  # x fwd -> z optical
    A = torch.eye(3)
    depth = torch.rand(1, 1, 12, 16) * 8
    depth[0, 0, 0, :4] = float("nan")
    depth[0, 0, 1, :4] = 0.0
    fast = voxel_proposal(depth, K[None], T[None], A[None], grid)[0]
    ref = torch.zeros(grid.dims, dtype=torch.bool)
    for v in range(12):
        for u in range(16):
            d = depth[0, 0, v, u].item()
            if not (d > 0):
                continue
            # same float32 arithmetic as the fast path, so points on a voxel face fall on the same side
            p = unproject_pixels(torch.tensor([[u, v]], dtype=torch.float32), torch.tensor([d]), K, T)[0]
            lo, hi = np.array(grid.origin, np.float32), np.array(grid.upper, np.float32)
            if np.all(p.numpy() > lo + np.float32(1e-4)) and np.all(p.numpy() < hi - np.float32(1e-4)):
                i = np.floor((p.numpy() - lo) / np.float32(grid.voxel_size)).astype(int)
                ref[i[0], i[1], i[2]] = True
    assert ref.sum() >= 2 and torch.equal(fast, ref)


def test_proposal_fallback_to_all_voxels():
    grid = GridSpec((0.0, -3.2, -1.6), 0.8, (8, 8, 4))
    K, T = torch.eye(3)[None], torch.eye(4)[None]
    out = voxel_proposal(torch.zeros(1, 1, 8, 8), K, T, torch.eye(3)[None], grid)
    assert out.all()


def test_stereo_onehot_matches_loop():
    dbound, D, s = (2.0, 6.0, 0.5), 8, 2
    depth = torch.tensor([[2.9, 2.3, 0.0, float("nan"), 1.0, 9.0],
                          [5.9, 4.0, 3.1, 4.6, 1.5, 2.0]]).view(1, 1, 2, 6)
    out = stereo_onehot(depth, s, dbound, D)
    assert out.shape == (1, D, 1, 3)
    assert out.sum() == 2  # the third patch (min 1.0 m) is out of range
    for j in range(3):
        patch = depth[0, 0, :, 2 * j:2 * j + 2].flatten().tolist()
        valid = [d for d in patch if d == d and d > 0]
        dmin = min(valid) if valid else 1e5
        g = (dmin - 1.75) / 0.5
        expect = torch.zeros(D)
        if 0 <= g < D + 1 and int(g) >= 1:
            expect[int(g) - 1] = 1.0  # official: class 0 of the D+1 one-hot is dropped
        assert torch.equal(out[0, :, 0, j], expect), (j, dmin)
