"""EfficientNet image backbone (mmdet/mmcls flavour: Swish, BN eps 1e-3, TF "SAME" padding, drop path).

Compound scaling: channels x ``width`` rounded to multiples of 8, block repeats of each same-width group x
``depth`` rounded up. width=2.0, depth=3.1 is B7. ``forward`` returns the outputs of stages 2..6, i.e. strides
4, 8, 16, 32, 32 (the last one after the 1x1 head conv), as ScanSSC uses them (out_indices (2,3,4,5,6)).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath
from .layers import conv2d_silu, fold_batch_norm

# (kernel, base channels, stride, expand ratio, repeats) per same-width group; groups nested per stage.
_STAGES: Tuple[Tuple[Tuple[int, int, int, int, int], ...], ...] = (
    ((3, 16, 1, 1, 1),),
    ((3, 24, 2, 6, 2),),
    ((5, 40, 2, 6, 2),),
    ((3, 80, 2, 6, 3), (5, 112, 1, 6, 3)),
    ((5, 192, 2, 6, 4), (3, 320, 1, 6, 1)),
)
_STEM, _HEAD = 32, 1280


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < min_ratio * value else new


def pad_zeros(x: torch.Tensor, pad: Tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad(x, pad)`` (left, right, top, bottom; zeros) for (N, C, H, W). On the CPU inference path only the
    border is zeroed: F.pad fills the whole output and then copies the input over it, and the stem's 48 x 192 x
    640 map spent 8 ms in that fill. Same values, same memory format."""
    if min(pad) < 0 or not fastpath.cpu_fp32_inference(x) or x.dim() != 4:
        return F.pad(x, pad)
    out, interior = _zero_bordered_like(x, pad)
    interior.copy_(x)
    return out


