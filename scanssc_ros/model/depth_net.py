"""Monocular depth/context branch (BEVDepth-style DepthNet) and the 33-dim camera vector that conditions it.

DepthNet: 3x3 reduce conv; a context head (camera-MLP SE gate -> 1x1 conv to the context channels) and a depth
head (its own camera-MLP SE gate -> 3 BasicBlocks -> ASPP -> DCNv1 (groups 4) -> 1x1 conv to the depth-bin logits).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from scanssc_ros.geometry import full_precision

from . import fastpath
from .deform_conv import DeformConv2dPack
from .layers import SafeBatchNorm1d, SafeBatchNorm2d, fold_batch_norm


@full_precision
def camera_vector(K: torch.Tensor, T_cam_grid: torch.Tensor, img_aug: torch.Tensor,
                  p_shift: Optional[torch.Tensor] = None, convention: str = "official") -> torch.Tensor:
    """(B, 33) camera descriptor that conditions the DepthNet SE gates, in the official order: fx, fy, cx, cy,
    the projection shift P[:3, 3] (3), post-rot/trans (6), BDA (5 + translation 3; identity here, as with the
    official ``apply_bda=False``), then the 3x4 sensor->ego block.

    ``T_cam_grid`` maps the grid into the camera's own optical frame, and ``p_shift`` is the 4th column of the
    camera's rectified projection matrix P = K [I | t] (None: zeros, the camera is its own reference). The
    official vector describes the *reference* camera of P (KITTI: camera 0), which sits at -t in the camera
    frame: its sensor->ego block is inv(T_cam_grid) @ Trans(t) = inv(Tr) for KITTI. "shift_folded" is the
    convention of this project's older checkpoints: zeros for the shift and inv(T_cam_grid).
    """
    B = K.shape[0]
    K, T, A = K.float(), T_cam_grid.float(), img_aug.float()
    zeros, ones = K.new_zeros(B), K.new_ones(B)
    # the _ex forms skip the host-side singularity check (a wait for the GPU); the Predictor checks K and T
    sensor2ego = torch.linalg.inv_ex(T).inverse[:, :3, :4]
    shift = K.new_zeros(B, 3) if p_shift is None else p_shift.float().reshape(B, 3)
    if convention == "official":
        t = torch.linalg.solve_ex(K, shift[..., None]).result  # (B, 3, 1): P[:, 3] = K t
        sensor2ego = torch.cat([sensor2ego[..., :3], sensor2ego[..., 3:] + sensor2ego[..., :3] @ t], dim=-1)
    elif convention == "shift_folded":
        shift = K.new_zeros(B, 3)
    else:
        raise ValueError(f"unknown camera convention {convention!r}")
    cols = [K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], shift[:, 0], shift[:, 1], shift[:, 2],
            A[:, 0, 0], A[:, 0, 1], A[:, 0, 2], A[:, 1, 0], A[:, 1, 1], A[:, 1, 2],
            ones, zeros, zeros, ones, ones, zeros, zeros, zeros]
    return torch.cat([torch.stack(cols, dim=1), sensor2ego.reshape(B, 12)], dim=1)


class Mlp(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SEGate(nn.Module):
    """Channel gate computed from the camera embedding (not from the image)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, channels, 1)
        self.conv_expand = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, x_se: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv_expand(F.relu(self.conv_reduce(x_se))))


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; for CPU float32 inference with an eval-mode BatchNorm, one convolution with the
    normalisation folded into its weight and bias (one pass fewer over each map)."""
    if bn.training or bn.running_mean is None or not fastpath.cpu_fp32_inference(x, conv.weight):
        return bn(conv(x))
    w, b = fold_batch_norm(conv.weight, conv.bias, bn)
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        y = F.relu(conv_bn(self.conv1, self.bn1, x), inplace=True)
        return F.relu(conv_bn(self.conv2, self.bn2, y) + identity, inplace=True)


class _ASPPModule(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, dilation: int) -> None:
        super().__init__()
        self.atrous_conv = nn.Conv2d(cin, cout, k, padding=0 if k == 1 else dilation, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        nn.init.kaiming_normal_(self.atrous_conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(conv_bn(self.atrous_conv, self.bn, x), inplace=True)


class ASPP(nn.Module):
    def __init__(self, cin: int, mid: int, dilations: Tuple[int, ...] = (1, 6, 12, 18), dropout: float = 0.5):
        super().__init__()
        self.aspp1 = _ASPPModule(cin, mid, 1, dilations[0])
        self.aspp2 = _ASPPModule(cin, mid, 3, dilations[1])
        self.aspp3 = _ASPPModule(cin, mid, 3, dilations[2])
        self.aspp4 = _ASPPModule(cin, mid, 3, dilations[3])
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, mid, 1, bias=False),
                                             SafeBatchNorm2d(mid), nn.ReLU())
        self.conv1 = nn.Conv2d(5 * mid, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_normal_(self.global_avg_pool[1].weight)
        nn.init.kaiming_normal_(self.conv1.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.global_avg_pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        y = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], dim=1)
        return self.dropout(F.relu(conv_bn(self.conv1, self.bn1, y), inplace=True))


class DepthNet(nn.Module):
    """Returns (depth logits (B, D, h, w), context (B, Cctx, h, w))."""

    def __init__(self, in_channels: int, mid_channels: int, context_channels: int, depth_channels: int,
                 conv_channels: int, cam_channels: int = 33, dcn_groups: int = 4) -> None:
        super().__init__()
        self.reduce_conv = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1),
                                         nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True))
        self.context_conv = nn.Conv2d(mid_channels, context_channels, 1)
        self.bn = SafeBatchNorm1d(cam_channels)
        self.depth_mlp = Mlp(cam_channels, mid_channels, mid_channels)
        self.depth_se = SEGate(mid_channels)
        self.context_mlp = Mlp(cam_channels, mid_channels, mid_channels)
        self.context_se = SEGate(mid_channels)
        down = nn.Conv2d(mid_channels, conv_channels, 3, padding=1) if mid_channels != conv_channels else None
        self.depth_conv = nn.Sequential(
            BasicBlock(mid_channels, conv_channels, downsample=down),
            BasicBlock(conv_channels, conv_channels),
            BasicBlock(conv_channels, conv_channels),
            ASPP(conv_channels, conv_channels),
            DeformConv2dPack(conv_channels, conv_channels, 3, padding=1, groups=dcn_groups),
            nn.Conv2d(conv_channels, depth_channels, 1),
        )

    def forward(self, x: torch.Tensor, cam: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cam = self.bn(cam)
        conv, bn, relu = self.reduce_conv
        x = relu(conv_bn(conv, bn, x))
        context = self.context_conv(self.context_se(x, self.context_mlp(cam)[..., None, None]))
        depth = self.depth_conv(self.depth_se(x, self.depth_mlp(cam)[..., None, None]))
        return depth, context
