"""Depth maps: the stereo prior (OpenCV SGBM), LiDAR depth targets, and the depth-loss target.

- The official pipeline uses MobileStereoNet depth computed offline. No weights can be downloaded here, so the
  prior is classical semi-global matching; ``bench/real_sample_checks.py`` measures its error against LiDAR.
- Every depth map uses 0 for "no depth".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np
import torch

from scanssc_ros.geometry import project_points

DBOUND = (2.0, 58.0, 0.5)  # depth bins of the depth net: centres 2.0, 2.5, ..., 57.5 m


@dataclass(frozen=True)
class SgbmParams:
    """StereoSGBM settings chosen for KITTI (fx ~ 707-721 px, baseline ~ 0.54 m, ~1240x375 images).

    - ``num_disparities`` 192: the nearest depth bin (2 m) needs fx * B / 2 ~ 191 px; 128 would stop at ~3 m.
    - ``block_size`` 5: small windows keep thin structures (poles, signs); SGM's smoothness terms make up for the
      noise. P1 / P2 = 8 / 32 * block^2 (grey input) is the usual OpenCV scaling (P2 > P1: large jumps cost more).
    - ``uniqueness_ratio`` 10 and ``disp12_max_diff`` 1 (left-right check) reject ambiguous matches, which on
      KITTI are mostly road texture and sky; ``speckle_window_size`` 100 / ``speckle_range`` 2 remove small
      blobs of outliers. ``pre_filter_cap`` 63 is OpenCV's maximum (clips the x-derivative prefilter).
    - ``mode`` SGBM_3WAY: on 08/000000 it matched 8-direction HH (median abs-rel 0.021 vs 0.023) at ~1/9 of
      the time; ``block_size`` 3 / 7 and ``num_disparities`` 128 were no better (measured, same frame).
    """

    num_disparities: int = 192
    block_size: int = 5
    p1_scale: int = 8
    p2_scale: int = 32
    uniqueness_ratio: int = 10
    speckle_window_size: int = 100
    speckle_range: int = 2
    disp12_max_diff: int = 1
    pre_filter_cap: int = 63
    mode: int = cv2.STEREO_SGBM_MODE_SGBM_3WAY

    def matcher(self) -> cv2.StereoSGBM:
        area = self.block_size * self.block_size
        return cv2.StereoSGBM_create(
            minDisparity=0, numDisparities=self.num_disparities, blockSize=self.block_size,
            P1=self.p1_scale * area, P2=self.p2_scale * area, disp12MaxDiff=self.disp12_max_diff,
            preFilterCap=self.pre_filter_cap, uniquenessRatio=self.uniqueness_ratio,
            speckleWindowSize=self.speckle_window_size, speckleRange=self.speckle_range, mode=self.mode)


def sgbm_disparity(left: np.ndarray, right: np.ndarray, params: SgbmParams = SgbmParams()) -> np.ndarray:
    """Rectified (H, W[, 3]) uint8 pair -> disparity in pixels (float32), 0 where SGBM found no match.

    Colour pairs (RGB) are matched in grey: on KITTI sequence 08 that was as accurate as 3-channel matching and
    about 3x faster (bench/real_sample_checks.py).
    """
    if left.shape != right.shape:
        raise ValueError(f"stereo pair shapes differ: {left.shape} vs {right.shape}")
    if left.shape[1] <= params.num_disparities:
        # OpenCV raises for narrower images, and a width of num_disparities - 1 crashes the process (SIGSEGV/SIGFPE
        # seen with opencv 5.0.0): never hand it such a pair
        raise ValueError(f"stereo images {left.shape[1]} px wide; SGBM needs more than num_disparities = "
                         f"{params.num_disparities} px")
    if left.ndim == 3:
        left, right = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
    raw = params.matcher().compute(left, right)  # int16, 16x fixed point; invalid = (minDisparity - 1) * 16
    disp = raw.astype(np.float32) / 16.0
    disp[disp <= 0] = 0.0
    return disp


def disparity_to_depth(disp: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """depth = fx * baseline / disparity (metres); 0 where the disparity is 0."""
    if baseline <= 0:
        raise ValueError(f"baseline must be positive, got {baseline} (left/right swapped?)")
    depth = np.zeros_like(disp, dtype=np.float32)
    ok = disp > 0
    depth[ok] = fx * baseline / disp[ok]
    return depth


def stereo_depth(left: np.ndarray, right: np.ndarray, fx: float, baseline: float,
                 params: SgbmParams = SgbmParams()) -> np.ndarray:
    """Rectified uint8 pair (original resolution) -> (H, W) float32 depth in metres of the left camera, 0 invalid.

    ``baseline`` comes from ``geometry.stereo_baseline(P2, P3)``.
    """
    return disparity_to_depth(sgbm_disparity(left, right, params), fx, baseline)


def lidar_depth_map(points: np.ndarray, K: np.ndarray, T_cam_grid: np.ndarray, hw: Tuple[int, int],
                    img_aug: Optional[np.ndarray] = None, min_depth: float = 1e-3) -> np.ndarray:
    """Project grid-frame points (N, 3+) into an (H, W) image; the nearest point wins where several land on the
    same (rounded) pixel. Returns float32 depth along the optical axis, 0 where no point landed."""
    h, w = hw
    uv, d = project_points(np.asarray(points, np.float64)[:, :3], K, T_cam_grid, img_aug)
    u, v = np.rint(uv[:, 0]), np.rint(uv[:, 1])
    ok = (d > min_depth) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    flat = v[ok].astype(np.int64) * w + u[ok].astype(np.int64)
    d = d[ok]
    order = np.lexsort((d, flat))  # by pixel, nearest first
    flat, d = flat[order], d[order]
    first = np.ones(flat.shape, bool)
    first[1:] = flat[1:] != flat[:-1]
    out = np.zeros(h * w, np.float32)
    out[flat[first]] = d[first]
    return out.reshape(h, w)


# ------------------------------------------------------------------------------------- depth-loss targets
def min_valid_depth_pool(depth: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """(..., H, W) depth -> (..., H/stride, W/stride): minimum of the valid (> 0) depths of each patch, 0 when a
    patch has none. The nearest surface of a patch is the one the patch's feature sees."""
    *lead, h, w = depth.shape
    if h % stride or w % stride:
        raise ValueError(f"depth map {h}x{w} not divisible by stride {stride}")
    patches = depth.reshape(*lead, h // stride, stride, w // stride, stride)
    big = torch.finfo(depth.dtype).max
    m = torch.where(patches > 0, patches, torch.full_like(patches, big)).amin(dim=(-3, -1))
    return torch.where(m == big, torch.zeros_like(m), m)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x * (2.0 ** -0.5)))


