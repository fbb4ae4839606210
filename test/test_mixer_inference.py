"""The mixers' CPU inference path (BatchNorm folded into the convolution, residual and ReLU in place)
against the module-by-module reference (``fastpath.reference_ops``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from scanssc_ros.model import fastpath
from scanssc_ros.model.mixer import BasicBlock3D, ConvModule3d, SpatialMixingNet


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial norm parameters and running statistics, so folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g)
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.3
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return module.eval()


def _fast_and_reference(module, *args):
    with torch.inference_mode():
        fast = module(*args)
        with fastpath.reference_ops():
            ref = module(*args)
    return fast, ref


@pytest.mark.parametrize("cin,cout,k,stride,norm,act", [
    (8, 16, 3, 1, "bn", True),
    (8, 16, 3, 2, "bn", False),
    (128, 128, 3, 1, "bn", True),  # Winograd with the folded kernel
    (24, 16, 1, 1, "gn", True),
    (16, 16, 3, 1, "gn", False),
])
def test_conv_module_matches_reference(cin, cout, k, stride, norm, act):
    torch.manual_seed(0)
    m = _randomize(ConvModule3d(cin, cout, k, stride, norm=norm, gn_groups=4, act=act), 1)
    x = torch.randn(1, cin, 6, 8, 4)
    fast, ref = _fast_and_reference(m, x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert set(m.state_dict()) == set(ConvModule3d(cin, cout, k, stride, norm=norm, gn_groups=4).state_dict())


def test_folded_kernel_follows_batchnorm_changes():
    torch.manual_seed(1)
    m = _randomize(ConvModule3d(8, 8, 3), 2)
    x = torch.randn(1, 8, 5, 6, 4)
    for change in (lambda: None, lambda: m.bn.running_var.mul_(3.0), lambda: m.bn.weight.data.neg_(),
                   lambda: m.load_state_dict(_randomize(ConvModule3d(8, 8, 3), 3).state_dict())):
        with torch.no_grad():
            change()
        fast, ref = _fast_and_reference(m, x)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,downsample", [(1, False), (2, True)])
def test_basic_block_and_mixing_net_match_reference(stride, downsample):
    torch.manual_seed(2)
    cin = 8 if downsample else 16
    block = _randomize(BasicBlock3D(cin, 16, stride, downsample), 4)
    x = torch.randn(1, cin, 8, 8, 4)
    fast, ref = _fast_and_reference(block, x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    net = _randomize(SpatialMixingNet(16, (2, 1, 1), (16, 16, 16), (1, 2, 2), 16, 4), 5)
    fast, ref = _fast_and_reference(net, torch.randn(1, 16, 8, 8, 4).permute(0, 1, 3, 2, 4))  # non-contiguous
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("winograd", [False, True])
def test_projection_block_convolves_its_input_once(monkeypatch, stride, layout, winograd):
    """The first block of a stage runs conv1 and its projection shortcut as one convolution with both (folded)
    kernels stacked, on oneDNN and on Winograd, for either input layout."""
    from scanssc_ros.model import layers
    from scanssc_ros.model.layers import Conv3d

    if winograd:
        monkeypatch.setattr(layers, "_WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    block = _randomize(BasicBlock3D(8, 16, stride, downsample=True), 9)
    x = torch.randn(1, 8, 8, 6, 4).contiguous(memory_format=layout)
    out_channels = []
    real = Conv3d.inference
    results = []

    def spy(self, x, w, b, splits=None):
        out_channels.append(w.shape[0])
        results.append(real(self, x, w, b, splits))
        return results[-1]

    monkeypatch.setattr(Conv3d, "inference", spy)
    fast, ref = _fast_and_reference(block, x)
    assert out_channels == [32, 16]  # conv1 + shortcut, then conv2; the reference takes none of these calls
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    conv1, shortcut = results[0]
    # Winograd writes the two results to memory of their own (stride 1), oneDNN's are channel views of one
    separate = conv1.untyped_storage().data_ptr() != shortcut.untyped_storage().data_ptr()
    assert separate == (winograd and stride == 1)


def test_channels_last_chain_matches_reference(monkeypatch):
    """Every 3x3x3 convolution of the mixers, the fusion and the head on Winograd (as the paper model's
    128-channel ones are): channels-last volumes from the first convolution to the head, GroupNorm in place,
    the FPN's and the fusion's 1x1x1 convolutions without their concatenations."""
    from scanssc_ros.model import layers
    from scanssc_ros.model.head import OccHead
    from scanssc_ros.model.mixer import Fuser

    monkeypatch.setattr(layers, "_WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    concatenated = []
    real_cat = torch.cat

    def cat(tensors, dim=0, **kwargs):
        if dim == 1:  # volumes along their channels (stacked kernels go along dim 0)
            concatenated.append(len(tensors))
        return real_cat(tensors, dim, **kwargs)

    monkeypatch.setattr(torch, "cat", cat)
    torch.manual_seed(3)
    fuser = _randomize(Fuser(16, (2, 1, 1), (16, 16, 16), (1, 2, 2), 16, 4), 6)
    head = _randomize(OccHead(16, 5, (16, 16, 8), gn_groups=4), 7)
    xs = [torch.randn(1, 16, 8, 8, 4) for _ in range(3)]
    xs[1] = xs[1].permute(0, 1, 3, 2, 4)  # any input layout

    def run():
        fused = fuser(*xs)
        return fused, head(fused, upsample=False)

    with torch.inference_mode():
        fused, logits = run()
        assert not concatenated and fused.is_contiguous(memory_format=torch.channels_last_3d)
        assert logits.is_contiguous()  # channels-first again for the decoding
        with fastpath.reference_ops():
            ref_fused, ref_logits = run()
    torch.testing.assert_close(fused, ref_fused, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,order", [((16, 16, 4), (2, 0, 1)), ((8, 12, 10), None)])
def test_onednn_mixers_convert_their_input_to_channels_last_once(size, order):
    """At the lite model's widths the mixers' 3x3x3 convolutions are oneDNN's: each mixer converts its input
    once and every convolution, GroupNorm and the fusion then see channels-last volumes, within float rounding
    of the reference. A volume whose last axis is the short one (the lite grid's 8 heights) runs with that
    axis outermost, and the head follows that order."""
    from scanssc_ros.model import layers
    from scanssc_ros.model.head import OccHead
    from scanssc_ros.model.mixer import Fuser

    torch.manual_seed(4)
    fuser = _randomize(Fuser(32, (1, 1, 1), (16, 16, 16), (1, 2, 2), 16, 4), 8)
    head = _randomize(OccHead(16, 5, tuple(4 * s for s in size), gn_groups=4), 10)
    xs = [torch.randn(1, 32, *size) for _ in range(3)]
    layouts, sizes = [], []
    # channels innermost in memory (a stage's first block hands conv2 a channel slice of its stacked convolution)
    hooks = [m.register_forward_pre_hook(lambda m, a: layouts.append(a[0].stride(1) == 1) or
                                         sizes.append(tuple(a[0].shape[2:])))
             for m in fuser.modules() if isinstance(m, ConvModule3d) and m.conv.kernel_size == (3, 3, 3)]
    with torch.inference_mode():
        fused = fuser(*xs)
        logits = head(fused, upsample=False)
        assert layouts and all(layouts), layouts
        assert layers.channels_last_space_order(fused) == (order or (0, 1, 2))
        assert sizes[0] == (tuple(size[o] for o in order) if order else size)
        assert fused.shape[2:] == logits.shape[2:] == size and logits.is_contiguous()
        with fastpath.reference_ops():
            ref = fuser(*xs)
            ref_logits = head(ref, upsample=False)
    for h in hooks:
        h.remove()
    assert all(x.is_contiguous() for x in xs)  # the callers' volumes are left as they were
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,winograd", [
    (8, 16, (3, 1, 3), (2, 1, 1), (1, 0, 2), (1, 1, 2), False),  # every geometry parameter differs per axis
    (8, 16, 3, 1, 1, 1, False),
    (8, 1, (3, 3, 1), 1, (1, 1, 0), 1, False),  # one output channel: the depthwise-then-sum path
    (8, 16, 1, 1, 0, 1, False),  # 1x1x1: the product
    (8, 16, 3, 1, 1, 1, True),
])
@pytest.mark.parametrize("order", [(2, 0, 1), (1, 2, 0), (0, 2, 1)])
def test_conv3d_in_permuted_space_is_the_permuted_convolution(monkeypatch, cin, cout, k, stride, padding,
                                                               dilation, winograd, order):
    """Inside ``permuted_space`` Conv3d's inference path convolves ``permute_space(x)`` with its kernel and
    geometry permuted alike: the result is the permuted reference."""
    from scanssc_ros.model import layers
    from scanssc_ros.model.layers import Conv3d

    if winograd:
        monkeypatch.setattr(layers, "_WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    torch.manual_seed(11)
    conv = Conv3d(cin, cout, k, stride=stride, padding=padding, dilation=dilation).eval()
    x = torch.randn(1, cin, 9, 7, 10)
    with torch.inference_mode():
        with fastpath.reference_ops():
            ref = conv(x)
        with layers.permuted_space(order):
            out = conv(layers.permute_space(x, order).contiguous(memory_format=torch.channels_last_3d))
        plain = conv(x)  # and the kernel cached for Winograd in the other order is not reused
    torch.testing.assert_close(layers.unpermute_space(out, order), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-5)


def test_permuted_space_refuses_layers_it_cannot_permute():
    from scanssc_ros.model import layers
    from scanssc_ros.model.layers import Conv3d, ConvTranspose3d

    x = torch.randn(1, 4, 4, 4, 2)
    conv, deconv = Conv3d(4, 4, 3, padding=1), ConvTranspose3d(4, 4, 3, padding=1)
    with layers.permuted_space((2, 0, 1)):
        with pytest.raises(RuntimeError, match="permuted_space"):
            conv(x)  # autograd: the reference path, whose kernel is not permuted
        with torch.inference_mode(), pytest.raises(RuntimeError, match="permuted_space"):
            deconv(x)
    with torch.inference_mode():
        conv(x), deconv(x)  # the context is gone


def test_channels_last_space_order():
    from scanssc_ros.model import layers

    x = torch.randn(1, 3, 4, 5, 6)
    assert layers.channels_last_space_order(x) is None  # channels outermost
    assert layers.channels_last_space_order(x.contiguous(memory_format=torch.channels_last_3d)) == (0, 1, 2)
    for order in [(2, 0, 1), (1, 2, 0), (2, 1, 0)]:
        y = layers.unpermute_space(layers.permute_space(x, order).contiguous(memory_format=torch.channels_last_3d),
                                   order)
        assert torch.equal(y, x) and layers.channels_last_space_order(y) == order
    assert layers.channels_last_space_order(x.contiguous(memory_format=torch.channels_last_3d)[:, :, ::2]) is None
    assert layers.direct_conv_space_order((64, 64, 8)) == (2, 0, 1)  # the lite grid
    assert layers.direct_conv_space_order((56, 48, 160)) is None  # the stereo aggregation volume


def test_fpn_lateral_multiplies_before_upsampling(monkeypatch):
    """On channels-last parts the FPN's lateral 1x1x1 convolution takes the coarse level's product before the
    trilinear upsampling (they commute): only out_channels-wide volumes are upsampled, and the result is the
    reference's within float rounding."""
    import scanssc_ros.model.mixer as mixer
    from scanssc_ros.model.mixer import GeneralizedLSSFPN

    torch.manual_seed(6)
    fpn = _randomize(GeneralizedLSSFPN([8, 12, 16], 6, 2), 9)
    shapes = [(1, 8, 12, 10, 4), (1, 12, 6, 5, 2), (1, 16, 3, 5, 1)]
    feats = [torch.randn(*s).contiguous(memory_format=torch.channels_last_3d) for s in shapes]
    upsampled = []
    real = mixer.trilinear
    monkeypatch.setattr(mixer, "trilinear", lambda x, size: upsampled.append(x.shape[1]) or real(x, size))
    fast, ref = _fast_and_reference(fpn, feats)
    assert upsampled == [6, 6] + [16, 6]  # fast path, then the reference (the concatenated coarse level)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
