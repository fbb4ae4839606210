"""Sensors of the synthetic scenes: stereo camera and LiDAR by ray casting, and what they observe.

- Appearance: a base colour per part, Lambert shading under a fixed sun, and a 3D value-noise texture keyed on the
  hit point in scene coordinates, so the texture sticks to the part and both cameras see the same pattern (which
  is what lets stereo matching work). Roads carry dashed lane lines, buildings a grid of windows; sky elsewhere.
- LiDAR: rays from one origin on an HDL-64-like pattern; remission is a per-class value modulated by the texture.
- Visibility: a voxel is *observed* by a sensor when the sensor's ray towards the voxel centre enters the voxel
  before the ray stops (camera: depth map at the nearest pixel; LiDAR: the farther of the two beams bracketing
  the centre's elevation, at its azimuth column). Rays that hit nothing see free space up to the LiDAR range.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from scanssc_ros.data.raycast import cast
from scanssc_ros.data.synthetic_scene import CLS, Part, Scene
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec

_SUN = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
# texture contrast and LiDAR remission per train id
_TEXTURE = np.full(20, 0.35)
_TEXTURE[[CLS["vegetation"], CLS["terrain"]]] = 0.55
_REMISSION = np.full(20, 0.3)
_REMISSION[[CLS["vegetation"], CLS["terrain"]]] = 0.45
_REMISSION[CLS["traffic-sign"]] = 0.9
_REMISSION[[CLS["road"], CLS["parking"]]] = 0.2


@dataclass(frozen=True)
class LidarSpec:
    """HDL-64E-like pattern: beams evenly spread in elevation, ``azimuths`` columns per turn."""

    beams: int = 64
    elevation_up: float = 2.0  # deg
    elevation_down: float = -24.9
    azimuths: int = 2048
    max_range: float = 80.0

    def directions(self) -> np.ndarray:
        """(beams, azimuths, 3) unit rays, top beam first, azimuth from -pi."""
        el = np.radians(np.linspace(self.elevation_up, self.elevation_down, self.beams))
        az = -math.pi + (np.arange(self.azimuths) + 0.5) * (2 * math.pi / self.azimuths)
        el, az = np.meshgrid(el, az, indexing="ij")
        return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)


# --------------------------------------------------------------------------------------------- appearance
_HASH = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _mix01(h: np.ndarray) -> np.ndarray:
    """uint64 -> uniform [0, 1): a multiply-xorshift finaliser (wrapping uint64 arithmetic)."""
    u = np.uint64
    h = h ^ (h >> u(31))
    h *= u(0xBF58476D1CE4E5B9)
    h ^= h >> u(29)
    return (h >> u(11)).astype(np.float64) * 2.0 ** -53


def value_noise(p: np.ndarray, seed: int, freqs: Sequence[float] = (2.0, 7.0, 23.0),
                weights: Sequence[float] = (0.3, 0.35, 0.35)) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at points (N, 3) (metres), summed over octaves of ``freqs`` cycles/m:
    a hash of the integer lattice, interpolated trilinearly with smoothstep weights."""
    out = np.zeros(len(p))
    for octave, (f, w) in enumerate(zip(freqs, weights)):
        q = p * f
        i = np.floor(q)
        t = q - i
        t = t * t * (3 - 2 * t)
        i = i.astype(np.int64).astype(np.uint64)
        # per axis: hashed lattice coordinate and interpolation weight of the lower / upper corner
        keys = [(i[:, k] * _HASH[k], (i[:, k] + np.uint64(1)) * _HASH[k]) for k in range(3)]
        wts = [(1 - t[:, k], t[:, k]) for k in range(3)]
        salt = np.uint64(seed + 7919 * octave)
        acc = np.zeros(len(p))
        for cx in (0, 1):
            for cy in (0, 1):
                hxy, wxy = keys[0][cx] ^ keys[1][cy] ^ salt, wts[0][cx] * wts[1][cy]
                for cz in (0, 1):
                    acc += (wxy * wts[2][cz]) * _mix01(hxy ^ keys[2][cz])
        out += w * acc
    return out / sum(weights)