def _zero_bordered_like(x: torch.Tensor, pad: Tuple[int, int, int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """An uninitialised map of x's kind and memory format, grown by ``pad`` with a zero border, and the view of
    its interior (x's shape) for the caller to fill."""
    left, right, top, bottom = pad
    N, C, H, W = x.shape
    fmt = torch.channels_last if _is_channels_last_map(x) else torch.contiguous_format
    out = torch.empty((N, C, H + top + bottom, W + left + right), dtype=x.dtype, device=x.device, memory_format=fmt)
    for rows in (slice(0, top), slice(top + H, None)):
        out[:, :, rows].zero_()
    for cols in (slice(0, left), slice(left + W, None)):
        out[:, :, top:top + H, cols].zero_()
    return out, out[:, :, top:top + H, left:left + W]


def _is_channels_last_map(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: the total padding depends on the input size and any odd pixel
    goes to the bottom/right. Stride-1 convolutions reduce to the usual symmetric padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, k, stride=stride, padding=0 if stride > 1 else k // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                silu: bool = False) -> torch.Tensor:
        """``weight``/``bias``: used instead of the layer's own (a following BatchNorm folded in); ``silu``:
        followed by SiLU."""
        weight = self.weight if weight is None else weight
        bias = self.bias if weight is self.weight else bias
        if self.stride[0] > 1:
            x = pad_zeros(x, self.same_pad(*x.shape[-2:]))
        return self.padded_forward(x, weight, bias, silu)

    def same_pad(self, ih: int, iw: int) -> Tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding of an ih x iw input (none at stride 1: ``padding`` does it)."""
        if self.stride[0] == 1:
            return (0, 0, 0, 0)
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)

    def padded_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       silu: bool = False) -> torch.Tensor:
        """The convolution of an input that already has its ``same_pad`` border; ``silu``: followed by SiLU."""
        if silu:
            if _is_channels_last_map(x) and fastpath.cpu_fp32_inference(x, weight):
                y = conv2d_silu(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
                if y is not None:
                    return y
            return F.silu(self.padded_forward(x, weight, bias), inplace=True)
        if _is_channels_last_map(x):
            return self._conv_forward(x, weight, bias)  # the whole backbone runs channels-last (EfficientNet.forward)
        if self.groups > 1 and self.groups == self.in_channels:
            # depthwise: with torch 2.13 on CPU the backward pass of a contiguous (NCHW) depthwise conv took 3.4 s
            # for a 240x24x80 map, channels-last 0.08 s (the forward is also faster); same result either way
            return self._conv_forward(x.contiguous(memory_format=torch.channels_last), weight, bias).contiguous()
        return self._conv_forward(x, weight, bias)


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
                 eps: float = 1e-3) -> None:
        super().__init__()
        self.conv = Conv2dSame(cin, cout, k, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folds(x):
            # BatchNorm folded into the convolution: one pass fewer over each map (the lite model's first stages,
            # up to 48 x 192 x 640, spent ~6 ms per frame in separate normalisation passes)
            if isinstance(self.act, nn.SiLU):  # and the activation into it too
                return self.conv(x, *self._folded(), silu=True)
            return self.act(self.conv(x, *self._folded()))
        return self.act(self.bn(self.conv(x)))

    def folds(self, x: torch.Tensor) -> bool:
        return not self.bn.training and self.bn.running_mean is not None and fastpath.cpu_fp32_inference(x)

    def _folded(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return fold_batch_norm(self.conv.weight, self.conv.bias, self.bn)

    def forward_padded(self, x: torch.Tensor, pad: Tuple[int, int, int, int]) -> torch.Tensor:
        """``pad_zeros(self(x), pad)`` where ``folds(x)``, with the activation written straight into the padded
        map: the copy into it took 4.6 ms for the lite model's 48 x 192 x 640 expansion."""
        y = self.conv(x, *self._folded())
        out, interior = _zero_bordered_like(y, pad)
        if isinstance(self.act, nn.SiLU):
            torch.ops.aten.silu.out(y, out=interior)
        else:
            interior.copy_(self.act(y))
        return out

    def forward_prepadded(self, x: torch.Tensor) -> torch.Tensor:
        """``self`` of an input that already has the convolution's ``same_pad`` border, where ``folds(x)``."""
        if isinstance(self.act, nn.SiLU):
            return self.conv.padded_forward(x, *self._folded(), silu=True)
        return self.act(self.conv.padded_forward(x, *self._folded()))


class SELayer(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, squeeze, 1)
        self.conv2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel factor (B, C, 1, 1) that ``forward`` multiplies x by."""
        return torch.sigmoid(self.conv2(F.silu(self.conv1(F.adaptive_avg_pool2d(x, 1)))))


class DropPath(nn.Module):
    """Stochastic depth on the residual branch, per sample."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> depthwise kxk -> SE -> 1x1 project (+ residual with drop path)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop_path: float,
                 eps: float = 1e-3, se_divisor: int = 1) -> None:
        super().__init__()
        mid = cin * expand
        self.expand_conv = ConvBNAct(cin, mid, 1, eps=eps) if expand != 1 else None
        self.depthwise_conv = ConvBNAct(mid, mid, k, stride, groups=mid, eps=eps)
        self.se = SELayer(mid, make_divisible(cin / 4, se_divisor))
        self.linear_conv = ConvBNAct(mid, cout, 1, act=False, eps=eps)
        self.residual = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_path) if self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw = self.depthwise_conv
        if self.expand_conv is not None and dw.conv.stride[0] > 1 and self.expand_conv.folds(x) and dw.folds(x):
            # the expansion's activation goes straight into the zero-bordered map the strided conv reads
            y = dw.forward_prepadded(self.expand_conv.forward_padded(x, dw.conv.same_pad(*x.shape[-2:])))
        else:
            y = dw(self.expand_conv(x) if self.expand_conv is not None else x)
        if y.shape[0] == 1 and self.linear_conv.folds(y):
            # the gate scales the projection's input channels, so it joins the projection's (BatchNorm-folded)
            # weight instead of taking a pass over the expanded map: 3.7 ms over the lite backbone's 10 blocks
            weight, bias = self.linear_conv._folded()
            y = self.linear_conv.conv(y, weight * self.se.gate(y).view(1, -1, 1, 1), bias)
        else:
            y = self.linear_conv(self.se(y))
        return x + self.drop_path(y) if self.residual else y


class EfficientNet(nn.Module):
    def __init__(self, width: float = 2.0, depth: float = 3.1, drop_path_rate: float = 0.2,
                 bn_eps: float = 1e-3, se_divisor: int = 1) -> None:
        super().__init__()
        groups = [[(k, make_divisible(c * width), s, e, int(math.ceil(n * depth))) for k, c, s, e, n in stage]
                  for stage in _STAGES]
        total = sum(n for stage in groups for *_, n in stage)
        rates = torch.linspace(0, drop_path_rate, total).tolist() if total > 1 else [0.0]
        stem = make_divisible(_STEM * width)
        self.layers = nn.ModuleList([ConvBNAct(3, stem, 3, stride=2, eps=bn_eps)])
        cin, bi = stem, 0
        self.out_channels: List[int] = []
        for stage in groups:
            blocks = []
            for k, c, s, e, n in stage:
                for i in range(n):
                    blocks.append(InvertedResidual(cin, c, k, s if i == 0 else 1, e, rates[bi], bn_eps, se_divisor))
                    cin, bi = c, bi + 1
            self.layers.append(nn.Sequential(*blocks))
            self.out_channels.append(cin)
        head = make_divisible(_HEAD * width)
        self.layers.append(ConvBNAct(cin, head, 1, eps=bn_eps))
        self.out_channels = self.out_channels[1:] + [head]  # channels of stages 2..6

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if fastpath.cpu_fp32_inference(x):
            # CPU inference end to end in channels-last: oneDNN's native layout, no reorder around each
            # depthwise convolution (~1.4x on the lite backbone, same values up to float summation order)
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i >= 2:
                outs.append(x)
        return outs


def feature_channels(width: float) -> Sequence[int]:
    """Channels of the five backbone outputs for a width multiplier (without building the network)."""
    per_stage = [make_divisible(stage[-1][1] * width) for stage in _STAGES]
    return per_stage[1:] + [make_divisible(_HEAD * width)]
