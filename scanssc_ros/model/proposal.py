"""Voxel proposal: which processing voxels get image cross-attention.

Stereo mode (official): every pixel of the network-input-sized stereo depth map is back-projected, points
strictly inside the grid bounds (1e-4 m margin) mark their voxel. Deviations: pixels with non-finite or
non-positive depth are dropped (the official code keeps depth-0 pixels, which mark the voxel at the camera
centre), and the "fewer than 10 points -> random dummy points" branch is replaced by the existing
"mask sums to < 2 -> every voxel is a query" fallback, which keeps the layer deterministic.

Mono mode (no stereo depth): the depth map is the arg-max bin centre of the model's own depth distribution,
upsampled (nearest) from the feature map to the input size, and goes through the same procedure.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scanssc_ros.geometry import GridSpec, unproject_pixels

from .lift import depth_bin_centers

_MARGIN = 1e-4


def depth_from_distribution(depth: torch.Tensor, dbound, input_size) -> torch.Tensor:
    """(B, D, h, w) distribution -> (B, 1, H, W) arg-max depth in metres (nearest upsampling)."""
    centers = depth_bin_centers(dbound, depth.shape[1], depth.device)
    metric = centers[depth.argmax(dim=1)][:, None]
    return F.interpolate(metric, size=tuple(input_size), mode="nearest")


@torch.no_grad()
def voxel_proposal(depth: torch.Tensor, K: torch.Tensor, T_cam_grid: torch.Tensor, img_aug: torch.Tensor,
                   grid: GridSpec) -> torch.Tensor:
    """depth (B, 1, H, W) metres -> occupancy proposal (B, X, Y, Z) bool."""
    B, _, H, W = depth.shape
    dev = depth.device
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                          torch.arange(W, device=dev, dtype=torch.float32), indexing="ij")
    uv = torch.stack([u, v], dim=-1).view(1, H * W, 2).expand(B, -1, -1)
    d = depth.float().reshape(B, H * W)
    valid = torch.isfinite(d) & (d > 0)
    pts = unproject_pixels(uv, torch.where(valid, d, torch.ones_like(d)), K.float(), T_cam_grid.float(),
                           img_aug.float())
    lo = torch.as_tensor(grid.origin, device=dev, dtype=torch.float32)
    hi = torch.as_tensor(grid.upper, device=dev, dtype=torch.float32)
    keep = valid & ((pts > lo + _MARGIN) & (pts < hi - _MARGIN)).all(-1)
    dims = torch.as_tensor(grid.dims, device=dev)
    idx = torch.minimum(((pts - lo) / grid.voxel_size).floor().long(), dims - 1)
    flat = (idx[..., 0] * grid.dims[1] + idx[..., 1]) * grid.dims[2] + idx[..., 2]
    flat = flat + (torch.arange(B, device=dev) * grid.num_voxels)[:, None]
    mask = torch.zeros(B * grid.num_voxels, dtype=torch.bool, device=dev)
    mask[flat[keep]] = True
    mask = mask.view(B, grid.num_voxels)
    too_few = mask.sum(dim=1) < 2
    mask[too_few] = True
    return mask.view(B, *grid.dims)
