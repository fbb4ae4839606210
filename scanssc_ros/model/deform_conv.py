"""Deformable convolution v1 (mmcv ``DeformConv2dPack`` semantics) in plain PyTorch.

Sampling uses ``F.grid_sample`` (bilinear, zero padding, align_corners=False on pixel centres), which gives the
same values as mmcv's im2col kernel: a corner outside the image contributes zero. The sampled columns are then
multiplied with the (grouped) kernel. The offset convolution is zero-initialised, so a fresh layer is an ordinary
convolution.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath, msda


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride=1, padding=1,
                  dilation=1, groups: int = 1, deform_groups: int = 1) -> torch.Tensor:
    """x (B,C,H,W); offset (B, deform_groups*2*kh*kw, Ho, Wo) laid out as (dy, dx) per kernel tap;
    weight (O, C/groups, kh, kw). Returns (B, O, Ho, Wo). No bias."""
    B, C, H, W = x.shape
    Cout, Cg, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    Ho, Wo = offset.shape[-2:]
    K = kh * kw
    if C % deform_groups or C // groups != Cg:
        raise ValueError(f"channels {C} incompatible with groups={groups}, deform_groups={deform_groups}")
    dev, dt = x.device, torch.promote_types(x.dtype, torch.float32)
    base_y = (torch.arange(Ho, device=dev, dtype=dt) * sh - ph)[:, None, None, None] \
        + (torch.arange(kh, device=dev, dtype=dt) * dh)[None, None, :, None]
    base_x = (torch.arange(Wo, device=dev, dtype=dt) * sw - pw)[None, :, None, None] \
        + (torch.arange(kw, device=dev, dtype=dt) * dw)[None, None, None, :]
    base_y = base_y.expand(Ho, Wo, kh, kw).reshape(Ho, Wo, K)
    base_x = base_x.expand(Ho, Wo, kh, kw).reshape(Ho, Wo, K)
    off = offset.to(dt).view(B, deform_groups, K, 2, Ho, Wo).permute(0, 1, 4, 5, 2, 3)  # B,dg,Ho,Wo,K,2
    py = base_y + off[..., 0]
    px = base_x + off[..., 1]
    if deform_groups == 1 and fastpath.cpu_fp32_inference(x, offset, weight):
        out = _deform_conv2d_rows(x, py[:, 0], px[:, 0], weight, groups)
        if out is not None:
            return out
    grid = torch.stack(((2 * px + 1) / W - 1, (2 * py + 1) / H - 1), dim=-1)  # B,dg,Ho,Wo,K,2
    grid = grid.reshape(B * deform_groups, Ho, Wo * K, 2)
    xs = x.to(dt).reshape(B * deform_groups, C // deform_groups, H, W)
    cols = F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.view(B, C, Ho, Wo, K).permute(0, 1, 4, 2, 3).reshape(B, groups, Cg * K, Ho * Wo)
    w = weight.to(dt).reshape(groups, Cout // groups, Cg * K)
    out = torch.einsum("gok,bgkl->bgol", w, cols)
    return out.reshape(B, Cout, Ho, Wo).to(x.dtype)


def _deform_conv2d_rows(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor, weight: torch.Tensor, groups: int
                        ) -> Optional[torch.Tensor]:
    """``deform_conv2d`` for one deformable group on CPU: the bilinear samples as weighted row gathers from a
    channels-last copy of x (``msda.gather_sum``: 4 rows of C floats per sample, where grid_sample reads each
    channel's corners a map apart), and the grouped kernel as one product with a block-diagonal dense kernel
    (zeros between groups), which reads the samples where they lie. py, px (B, Ho, Wo, K) sampling rows and
    columns; returns (B, Cout, Ho, Wo), or None where the map has too many rows for the gather."""
    B, C, H, W = x.shape
    Cout, Cg = weight.shape[:2]
    _, Ho, Wo, K = py.shape
    table = msda.gather_table(x.permute(0, 2, 3, 1).reshape(B, H * W, 1, C), [(H, W)])
    if table is None:
        return None
    Q = Ho * Wo * K
    loc = torch.stack(((px + 0.5) / W, (py + 0.5) / H), dim=-1).view(B, Q, 1, 1, 1, 2)
    cols = msda.gather_sum(table, loc, loc.new_ones(B, Q, 1, 1, 1))  # (B, Q, C): (ho, wo, tap) rows
    og = Cout // groups
    dense = weight.new_zeros(Cout, K, C)
    for g in range(groups):
        dense[g * og:(g + 1) * og, :, g * Cg:(g + 1) * Cg] = weight[g * og:(g + 1) * og].reshape(og, Cg, K) \
            .transpose(1, 2)
    out = torch.mm(cols.view(B * Ho * Wo, K * C), dense.view(Cout, K * C).t())
    # contiguous, as the reference returns it: what follows was measured on that layout
    return out.view(B, Ho, Wo, Cout).permute(0, 3, 1, 2).contiguous()


class DeformConv2dPack(nn.Module):
    """DCNv1 layer with its own offset predictor (an ordinary conv with the same geometry, zero-initialised)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, deform_groups: int = 1) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in/out channels ({in_channels}, {out_channels}) not divisible by groups={groups}")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.deform_groups = groups, deform_groups
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, k, k))
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * 2 * k * k, k, stride=stride, padding=padding,
                                     dilation=dilation, bias=True)
        stdv = 1.0 / math.sqrt(in_channels // groups * k * k)
        nn.init.uniform_(self.weight, -stdv, stdv)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation, self.groups,
                             self.deform_groups)
