"""The three "spatial mixing nets" (one per Scan block output) and their softmax-weighted fusion.

Each mixer is CGFormer's LocalAggregator: a 3-stage 3D ResNet (BasicBlock3D, strides 1/2/2) and a top-down
GeneralizedLSSFPN (upsample -> concat -> 1x1x1 conv -> 3x3x3 conv, GN + ReLU) keeping only the finest output.
Fusion: w = softmax(Conv3d([F_dep, F_hgt, F_wid]) over 3 channels), out = sum_a w_a * F_a.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import buffer_pool, fastpath, layers
from .layers import Conv3d, GroupNorm, fold_batch_norm, group_norm_channels_last, pointwise_parts
from .upsample import trilinear


class ConvModule3d(nn.Module):
    """Conv3d (no bias) + BN3d or GN + optional ReLU, named like mmcv's ConvModule."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, norm: str = "bn", gn_groups: int = 32,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.norm_name = norm
        if norm == "bn":
            self.bn = nn.BatchNorm3d(cout)
        else:
            self.gn = GroupNorm(gn_groups, cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_inference(x):
            return self.inference(lambda w, b: self.conv.inference(x, w, b))
        x = self.conv(x)
        x = self.bn(x) if self.norm_name == "bn" else self.gn(x)
        return F.relu(x, inplace=True) if self.act else x

    def forward_cat(self, parts: List[torch.Tensor]) -> torch.Tensor:
        """``self(torch.cat(parts, dim=1))``. A 1x1x1 layer on the CPU fast path with channels-last parts (the
        Winograd convolutions' output) takes them one by one instead of building the concatenation."""
        if self.conv.kernel_size == (1, 1, 1) and all(fastpath.is_channels_last_volume(p) for p in parts) and \
                self.fast_inference(parts[0]):
            return self.inference(lambda w, b: pointwise_parts(parts, w, b))
        return self(torch.cat(parts, dim=1))

    def fast_inference(self, x: torch.Tensor) -> bool:
        foldable = self.norm_name != "bn" or self.bn.running_mean is not None
        return not self.training and foldable and self.conv.fast_inference(x)

    def inference(self, conv: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        """CPU inference from ``conv(weight, bias)``: BN folded into the convolution, GroupNorm of a channels-last
        result and ReLU in place. Every full-size result of the paper's mixers is 134 MB of fresh memory, faulted
        in page by page; this makes one instead of two or three. (A channels-first result keeps aten's GroupNorm:
        written in place from torch.var_mean statistics it took 3x as long.)"""
        if self.norm_name == "bn":
            x = conv(*fold_batch_norm(self.conv.weight, self.conv.bias, self.bn))
        else:
            x = conv(self.conv.weight, self.conv.bias)
            if fastpath.is_channels_last_volume(x):
                gn = self.gn
                x = group_norm_channels_last(x, gn.num_groups, gn.weight, gn.bias, gn.eps, inplace=True)
            else:
                x = self.gn(x)
        return x.relu_() if self.act else x


class BasicBlock3D(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvModule3d(cin, cout, 3, stride)
        self.conv2 = ConvModule3d(cout, cout, 3, act=False)
        self.downsample = ConvModule3d(cin, cout, 3, stride, act=False) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._shared_input_conv(x):
            y, identity = self._conv1_and_downsample(x)
            out = self.conv2(y)
        else:
            identity = self.downsample(x) if self.downsample is not None else x
            out = self.conv2(self.conv1(x))
        if not self.training and fastpath.cpu_fp32_inference(out):
            return out.add_(identity).relu_()  # no fresh tensor for the sum
        return F.relu(out + identity, inplace=True)

    def _shared_input_conv(self, x: torch.Tensor) -> bool:
        ds, c1 = self.downsample, self.conv1
        return ds is not None and ds.norm_name == c1.norm_name == "bn" and c1.fast_inference(x) and \
            ds.fast_inference(x) and (ds.conv.kernel_size, ds.conv.stride, ds.conv.padding) == \
            (c1.conv.kernel_size, c1.conv.stride, c1.conv.padding)

    def _conv1_and_downsample(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """conv1 (with its ReLU) and the projection shortcut, which convolve the same input with the same
        geometry, as one convolution with both kernels stacked: the input is read (and, on Winograd, transformed)
        once, and oneDNN blocks 32 output channels better than 2 x 16 (lite, 32 -> 16 over 64x64x8: 15.0 ->
        12.4 ms with the split)."""
        w1, b1 = fold_batch_norm(self.conv1.conv.weight, self.conv1.conv.bias, self.conv1.bn)
        w2, b2 = fold_batch_norm(self.downsample.conv.weight, self.downsample.conv.bias, self.downsample.bn)
        y, shortcut = self.conv1.conv.inference_parts(x, [w1, w2], [b1, b2])
        return y.relu_(), shortcut  # channel views off Winograd: Conv3d.inference takes strided input


class CustomResNet3D(nn.Module):
    def __init__(self, cin: int, blocks: Sequence[int], channels: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        layers = []
        for n, c, s in zip(blocks, channels, strides):
            # the first block of every stage has a projection shortcut, even at stride 1 with equal widths
            stage = [BasicBlock3D(cin, c, s, downsample=True)] + [BasicBlock3D(c, c) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            cin = c
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.layers[0][0].conv1.conv.prefers_channels_last(x):
            # the lite mixers' oneDNN convolutions, then the GroupNorms, the FPN's 1x1x1 products and upsampling
            # and the fusion all run channels-last from here (mixers A/B 114 -> 106 ms)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class GeneralizedLSSFPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int, gn_groups: int) -> None:
        super().__init__()
        n = len(in_channels)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(n - 1):
            extra = in_channels[i + 1] if i == n - 2 else out_channels
            self.lateral_convs.append(
                ConvModule3d(in_channels[i] + extra, out_channels, 1, norm="gn", gn_groups=gn_groups))
            self.fpn_convs.append(ConvModule3d(out_channels, out_channels, 3, norm="gn", gn_groups=gn_groups))

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral_convs[i]
            if lateral.conv.kernel_size == (1, 1, 1) and lateral.norm_name == "gn" and \
                    all(fastpath.is_channels_last_volume(t) for t in (feats[i], x)) and lateral.fast_inference(x):
                x = lateral.inference(lambda w, b, f=feats[i], c=x: _lateral_of_upsampled(f, c, w, b))
            else:
                x = lateral.forward_cat([feats[i], trilinear(x, feats[i].shape[2:])])
            x = self.fpn_convs[i](x)
        return x


def _lateral_of_upsampled(fine: torch.Tensor, coarse: torch.Tensor, weight: torch.Tensor,
                          bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The 1x1x1 convolution of ``cat([fine, trilinear(coarse)])`` (channels-last parts), with the coarse part's
    product taken before the upsampling: both are linear, so they commute (up to float rounding), the product runs
    on 1/8 of the voxels, and the upsampled volume is the one the fine part's product is summed into instead of an
    extra full-size volume."""
    c = fine.shape[1]
    out = trilinear(pointwise_parts([coarse], weight[:, c:], bias), fine.shape[2:])
    rows = out.permute(0, 2, 3, 4, 1).view(-1, out.shape[1])  # channels-last memory: a view, summed in place
    rows.addmm_(fine.permute(0, 2, 3, 4, 1).reshape(-1, c), weight[:, :c].reshape(out.shape[1], c).t())
    return out


class SpatialMixingNet(nn.Module):
    def __init__(self, cin: int, blocks: Sequence[int], channels: Sequence[int], strides: Sequence[int],
                 out_channels: int, gn_groups: int) -> None:
        super().__init__()
        self.local_encoder_backbone = CustomResNet3D(cin, blocks, channels, strides)
        self.local_encoder_neck = GeneralizedLSSFPN(list(channels), out_channels, gn_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_encoder_neck(self.local_encoder_backbone(x))


class Fuser(nn.Module):
    def __init__(self, cin: int, blocks: Sequence[int], channels: Sequence[int], strides: Sequence[int],
                 out_channels: int, gn_groups: int) -> None:
        super().__init__()
        args = (cin, blocks, channels, strides, out_channels, gn_groups)
        self.depth_mixer = SpatialMixingNet(*args)
        self.height_mixer = SpatialMixingNet(*args)
        self.width_mixer = SpatialMixingNet(*args)
        self.combine_coeff = nn.Sequential(Conv3d(3 * out_channels, 3, 1, bias=False), nn.Softmax(dim=1))

    def forward(self, depth_feats: torch.Tensor, height_feats: torch.Tensor, width_feats: torch.Tensor
                ) -> torch.Tensor:
        if buffer_pool.wanted(depth_feats, self.training):
            with buffer_pool.pooled():  # the full-size volumes of the three mixers reuse each other's memory
                return self._forward(depth_feats, height_feats, width_feats)
        return self._forward(depth_feats, height_feats, width_feats)

    def _forward(self, depth_feats: torch.Tensor, height_feats: torch.Tensor, width_feats: torch.Tensor
                 ) -> torch.Tensor:
        order = self._space_order(depth_feats)
        if order is None:
            return self._fuse(depth_feats, height_feats, width_feats)
        # the volumes with their axes in a faster order for oneDNN; the result is returned in the original axes
        # (a view, channels-last in that order, which the head follows)
        with layers.permuted_space(order):
            out = self._fuse(*(layers.permute_space(t, order) for t in (depth_feats, height_feats, width_feats)))
        return layers.unpermute_space(out, order)

    def _space_order(self, x: torch.Tensor) -> Optional[Tuple[int, int, int]]:
        """``layers.direct_conv_space_order`` for CPU inference whose 3x3x3 convolutions all run oneDNN's direct
        kernels (the paper's Winograd ones tile every axis alike: its mixers took 22.1 / 21.4 s in their own order,
        23.3 / 22.0 s with the heights outermost)."""
        if self.training or not fastpath.cpu_fp32_inference(x, *self.parameters()) or x.dim() != 5:
            return None
        if any(isinstance(m, Conv3d) and m._winograd for m in self.modules()):
            return None
        return layers.direct_conv_space_order(x.shape[2:])

    def _fuse(self, depth_feats: torch.Tensor, height_feats: torch.Tensor, width_feats: torch.Tensor
              ) -> torch.Tensor:
        d = self.depth_mixer(depth_feats)
        h = self.height_mixer(height_feats)
        w = self.width_mixer(width_feats)
        conv = self.combine_coeff[0]
        if not self.training and all(fastpath.is_channels_last_volume(t) for t in (d, h, w)) and \
                conv.fast_inference(d):
            wts = pointwise_parts([d, h, w], conv.weight, conv.bias).softmax(dim=1)  # no 3-volume concatenation
            # summed into d, this forward's own volume: no products or partial sums as fresh volumes
            return d.mul_(wts[:, 0:1]).addcmul_(h, wts[:, 1:2]).addcmul_(w, wts[:, 2:3])
        wts = self.combine_coeff(torch.cat([d, h, w], dim=1))
        return d * wts[:, 0:1] + h * wts[:, 1:2] + w * wts[:, 2:3]