def _surface(parts: Sequence[Part], scene: Scene, points: np.ndarray, index: np.ndarray, normal: np.ndarray,
             dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Colour (N, 3) in [0, 1] and LiDAR remission (N,) of hit points (index >= 0 everywhere)."""
    label = np.array([p.label for p in parts])[index]
    base = np.array([p.color for p in parts])[index]
    tex_p = points - np.array([p.shift for p in parts])[index]  # scene coordinates: the texture moves with a part
    noise = value_noise(tex_p, scene.texture_seed)
    facing = np.where((np.einsum("nk,nk->n", normal, dirs) > 0)[:, None], -normal, normal)
    light = 0.35 + 0.65 * np.clip(np.einsum("nk,k->n", facing, _SUN), 0.0, 1.0)
    rgb = base * (light * (1 + _TEXTURE[label] * (2 * noise - 1)))[:, None]
    remission = _REMISSION[label] * (0.7 + 0.6 * noise)
    pattern = np.array([p.pattern for p in parts])[index]
    lanes = pattern == "lanes"
    if lanes.any():
        x, y = tex_p[lanes, 0], tex_p[lanes, 1]
        mark = np.zeros(x.shape, bool)
        for ym in scene.lane_marks:
            mark |= (np.abs(y - ym) < 0.075) & (np.mod(x, 6.0) < 3.0)
        rgb[np.flatnonzero(lanes)[mark]] = (0.85 + 0.1 * noise[lanes][mark])[:, None]
        remission[np.flatnonzero(lanes)[mark]] = 0.7
    win = np.flatnonzero(pattern == "windows")
    if win.size:
        n = normal[win]
        u = np.where(np.abs(n[:, 1]) > np.abs(n[:, 0]), tex_p[win, 0], tex_p[win, 1])
        h = tex_p[win, 2] - scene.ground_z
        fu, fh = np.mod(u / 3.2, 1.0), np.mod(h / 3.0, 1.0)
        glass = (fu > 0.25) & (fu < 0.75) & (fh > 0.3) & (fh < 0.8) & (h > 1.0) & (np.abs(n[:, 2]) < 0.5)
        rgb[win[glass]] = np.array([0.14, 0.17, 0.22]) * (0.6 + 0.8 * noise[win[glass]])[:, None]
    return np.clip(rgb, 0.0, 1.0), np.clip(remission, 0.0, 1.0)


def _sky(dirs: np.ndarray) -> np.ndarray:
    up = np.clip(dirs[:, 2] / np.linalg.norm(dirs, axis=1) * 3.0, 0.0, 1.0)[:, None]
    return (1 - up) * np.array([0.80, 0.86, 0.92]) + up * np.array([0.45, 0.62, 0.86])


# ------------------------------------------------------------------------------------------------ sensors
def camera_rays(K: np.ndarray, T_cam_grid: np.ndarray, hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Origin (3,) and (H, W, 3) grid-frame rays through the pixel centres, scaled to unit optical-axis
    component so the ray parameter is the camera depth."""
    h, w = hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    T = np.linalg.inv(T_cam_grid)
    M = T[:3, :3] @ np.linalg.inv(K)  # pixel (u, v, 1) -> grid-frame direction
    return T[:3, 3].copy(), np.einsum("jk,hwk->hwj", M, np.stack([u, v, np.ones_like(u)], -1))


def render_camera(parts: Sequence[Part], scene: Scene, K: np.ndarray, T_cam_grid: np.ndarray,
                  hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), depth float32 (H, W) with 0 for sky, train-id image uint8) of one camera."""
    origin, dirs = camera_rays(K, T_cam_grid, hw)
    hits = cast([p.shape for p in parts], origin, dirs)
    flat = dirs.reshape(-1, 3)
    rgb = _sky(flat)
    hit = hits.index >= 0
    pts = origin + hits.t[hit, None] * flat[hit]
    rgb[hit] = _surface(parts, scene, pts, hits.index[hit], hits.normal[hit], flat[hit])[0]
    labels = np.zeros(flat.shape[0], np.uint8)
    labels[hit] = np.array([p.label for p in parts], np.uint8)[hits.index[hit]]
    depth = np.where(hit, hits.t, 0.0).astype(np.float32)
    img = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return img.reshape(*hw, 3), depth.reshape(hw), labels.reshape(hw)


def scan_lidar(parts: Sequence[Part], scene: Scene, spec: LidarSpec = LidarSpec(),
               origin: Sequence[float] = (0.0, 0.0, 0.0)) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 4) float32, labels (N,) uint32 raw | instance << 16, range image (beams, azimuths) with inf
    where nothing was hit within ``max_range``)."""
    dirs = spec.directions()
    hits = cast([p.shape for p in parts], np.asarray(origin, np.float64), dirs, t_max=spec.max_range)
    flat = dirs.reshape(-1, 3)
    hit = hits.index >= 0
    idx = hits.index[hit]
    xyz = np.asarray(origin) + hits.t[hit, None] * flat[hit]
    remission = _surface(parts, scene, xyz, idx, hits.normal[hit], flat[hit])[1]
    raw = np.array([p.raw for p in parts], np.uint32)[idx]
    inst = np.array([p.instance for p in parts], np.uint32)[idx]
    points = np.concatenate([xyz, remission[:, None]], 1).astype(np.float32)
    return points, raw | (inst << np.uint32(16)), hits.t.reshape(dirs.shape[:2])