def gaussian_depth_target(depth: torch.Tensor, dbound: Tuple[float, float, float] = DBOUND, sigma: float = 0.5,
                          official_quirk: bool = False) -> torch.Tensor:
    """Depths (N,) in metres -> (N, D) target distributions over the depth bins (D = 112 for DBOUND).

    Bin k covers [lo + (k - 1/2) step, lo + (k + 1/2) step]; its mass is the integral of a Gaussian over it.

    - Default (fixed): Normal(depth, sigma) in metres, renormalised over the D bins so every target sums to 1
      (otherwise a patch at 2 m would carry only ~69% of its mass and the KL would not be a divergence).
    - ``official_quirk=True`` reproduces CGFormer's ``generate_guassian_depth_target``: the Normal is built in
      bin units (mean depth/step, std sigma/step) but its CDF is evaluated at the bin edges in *metres*, and the
      result is not renormalised. The mass then lands near bin ``2 * depth`` and vanishes for depths above ~29 m.
    """
    lo, hi, step = dbound
    n_bins = int(round((hi - lo) / step))
    edges = lo - step / 2 + step * torch.arange(n_bins + 1, dtype=depth.dtype, device=depth.device)
    d = depth.reshape(-1, 1)
    if official_quirk:
        cdf = _normal_cdf((edges - d / step) / (sigma / step))
        return cdf[:, 1:] - cdf[:, :-1]
    cdf = _normal_cdf((edges - d) / sigma)
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / mass.sum(dim=1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
