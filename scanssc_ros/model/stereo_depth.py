"""Stereo depth branch and the mono/stereo depth fusion (CGFormer ``GeometryDepth_Net`` heritage).

- The dense stereo depth map is reduced per stride x stride patch to its minimum valid depth and turned into a
  one-hot volume over the depth bins (official quirk kept: the one-hot is taken over D+1 classes
  ``floor((d - (start - step/2)) / step)`` and class 0 is dropped, so a depth lands one bin nearer than its own
  bin centre; out-of-range or invalid patches are all-zero).
- A 2D U-Net encodes that volume into a stereo depth distribution.
- DepthAggregation: two neighbourhood cross-attentions (mono queries stereo and vice versa, depth bins as
  channels), stacked as a 2-channel 3D volume -> 3D U-Net -> channel attention -> Conv3d -> logits over bins.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath, layers
from .depth_net import DepthNet
from .layers import Conv3d, ConvTranspose3d, GroupNorm
from .neighborhood_attention import NeighborhoodCrossAttention2D


def patch_min_depth(depth: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, 1, H, W) metric depth (NaN/inf/<=0 = invalid) -> (B, H/s, W/s) minimum valid depth per patch,
    1e5 where a patch has no valid pixel."""
    B, _, H, W = depth.shape
    d = depth.reshape(B, H // stride, stride, W // stride, stride).permute(0, 1, 3, 2, 4)
    d = d.reshape(B, H // stride, W // stride, stride * stride)
    d = torch.where(torch.isfinite(d) & (d > 0), d, torch.full_like(d, 1e5))
    return d.min(dim=-1).values


def stereo_onehot(depth: torch.Tensor, stride: int, dbound: Tuple[float, float, float], num_bins: int) -> torch.Tensor:
    """(B, 1, H, W) stereo depth -> (B, D, H/s, W/s) one-hot bins (official indexing quirk, see module doc)."""
    start, _, step = dbound
    g = (patch_min_depth(depth.float(), stride) - (start - step / 2)) / step
    g = torch.where((g >= 0) & (g < num_bins + 1), g, torch.zeros_like(g))
    onehot = F.one_hot(g.long(), num_classes=num_bins + 1)[..., 1:]
    return onehot.permute(0, 3, 1, 2).float()


def convbn_2d(cin: int, cout: int, k: int, stride: int, pad: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False), GroupNorm(2, cout))


def convbn_3d(cin: int, cout: int, k: int, stride: int, pad: int) -> nn.Sequential:
    return nn.Sequential(Conv3d(cin, cout, k, stride=stride, padding=pad, bias=False), GroupNorm(2, cout))


class SimpleUnet(nn.Module):
    """Two stride-2 levels down (c -> 2c -> 4c) and back up with skip projections. 2D or 3D."""

    def __init__(self, c: int, dims: int = 2) -> None:
        super().__init__()
        convbn = convbn_2d if dims == 2 else convbn_3d
        convt = nn.ConvTranspose2d if dims == 2 else ConvTranspose3d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.conv1 = nn.Sequential(convbn(c, 2 * c, 3, 2, 1), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(convbn(2 * c, 2 * c, 3, 1, 1), nn.ReLU(inplace=True))
        self.conv3 = nn.Sequential(convbn(2 * c, 4 * c, 3, 2, 1), nn.ReLU(inplace=True))
        self.conv4 = nn.Sequential(convbn(4 * c, 4 * c, 3, 1, 1), nn.ReLU(inplace=True))
        self.conv5 = nn.Sequential(convt(4 * c, 2 * c, 3, padding=1, output_padding=1, stride=2, bias=False), bn(2 * c))
        self.conv6 = nn.Sequential(convt(2 * c, c, 3, padding=1, output_padding=1, stride=2, bias=False), bn(c))
        self.redir1 = convbn(c, c, 1, 1, 0)
        self.redir2 = convbn(2 * c, 2 * c, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2 = self.conv2(self.conv1(x))
        c4 = self.conv4(self.conv3(c2))
        if isinstance(self.conv5[0], ConvTranspose3d) and self.conv5[0].fast_inference(c4) and \
                fastpath.cpu_fp32_inference(*self.parameters()):
            c5 = _add_relu_(self.conv5[0].inference_bn(c4, self.conv5[1]), self.redir2(c2))
            return _add_relu_(self.conv6[0].inference_bn(c5, self.conv6[1]), self.redir1(x))
        c5 = F.relu(self.conv5(c4) + self.redir2(c2), inplace=True)
        return F.relu(self.conv6(c5) + self.redir1(x), inplace=True)


def _add_relu_(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """relu(up + skip) written over ``up`` (a fresh result the caller owns), with ``skip`` first brought to up's
    layout: aten adds a channels-last and a channels-first volume 8 channels at a time with the other operand read
    430k floats apart (5.6 ms for the lite U-Net's last sum; a layout copy and an aligned sum take 1.5 ms)."""
    fmt = torch.channels_last_3d if fastpath.is_channels_last_volume(up) else torch.contiguous_format
    return up.add_(skip.contiguous(memory_format=fmt)).relu_()


class StereoVolumeEncoder(nn.Module):
    def __init__(self, bins: int, channels: int) -> None:
        super().__init__()
        self.stem = convbn_2d(bins, channels, 3, 1, 1)
        self.Unet = nn.Sequential(SimpleUnet(channels))
        self.conv_out = nn.Conv2d(channels, bins, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.Unet(self.stem(x)))


class ChannelAttention3D(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(Conv3d(c, c, 3, padding=1), nn.GELU(), GroupNorm(1, c))
        self.conv2 = nn.Sequential(Conv3d(c, c // 8, 1), nn.GELU(), nn.Conv3d(c // 8, c, 1), nn.GELU())
        self.conv = nn.Sequential(Conv3d(c, c, 3, padding=1), nn.GELU(), GroupNorm(2, c))
        self.layer_scale = nn.Parameter(torch.zeros(1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        if self.conv1[0].fast_inference(inp) and fastpath.cpu_fp32_inference(*self.parameters()):
            return self._channels_last_inference(inp.contiguous(memory_format=torch.channels_last_3d))
        x = self.conv1(inp)
        gate = torch.sigmoid(self.conv2(F.adaptive_avg_pool3d(x, 1)))
        return inp + self.layer_scale * self.conv(gate * x)

    def _channels_last_inference(self, inp: torch.Tensor) -> torch.Tensor:
        """``forward`` for CPU float32 inference on a channels-last volume, returned channels-last (so is what the
        aggregation's output convolution prefers: one conversion in, none out). Each 3x3x3 convolution's output
        is the only full-size temporary: GELU runs on it in place, the average pooling comes from the GroupNorm
        statistics (the mean of a per-channel affine map is that map of the mean), the gate and the layer scale
        fold into the GroupNorm's per-channel scale and shift, and the residual joins that same pass: 4 passes
        over the volume per branch instead of 8-9, and 2 fresh volumes instead of 7."""
        N, C = inp.shape[:2]
        cl = torch.channels_last_3d
        gn1, gn2 = self.conv1[2], self.conv[2]
        x = layers.gelu_(self.conv1[0](inp).contiguous(memory_format=cl))
        mean, var = layers.channel_moments(x)
        scale, shift = layers.group_norm_affine(mean, var, gn1.num_groups, gn1.weight, gn1.bias, gn1.eps)
        pooled = (mean * scale + shift).to(x.dtype).view(N, C, 1, 1, 1)
        gate = torch.sigmoid(self.conv2(pooled)).view(N, C).double()
        x = layers.channel_affine_(x, scale * gate, shift * gate)
        y = layers.gelu_(self.conv[0](x).contiguous(memory_format=cl))
        scale, shift = layers.group_norm_affine(*layers.channel_moments(y), gn2.num_groups, gn2.weight, gn2.bias,
                                                gn2.eps)
        ls = self.layer_scale.double()
        return layers.channel_affine_(y, scale * ls, shift * ls, residual=inp)


class CrossAttention(nn.Module):
    """out = gamma * NA(q, kv) + kv on (B, C, H, W) maps; gamma starts at 0 so the branch starts as identity."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.neighbor_attention = NeighborhoodCrossAttention2D(dim, num_heads=1, kernel_size=kernel_size)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv_l = kv.permute(0, 2, 3, 1)
        out = self.gamma * self.neighbor_attention(q.permute(0, 2, 3, 1), kv_l) + kv_l
        return out.permute(0, 3, 1, 2)


class DepthAggregation(nn.Module):
    def __init__(self, bins: int, embed_dims: int = 32, kernel_size: int = 5) -> None:
        super().__init__()
        self.stem = Conv3d(2, embed_dims, 3, padding=1)
        self.mono_stereo_attention = CrossAttention(bins, kernel_size)
        self.stereo_mono_attention = CrossAttention(bins, kernel_size)
        self.UNet_3D = SimpleUnet(embed_dims, dims=3)
        self.channel_attention = ChannelAttention3D(embed_dims)
        self.out_conv = Conv3d(embed_dims, 1, 3, padding=1)

    def forward(self, stereo: torch.Tensor, mono: torch.Tensor) -> torch.Tensor:
        ms = self.mono_stereo_attention(mono, stereo)
        sm = self.stereo_mono_attention(stereo, mono)
        if fastpath.cpu_fp32_inference(ms, sm, self.stem.weight):
            # the two maps interleaved, a channels-last volume: oneDNN's stem takes 3.5 instead of 5.8 ms on it,
            # and the U-Net after it runs channels-last throughout (no layout copy for its skip sums)
            x = torch.stack([ms, sm], dim=-1).permute(0, 4, 1, 2, 3)
        else:
            x = torch.stack([ms, sm], dim=1)
        x = F.relu(self.stem(x), inplace=True)
        x = self.channel_attention(self.UNet_3D(x))
        return self.out_conv(x).squeeze(1)


class GeometryDepthNet(nn.Module):
    """Image features + camera vector (+ stereo depth) -> context, fused depth distribution, mono logits.

    Without stereo depth (mono mode) the stereo encoder and the aggregation are skipped and the depth
    distribution is the softmax of the mono logits.
    """

    def __init__(self, in_channels: int, mid_channels: int, context_channels: int, bins: int, conv_channels: int,
                 stereo_channels: int, aggregation_channels: int, na_kernel: int, cam_channels: int,
                 dcn_groups: int, dbound: Tuple[float, float, float], stride: int) -> None:
        super().__init__()
        self.bins, self.dbound, self.stride = bins, dbound, stride
        self.depth_net = DepthNet(in_channels, mid_channels, context_channels, bins, conv_channels, cam_channels,
                                  dcn_groups)
        self.stereo_volume_encoder = StereoVolumeEncoder(bins, stereo_channels)
        self.depth_aggregation = DepthAggregation(bins, aggregation_channels, na_kernel)

    def forward(self, x: torch.Tensor, cam: torch.Tensor, stereo_depth: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mono_logits, context = self.depth_net(x, cam)
        mono = mono_logits.softmax(dim=1)
        if stereo_depth is None:
            return context, mono, mono_logits
        volume = stereo_onehot(stereo_depth, self.stride, self.dbound, self.bins).to(mono.dtype)
        stereo = self.stereo_volume_encoder(volume).softmax(dim=1)
        depth = self.depth_aggregation(stereo, mono).softmax(dim=1)
        return context, depth, mono_logits
