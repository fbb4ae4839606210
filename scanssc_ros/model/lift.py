"""LSS lift-splat: every feature pixel is lifted to every depth bin, weighted by its depth probability, and the
context features are sum-pooled into the processing voxel grid.

Frustum: u = linspace(0, W-1, w), v = linspace(0, H-1, h) in network-input pixels, d = the bin centres. Points
are back-projected with ``geometry.unproject_pixels`` (undoes the resize/crop, then the camera chain).

Official quirk kept: voxel indices are computed with a truncating cast (``.long()``), so a point up to one voxel
*below* a lower bound still lands in index 0; points outside are dropped. ``geometry.points_to_voxels`` uses
floor and would drop them, which is why the model does its own indexing here.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Tuple

import torch

from scanssc_ros.geometry import GridSpec, unproject_pixels

_MAX_ROWS_X_CH = 1 << 24  # lifted elements pooled per chunk
_SPARE_ROWS = 1024  # rows that take the points outside the grid


def depth_bin_centers(dbound: Tuple[float, float, float], num_bins: int, device=None) -> torch.Tensor:
    start, _, step = dbound
    return start + step * torch.arange(num_bins, dtype=torch.float32, device=device)


def frustum_points(K: torch.Tensor, T_cam_grid: torch.Tensor, img_aug: torch.Tensor, input_size: Tuple[int, int],
                   feat_size: Tuple[int, int], dbound: Tuple[float, float, float], num_bins: int) -> torch.Tensor:
    """(B, D, h, w, 3) grid-frame coordinates of the frustum points."""
    B = K.shape[0]
    H, W = input_size
    h, w = feat_size
    dev = K.device
    u = torch.linspace(0, W - 1, w, device=dev)
    v = torch.linspace(0, H - 1, h, device=dev)
    d = depth_bin_centers(dbound, num_bins, dev)
    uv = torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1], dim=-1)  # h,w,2 as (u, v)
    uv = uv[None].expand(num_bins, h, w, 2).reshape(1, -1, 2).expand(B, -1, -1)
    dd = d[:, None, None].expand(num_bins, h, w).reshape(1, -1).expand(B, -1)
    pts = unproject_pixels(uv, dd, K.float(), T_cam_grid.float(), img_aug.float())
    return pts.view(B, num_bins, h, w, 3)


def truncated_voxel_index(points: torch.Tensor, grid: GridSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    """Points (..., 3) -> flat voxel index (...) and inside mask, with the official truncation toward zero."""
    origin = torch.as_tensor(grid.origin, dtype=points.dtype, device=points.device)
    idx = ((points - origin) / grid.voxel_size).long()
    dims = torch.as_tensor(grid.dims, device=points.device)
    inside = ((idx >= 0) & (idx < dims)).all(-1)
    flat = (idx[..., 0] * grid.dims[1] + idx[..., 1]) * grid.dims[2] + idx[..., 2]
    return flat, inside


def lss_pool(context: torch.Tensor, depth: torch.Tensor, points: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """Sum-pool context (B, C, h, w) x depth (B, D, h, w) at frustum points (B, D, h, w, 3).
    Returns the volume (B, C, X, Y, Z) in float32."""
    B, C, h, w = context.shape
    D = depth.shape[1]
    N = grid.num_voxels
    flat, inside = truncated_voxel_index(points, grid)  # B,D,h,w
    flat = flat + (torch.arange(B, device=flat.device) * N)[:, None, None, None]
    # points outside the grid are summed into spare rows after the grid's, which are dropped: selecting the inside
    # ones would give a result whose size depends on the values (on a GPU, the host waits for it every chunk).
    # Spread over _SPARE_ROWS rows so a GPU's atomic adds do not all queue on one row; the grid's rows get the
    # same terms in the same order as from the selection
    spare = B * N + torch.arange(flat.numel(), device=flat.device).view(flat.shape) % _SPARE_ROWS
    flat = torch.where(inside, flat, spare)
    with torch.autocast(device_type=context.device.type, enabled=False):
        ctx = context.float().permute(0, 2, 3, 1)  # B,h,w,C
        dep = depth.float()
        out = ctx.new_zeros(B * N + _SPARE_ROWS, C)
        step = max(1, _MAX_ROWS_X_CH // max(1, B * h * w * C))
        for d0 in range(0, D, step):
            d1 = min(D, d0 + step)
            src = dep[:, d0:d1, :, :, None] * ctx[:, None]  # B,d,h,w,C
            out.index_add_(0, flat[:, d0:d1].reshape(-1), src.reshape(-1, C))
        X, Y, Z = grid.dims
        return out[:B * N].view(B, X, Y, Z, C).permute(0, 4, 1, 2, 3)


class SplatPlan:
    """``lss_pool`` as one sparse-matrix product, for a camera seen before.

    Which voxel each frustum point falls in depends only on the camera (K, pose, image augmentation), not on the
    image: for a fixed camera the frustum, its voxel indices and their order are the same every frame. The plan
    keeps them as a CSR matrix (voxels x pixels) whose values are the frame's depth probabilities, so a frame
    costs one gather of those values and one sparse x dense product instead of lifting every point's features
    (B*D*h*w x C floats) and scattering them. Row entries keep the reference's point order, the order index_add_
    accumulates in. Inference only (no autograd through the plan); the last ``size`` cameras are kept."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._plans: OrderedDict[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.builds = 0  # plans built (a test and the benchmark check the cache hits)

    def pool(self, context: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, T_cam_grid: torch.Tensor,
             img_aug: torch.Tensor, input_size: Tuple[int, int], dbound: Tuple[float, float, float],
             grid: GridSpec) -> torch.Tensor:
        """The same volume as ``lss_pool(context, depth, frustum_points(...), grid)``."""
        B, C, h, w = context.shape
        D = depth.shape[1]
        key = (B, C, D, h, w, tuple(input_size), tuple(dbound), grid, str(context.device),
               *camera_key(K, T_cam_grid, img_aug))
        plan = self._plans.get(key)
        if plan is None:
            pts = frustum_points(K, T_cam_grid, img_aug, input_size, (h, w), dbound, D)
            plan = self._plans[key] = _csr_plan(pts, grid)
            self.builds += 1
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        crow, col, sel = plan
        ctx = context.float().permute(0, 2, 3, 1).reshape(B * h * w, C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            M = torch.sparse_csr_tensor(crow, col, depth.float().reshape(-1)[sel], size=(B * grid.num_voxels,
                                        B * h * w), check_invariants=False)
            out = M @ ctx
        X, Y, Z = grid.dims
        return out.view(B, X, Y, Z, C).permute(0, 4, 1, 2, 3)


def camera_key(*camera: torch.Tensor) -> tuple:
    """A hashable key of camera tensors (intrinsics, pose, image augmentation) by shape and value, for the caches
    kept per camera (the splat plans, the cross-attention's reference points)."""
    return tuple((tuple(t.shape), t.detach().float().cpu().numpy().tobytes()) for t in camera)


def _csr_plan(points: torch.Tensor, grid: GridSpec) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frustum points (B, D, h, w, 3) -> CSR rows (voxels), columns (pixels) and the flat (B, D, h, w) index of
    each entry's depth probability."""
    B, D, h, w, _ = points.shape
    N, P = grid.num_voxels, h * w
    flat, inside = truncated_voxel_index(points, grid)
    flat = flat + (torch.arange(B, device=flat.device) * N)[:, None, None, None]
    sel = torch.nonzero(inside.reshape(-1)).squeeze(1)
    row = flat.reshape(-1)[sel]
    order = torch.argsort(row, stable=True)  # stable: each voxel's points in the reference's order
    sel, row = sel[order], row[order]
    col = (sel // (D * P)) * P + sel % P  # batch b, pixel p -> row b*P + p of the (B*h*w, C) context
    crow = torch.zeros(B * N + 1, dtype=torch.int64, device=flat.device)
    crow[1:] = torch.cumsum(torch.bincount(row, minlength=B * N), 0)
    return crow, col, sel
