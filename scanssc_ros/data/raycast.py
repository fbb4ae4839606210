"""Analytic solids for the synthetic scenes: ray intersection and voxel overlap, pure numpy.

Three shapes cover a street scene: yaw-rotated boxes (ground slabs, buildings, vehicles, fences, sign plates),
vertical cylinders (poles, trunks, people) and spheres (tree crowns, bushes). Each one offers:

- ``intersect(origin, dirs)``: where one origin's rays (N, 3), not necessarily unit length, first enter the
  solid. ``t`` is in units of the direction's length (so rays with unit optical-axis component give camera depth,
  unit rays give range); misses and hits at ``t <= 0`` (origin inside) are ``inf``. ``normal(points)`` gives the
  outward normal at surface points (only computed for the rays a shape finally wins).
- ``overlaps(lo, hi)``: which axis-aligned cells (voxels) share volume with the solid, exactly (separating axes
  for boxes, nearest points for cylinders and spheres; touching within 1e-6 m does not count). A point on the
  solid's surface therefore always lies in a cell that overlaps it, which is what keeps LiDAR point labels and
  voxel labels consistent.

``cast`` finds the first hit of a ray bundle against many solids; bundles are 2D grids of rays (image rows and
columns, LiDAR beams and azimuths) so neighbouring rays can be culled together in tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

_TOUCH = 1e-6  # m: cells that only touch a solid do not overlap it
_T_MIN = 1e-9


@dataclass(frozen=True)
class Box:
    """Box of half extents ``half`` around ``center``, rotated by ``yaw`` (rad) about the vertical axis.

    ``skin`` (m) limits the *voxel* occupancy to the top layer of that thickness: ground slabs are rendered as
    solid blocks (no gaps under curbs) but label only the voxel layer that holds their surface.
    """

    center: Tuple[float, float, float]
    half: Tuple[float, float, float]
    yaw: float = 0.0
    skin: Optional[float] = None

    def translated(self, d: Sequence[float]) -> Box:
        return Box(tuple(c + o for c, o in zip(self.center, d)), self.half, self.yaw, self.skin)

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        hx, hy, hz = self.half
        ext = np.array([hx * c + hy * s, hx * s + hy * c, hz])
        return np.asarray(self.center) - ext, np.asarray(self.center) + ext

    def _to_local(self, v: np.ndarray) -> np.ndarray:
        if self.yaw == 0.0:
            return v
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.stack([c * v[..., 0] + s * v[..., 1], -s * v[..., 0] + c * v[..., 1], v[..., 2]], -1)

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        o = self._to_local(np.asarray(origin, np.float64) - np.asarray(self.center))
        d = self._to_local(dirs)
        inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)  # a ray parallel to a slab: far-away crossings
        half = np.asarray(self.half)
        t0, t1 = (-half - o) * inv, (half - o) * inv
        t_lo, t_hi = np.minimum(t0, t1), np.maximum(t0, t1)
        t_near = np.maximum(np.maximum(t_lo[:, 0], t_lo[:, 1]), t_lo[:, 2])
        t_far = np.minimum(np.minimum(t_hi[:, 0], t_hi[:, 1]), t_hi[:, 2])
        return np.where((t_near <= t_far) & (t_near > _T_MIN), t_near, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        p = self._to_local(points - np.asarray(self.center))
        axis = (np.abs(p) / np.asarray(self.half)).argmax(1)  # the face the point is closest to, in units of size
        n = np.zeros_like(p)
        rows = np.arange(len(p))
        n[rows, axis] = np.sign(p[rows, axis])
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.stack([c * n[:, 0] - s * n[:, 1], s * n[:, 0] + c * n[:, 1], n[:, 2]], 1)

    def overlaps(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        b_lo, b_hi = self.bounds()
        if self.skin is not None:
            b_lo[2] = max(b_lo[2], b_hi[2] - self.skin)
        ok = np.ones(lo.shape[:-1], bool)
        for k in range(3):  # world axes (the whole test when yaw == 0)
            ok &= (lo[..., k] < b_hi[k] - _TOUCH) & (hi[..., k] > b_lo[k] + _TOUCH)
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        if abs(s) > 1e-12:  # the box's own horizontal axes: project the cell onto them
            mid, h = (lo + hi) / 2 - np.asarray(self.center), (hi - lo) / 2
            for ax, (ux, uy) in enumerate(((c, s), (-s, c))):
                reach = self.half[ax] + h[..., 0] * abs(ux) + h[..., 1] * abs(uy)
                ok &= np.abs(mid[..., 0] * ux + mid[..., 1] * uy) < reach - _TOUCH
        return ok


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder: axis through (x, y), from z0 to z1."""

    x: float
    y: float
    radius: float
    z0: float
    z1: float

    def translated(self, d: Sequence[float]) -> Cylinder:
        return Cylinder(self.x + d[0], self.y + d[1], self.radius, self.z0 + d[2], self.z1 + d[2])

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        r = self.radius
        return np.array([self.x - r, self.y - r, self.z0]), np.array([self.x + r, self.y + r, self.z1])

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        ox, oy, oz = origin[0] - self.x, origin[1] - self.y, origin[2]
        dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - self.radius ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            z_side = oz + t_side * dz
            side = (a > 0) & (disc >= 0) & (t_side > _T_MIN) & (z_side >= self.z0) & (z_side <= self.z1)
            t = np.where(side, t_side, np.inf)
            for z_cap in (self.z1, self.z0):
                t_cap = (z_cap - oz) / dz
                px, py = ox + t_cap * dx, oy + t_cap * dy
                t = np.where((t_cap > _T_MIN) & (px * px + py * py <= self.radius ** 2) & (t_cap < t), t_cap, t)
        return t

    def normal(self, points: np.ndarray) -> np.ndarray:
        px, py, pz = points[:, 0] - self.x, points[:, 1] - self.y, points[:, 2]
        rho = np.hypot(px, py)
        d_side, d_top, d_bottom = np.abs(rho - self.radius), np.abs(pz - self.z1), np.abs(pz - self.z0)
        side = (d_side <= d_top) & (d_side <= d_bottom)
        safe = np.maximum(rho, 1e-12)
        return np.where(side[:, None], np.stack([px / safe, py / safe, np.zeros_like(px)], 1),
                        np.stack([np.zeros_like(px), np.zeros_like(px), np.where(d_top < d_bottom, 1.0, -1.0)], 1))

    def overlaps(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        qx = np.clip(self.x, lo[..., 0], hi[..., 0]) - self.x  # nearest point of the cell to the axis
        qy = np.clip(self.y, lo[..., 1], hi[..., 1]) - self.y
        r = self.radius - _TOUCH
        return ((qx * qx + qy * qy < r * r) & (lo[..., 2] < self.z1 - _TOUCH) & (hi[..., 2] > self.z0 + _TOUCH))


@dataclass(frozen=True)
class Sphere:
    center: Tuple[float, float, float]
    radius: float

    def translated(self, d: Sequence[float]) -> Sphere:
        return Sphere(tuple(c + o for c, o in zip(self.center, d)), self.radius)

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center, np.float64)
        return c - self.radius, c + self.radius

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        o = np.asarray(origin, np.float64) - np.asarray(self.center)
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = np.einsum("ij,j->i", dirs, o)
        disc = b * b - a * (o @ o - self.radius ** 2)
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        return np.where((disc >= 0) & (t > _T_MIN), t, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        return (points - np.asarray(self.center)) / self.radius

    def overlaps(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        c = np.asarray(self.center)
        q = np.clip(c, lo, hi) - c
        r = self.radius - _TOUCH
        return np.einsum("...k,...k->...", q, q) < r * r


Shape = Union[Box, Cylinder, Sphere]


# ------------------------------------------------------------------------------------------------ casting
@dataclass
class Hits:
    """First hits of a ray bundle (flattened in the bundle's row-major order)."""

    t: np.ndarray  # (N,) ray parameter, inf where nothing was hit
    index: np.ndarray  # (N,) int: which shape, -1 for none
    normal: np.ndarray  # (N, 3) unit normal at the hit (zeros where nothing was hit)


def _tile(a: np.ndarray, tile: int) -> np.ndarray:
    """(H, W, ...) -> (tiles, tile*tile, ...), padding the edges by repetition."""
    h, w = a.shape[:2]
    ph, pw = -h % tile, -w % tile
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    a = np.pad(a, pad, mode="edge")
    H, W = a.shape[:2]
    a = a.reshape(H // tile, tile, W // tile, tile, *a.shape[2:]).swapaxes(1, 2)
    return a.reshape((H // tile) * (W // tile), tile * tile, *a.shape[4:])


def _untile(a: np.ndarray, hw: Tuple[int, int], tile: int) -> np.ndarray:
    h, w = hw
    H, W = h + (-h % tile), w + (-w % tile)
    a = a.reshape(H // tile, W // tile, tile, tile, *a.shape[2:]).swapaxes(1, 2)
    return a.reshape(H, W, *a.shape[4:])[:h, :w].reshape(h * w, *a.shape[4:])


def _tiles_reaching(lo: np.ndarray, hi: np.ndarray, origin: np.ndarray, dmin: np.ndarray, dmax: np.ndarray,
                    t_max: float) -> np.ndarray:
    """Which tiles may hit the box [lo, hi]: a tile's rays are widened to every direction in the box
    [dmin, dmax] (per tile, (T, 3)); o + t d lies in [lo, hi] for some such d and some 0 < t <= t_max iff, on every
    axis, lo - o <= t dmax and hi - o >= t dmin, i.e. t lies in an interval per axis."""
    a, b = lo - 1e-6 - origin, hi + 1e-6 - origin
    with np.errstate(divide="ignore", invalid="ignore"):
        qa, qb = a / dmax, b / dmin
    t0 = np.maximum(np.where(dmax > 0, qa, 0.0).max(1), np.where(dmin < 0, qb, 0.0).max(1))
    t1 = np.minimum(np.where(dmax < 0, qa, np.inf).min(1), np.where(dmin > 0, qb, np.inf).min(1))
    never = ((dmax == 0) & (a > 0)) | ((dmin == 0) & (b < 0))
    return (t0 <= np.minimum(t1, t_max)) & ~never.any(1)


def cast(shapes: Sequence[Shape], origin: np.ndarray, dirs: np.ndarray, t_max: float = np.inf,
         tile: int = 16) -> Hits:
    """First hit of every ray of a bundle: ``dirs`` (H, W, 3) from one ``origin``.

    Rays are grouped in ``tile`` x ``tile`` blocks; a block is tested against a shape only when some direction
    within the block's per-axis direction range can reach the shape's bounding box (``_tiles_reaching``), so small
    shapes, and ground slabs above the horizon, cost little. Hits beyond ``t_max`` (in units of the rays' length)
    are dropped. The result equals testing every ray against every shape.
    """
    hw = dirs.shape[:2]
    origin = np.asarray(origin, np.float64)
    tiles = _tile(np.asarray(dirs, np.float64), tile)  # (T, n, 3)
    n_tiles, per_tile = tiles.shape[:2]
    dmin, dmax = tiles.min(1), tiles.max(1)
    every = np.arange(n_tiles)
    t_best = np.full((n_tiles, per_tile), np.inf)
    index = np.full((n_tiles, per_tile), -1, np.int64)
    for k, shape in enumerate(shapes):
        sel = np.flatnonzero(_tiles_reaching(*shape.bounds(), origin, dmin, dmax, t_max))
        if sel.size == 0:
            continue
        if sel.size == n_tiles:
            sel = every
        t = shape.intersect(origin, tiles[sel].reshape(-1, 3)).reshape(sel.size, per_tile)
        better = (t < t_best[sel]) & (t <= t_max)
        if better.any():
            t_best[sel] = np.where(better, t, t_best[sel])
            index[sel] = np.where(better, k, index[sel])
    t_best, index = _untile(t_best, hw, tile), _untile(index, hw, tile)
    flat = dirs.reshape(-1, 3)
    normal = np.zeros(flat.shape)
    hit = np.flatnonzero(index >= 0)
    order = hit[np.argsort(index[hit], kind="stable")]
    bounds = np.searchsorted(index[order], np.arange(len(shapes) + 1))
    for k in np.flatnonzero(np.diff(bounds)):
        rays = order[bounds[k]:bounds[k + 1]]
        normal[rays] = shapes[k].normal(origin + t_best[rays, None] * flat[rays])
    return Hits(t_best, index, normal)
