"""Winograd F(2,3) 3x3x3 convolution against float64 F.conv3d, and the Conv3d fast path that uses it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scanssc_ros.model import fastpath, layers, winograd
from scanssc_ros.model.layers import Conv3d


@pytest.mark.parametrize("n,cin,cout,shape", [
    (1, 3, 5, (5, 4, 7)),  # odd sizes: padded to whole tiles and cut back
    (2, 8, 6, (6, 7, 3)),
    (1, 16, 16, (10, 8, 4)),
    (1, 16, 12, (8, 5, 6)),  # a first axis of whole 4-tiles
])
# one chunk; one tile plane per chunk (two rows of tiles for 16 channels and 2-tiles); one row of tiles per chunk
@pytest.mark.parametrize("chunk", [1 << 22, 64 * 16 * 4, 1])
# F(2x2x2) and F(4x2x2); the latter's transforms scale by up to 8: 4x the tolerance (its errors here: 2.5-3.5e-6)
@pytest.mark.parametrize("first_tile,atol", [(2, 2e-6), (4, 8e-6)])
def test_winograd_matches_float64_conv3d(monkeypatch, n, cin, cout, shape, chunk, first_tile, atol):
    monkeypatch.setattr(winograd, "_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, *shape, generator=g)
    w = torch.randn(cout, cin, 3, 3, 3, generator=g) / (cin * 27) ** 0.5
    b = torch.randn(cout, generator=g)
    u = winograd.transform_weight(w, first_tile)
    assert u.shape == ((first_tile + 2) * 16, cout, cin)
    out = winograd.conv3d_3x3x3(x, u, b)
    ref = F.conv3d(x.double(), w.double(), b.double(), padding=1)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=atol)
    # channels-last input (the chain of convolutions), no bias; and a permuted view
    cl = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(winograd.conv3d_3x3x3(cl, u).double(), F.conv3d(x.double(), w.double(), padding=1),
                               rtol=0, atol=atol)
    view = x.transpose(2, 4).contiguous().transpose(2, 4)
    torch.testing.assert_close(winograd.conv3d_3x3x3(view, u, b), out, rtol=0, atol=0)


def test_f4x2x2_is_as_accurate_as_a_direct_float32_convolution():
    """The claim that lets F(4x2x2) replace F(2x2x2) where it can: on a 128-channel volume of activations its
    largest error against float64 (relative to the largest output) is within 1.5x of oneDNN's direct float32
    convolution (1.1e-6 against 1.2e-6 on 16x32x32)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 8, 12, 12, generator=g).relu_().contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(128, 128, 3, 3, 3, generator=g) / (128 * 27) ** 0.5
    ref = F.conv3d(x.double(), w.double(), padding=1)

    def err(y):
        return ((y.double() - ref).abs().max() / ref.abs().max()).item()

    direct = err(torch.mkldnn_convolution(x, w, None, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1))
    f2 = err(winograd.conv3d_3x3x3(x, winograd.transform_weight(w, 2)))
    f4 = err(winograd.conv3d_3x3x3(x, winograd.transform_weight(w, 4)))
    assert f2 < f4 <= 1.5 * direct, (f2, f4, direct)


@pytest.mark.parametrize("first_tile", [2, 4])
def test_winograd_splits_are_the_split_result_in_memory_of_their_own(first_tile):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 6, 8, 5, 7, generator=g)
    w = torch.randn(10, 6, 3, 3, 3, generator=g)
    b = torch.randn(10, generator=g)
    u = winograd.transform_weight(w, first_tile)
    whole = winograd.conv3d_3x3x3(x, u, b)
    parts = winograd.conv3d_3x3x3(x, u, b, splits=[3, 7])
    assert isinstance(parts, tuple) and len(parts) == 2
    for part, ref in zip(parts, whole.split([3, 7], dim=1)):
        assert torch.equal(part, ref) and part.is_contiguous(memory_format=torch.channels_last_3d)
    assert parts[0].untyped_storage().data_ptr() != parts[1].untyped_storage().data_ptr()
    (single,) = winograd.conv3d_3x3x3(x, u, None, splits=[10])
    assert torch.equal(single, winograd.conv3d_3x3x3(x, u))
    with pytest.raises(ValueError, match="do not add up to 10"):
        winograd.conv3d_3x3x3(x, u, b, splits=[3, 6])


def test_winograd_first_tile_follows_the_depth():
    assert [winograd.depth_tile(d) for d in (4, 8, 16, 2, 6, 10, 5)] == [4, 4, 4, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="first_tile must be 2 or 4"):
        winograd.transform_weight(torch.randn(2, 2, 3, 3, 3), 3)