# --------------------------------------------------------------------------------------------- visibility
def _entry_fraction(delta: np.ndarray, half: float) -> np.ndarray:
    """Fraction of the way from a sensor to a voxel centre (offsets ``delta`` (M, 3)) where the straight line
    enters the voxel's cube (0 when the sensor is inside it)."""
    a = np.abs(delta)
    f = (a - half) / np.maximum(a, half)
    return np.maximum(f.max(1), 0.0)


def _camera_sees(centers: np.ndarray, half: float, K: np.ndarray, T_cam_grid: np.ndarray,
                 depth: np.ndarray) -> np.ndarray:
    h, w = depth.shape
    P = (K @ T_cam_grid[:3]).astype(np.float32)  # (matmul is slow for (M, 3) @ (3, 3); einsum is not)
    uvw = np.einsum("jk,nk->nj", P[:, :3], centers) + P[:, 3]
    z = np.einsum("k,nk->n", T_cam_grid[2, :3].astype(np.float32), centers) + np.float32(T_cam_grid[2, 3])
    front = z > 0.05
    uvw = uvw[front]
    u, v = np.rint(uvw[:, 0] / uvw[:, 2]).astype(np.int64), np.rint(uvw[:, 1] / uvw[:, 2]).astype(np.int64)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    idx = np.flatnonzero(front)[inside]
    stop = depth[v[inside], u[inside]]
    origin = np.linalg.inv(T_cam_grid)[:3, 3].astype(np.float32)
    seen = np.zeros(len(centers), bool)
    seen[idx] = (stop == 0) | (_entry_fraction(centers[idx] - origin, half) * z[idx] <= stop)
    return seen


def _lidar_sees(centers: np.ndarray, half: float, origin: Sequence[float], ranges: np.ndarray,
                spec: LidarSpec) -> np.ndarray:
    delta = centers - np.asarray(origin, np.float32)
    r = np.linalg.norm(delta, axis=1)
    spacing = (spec.elevation_up - spec.elevation_down) / (spec.beams - 1)
    elevation = np.degrees(np.arcsin(np.clip(delta[:, 2] / np.maximum(r, 1e-6), -1, 1)))
    beam = (spec.elevation_up - elevation) / spacing  # fractional beam index
    n_az = ranges.shape[1]
    az = np.floor((np.arctan2(delta[:, 1], delta[:, 0]) + math.pi) * (n_az / (2 * math.pi))).astype(np.int64)
    ok = (beam >= -0.5) & (beam <= spec.beams - 0.5)
    b0 = np.clip(np.floor(beam[ok]), 0, spec.beams - 1).astype(np.int64)
    b1 = np.clip(b0 + 1, 0, spec.beams - 1)
    a = az[ok] % n_az
    # the two beams above and below the centre: the voxel is seen when either passes it (beams fan out wider
    # than a voxel beyond ~25 m, so the nearest one alone would leave rings of unseen ground)
    stop = np.minimum(np.maximum(ranges[b0, a], ranges[b1, a]), spec.max_range)
    seen = np.zeros(len(centers), bool)
    seen[ok] = _entry_fraction(delta[ok], half) * r[ok] <= stop
    return seen


@functools.lru_cache(maxsize=2)
def _voxel_centers(grid: GridSpec) -> np.ndarray:
    idx = np.indices(grid.dims, np.float32).reshape(3, -1).T
    return (np.asarray(grid.origin, np.float32) + (idx + 0.5) * np.float32(grid.voxel_size)).astype(np.float32)


def observed_voxels(camera: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                    lidars: Sequence[Tuple[Sequence[float], np.ndarray]], spec: LidarSpec,
                    occupancy: Optional[np.ndarray] = None, grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """(X, Y, Z) bool: voxels entered by a sensor ray before the ray stops (see the module docstring).

    ``camera``: (K, T_cam_grid, depth map with 0 = nothing hit); ``lidars``: (origin, range image (beams, any
    number of azimuths) with inf = nothing hit); ``occupancy``: voxels that count as observed anyway.
    """
    centers, half = _voxel_centers(grid), grid.voxel_size / 2
    todo = np.arange(len(centers)) if occupancy is None else np.flatnonzero(~np.asarray(occupancy).reshape(-1))
    if camera is not None:
        todo = todo[~_camera_sees(centers[todo], half, *camera)]
    for origin, ranges in lidars:
        todo = todo[~_lidar_sees(centers[todo], half, origin, ranges, spec)]
    seen = np.ones(len(centers), bool)
    seen[todo] = False
    return seen.reshape(grid.dims)