def test_winograd_rejects_a_kernel_for_other_channels():
    u = winograd.transform_weight(torch.randn(4, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="does not fit 5 input channels"):
        winograd.conv3d_3x3x3(torch.randn(1, 5, 4, 4, 4), u)


def _spy(monkeypatch):
    calls = []
    real = winograd.conv3d_3x3x3
    monkeypatch.setattr(winograd, "conv3d_3x3x3", lambda *a: calls.append(a[0].shape) or real(*a))
    return calls


def test_wide_conv3d_takes_winograd_and_matches_reference(monkeypatch):
    calls = _spy(monkeypatch)
    torch.manual_seed(1)
    conv = Conv3d(128, 128, 3, padding=1, bias=True).eval()
    narrow = Conv3d(64, 64, 3, padding=1).eval()
    strided = Conv3d(128, 128, 3, stride=2, padding=1).eval()
    x = torch.randn(1, 128, 6, 8, 4)
    with torch.inference_mode():
        fast = conv(x)
        narrow(x[:, :64]), strided(x)
        with fastpath.reference_ops():
            ref = conv(x)
    assert calls == [x.shape]
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert conv._winograd_cache[2] == 2
    x8 = torch.randn(1, 128, 8, 6, 4)  # a depth of whole 4-tiles: F(4x2x2)
    with torch.inference_mode():
        fast = conv(x8)
        with fastpath.reference_ops():
            ref = conv(x8)
    assert conv._winograd_cache[2] == 4 and calls == [x.shape, x8.shape]
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    calls.pop()
    assert set(conv.state_dict()) == {"weight", "bias"}  # the transformed kernel is not a module tensor
    # training goes through aten
    conv.train()
    conv(x.requires_grad_(True)).sum().backward()
    assert len(calls) == 1 and conv.weight.grad is not None


def test_winograd_kernel_follows_weight_changes(monkeypatch):
    monkeypatch.setattr(layers, "_WINOGRAD_MIN_CHANNEL_PRODUCT", 4 * 4)
    calls = _spy(monkeypatch)
    torch.manual_seed(2)
    conv = Conv3d(4, 4, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 4, 5, 6, 3)

    def check():
        with torch.inference_mode():
            torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight, padding=1), rtol=1e-5, atol=1e-5)

    check()
    u = conv._winograd_weight(conv.weight)
    check()
    assert conv._winograd_weight(conv.weight) is u  # kept while the weight is unchanged
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # in place: a new version
    check()
    conv.load_state_dict({"weight": torch.randn(4, 4, 3, 3, 3)})
    check()
    conv.double()  # a new tensor: float64 inference goes through aten, and back to float32 recomputes
    conv.float()
    check()
    assert len(calls) == 5


def _channels_last(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_parts_equals_conv_of_the_concatenation(bias):
    parts = [_channels_last(2, 3, 4, 5, 6, seed=1), _channels_last(2, 5, 4, 5, 6, seed=2)]
    w = torch.randn(7, 8, 1, 1, 1)
    b = torch.randn(7) if bias else None
    out = layers.pointwise_parts(parts, w, b)
    ref = F.conv3d(torch.cat(parts, dim=1).double(), w.double(), None if b is None else b.double())
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    # a channels-last input to the 1x1x1 Conv3d fast path goes the same way and stays channels-last
    conv = Conv3d(3, 7, 1, bias=bias).eval()
    with torch.inference_mode():
        got = conv(parts[0])
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, F.conv3d(parts[0], conv.weight, conv.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (3.0, 1.0), (100.0, 0.01)])  # the last: mean >> spread
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("shape,rows_of", [
    ((2, 8, 6, 10, 12), 8),  # rows of 8 voxels x 8 channels, several chunks
    ((1, 16, 3, 5, 7), 3),  # 105 voxels: the largest divisor up to 4 voxels per row
    ((1, 8, 1, 1, 13), 1),  # a prime voxel count: one voxel per row
])
def test_group_norm_channels_last_is_as_accurate_as_aten_channels_first(monkeypatch, shift, scale, inplace, shape,
                                                                         rows_of):
    monkeypatch.setattr(layers, "_GN_CHUNK_FLOATS", 7 * 64)  # several chunks, the last one short
    monkeypatch.setattr(layers, "_GN_MAX_CHUNKS", 1000)
    monkeypatch.setattr(layers, "_GN_ATEN_MAX_GROUP_FLOATS", 0)  # the moments path even for these small groups
    x = _channels_last(*shape, seed=3) * scale + shift
    assert layers._wide_rows(x)[1] == rows_of
    C = shape[1]
    w, b = torch.randn(C), torch.randn(C)
    ref = F.group_norm(x.double(), 4, w.double(), b.double())
    aten_err = (F.group_norm(x.contiguous(), 4, w, b).double() - ref).abs().max()
    src = x.clone()
    out = layers.group_norm_channels_last(src, 4, w, b, 1e-5, inplace=inplace)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert (out is src) == inplace and (inplace or torch.equal(src, x))
    assert (out.double() - ref).abs().max() <= 2 * aten_err + 1e-6
    none = layers.group_norm_channels_last(x, 4, None, None, 1e-5)
    ref_none = F.group_norm(x.double(), 4)
    aten_none_err = (F.group_norm(x.contiguous(), 4).double() - ref_none).abs().max()
    assert (none.double() - ref_none).abs().max() <= 2 * aten_none_err + 1e-6


def test_group_norm_channels_last_leaves_small_groups_to_aten(monkeypatch):
    x = _channels_last(1, 16, 8, 8, 4, seed=5)  # 512 values per group of 2 channels
    w, b = torch.randn(16), torch.randn(16)
    moments = []
    real = layers.channel_moments
    monkeypatch.setattr(layers, "channel_moments", lambda *a: moments.append(1) or real(*a))
    out = layers.group_norm_channels_last(x.clone(), 8, w, b, 1e-5, inplace=True)
    assert not moments and out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out, F.group_norm(x.contiguous(), 8, w, b), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(layers, "_GN_ATEN_MAX_GROUP_FLOATS", 511)
    layers.group_norm_channels_last(x, 8, w, b, 1e-5)
    assert moments == [1]


def test_group_norm_module_takes_channels_last_path_only_for_cpu_inference(monkeypatch):
    calls = []
    real = layers.group_norm_channels_last
    monkeypatch.setattr(layers, "group_norm_channels_last", lambda *a, **k: calls.append(1) or real(*a, **k))
    gn = layers.GroupNorm(4, 8).eval()
    x = _channels_last(1, 8, 4, 4, 4, seed=4)
    with torch.inference_mode():
        torch.testing.assert_close(gn(x), F.group_norm(x, 4, gn.weight, gn.bias), rtol=1e-5, atol=1e-5)
        gn(x.contiguous())
        with fastpath.reference_ops():
            gn(x)
    assert calls == [1]
