"""Bird's-eye occupancy for planners (Nav2's OccupancyGrid convention) and obstacle voxels for 3D costmaps, from a
semantic voxel grid. No ROS.

Per column (x, y) of the grid, with "ground" the top of the column's highest traversable voxel (road, parking,
sidewalk, ...), or ``ground_z`` (grid frame, metres) when the column shows no traversable voxel:

- occupied (100, or the obstacle's confidence in percent): an obstacle voxel (occupied, not traversable) whose
  bottom lies within ``band`` above the ground (default 0.1-2.0 m: kerbs under 0.1 m and tree canopies or bridges
  above the robot do not block);
- free (0): no such obstacle and at least one traversable voxel in the column;
- unknown (-1): anything else (columns the camera never saw, or with no evidence of ground).

A coarser output (``factor`` > 1 voxels per cell) keeps the most cautious value of each block: occupied if any
voxel column is, else free if any is, else unknown. ``obstacle_voxels`` lists the voxels behind occupied cells, with
a band and class list of their own. Columns are handled as 64-bit layer masks, so grids are limited to 64 layers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import FrozenSet, Optional, Sequence, Tuple

import numpy as np

from scanssc_ros.geometry import GridSpec, unravel_flat
from scanssc_ros.labels import EMPTY, IGNORE
from scanssc_ros.voxels import flat_nonzero

FREE, OCCUPIED, UNKNOWN = 0, 100, -1
_CELL_OF_CODE = np.array([UNKNOWN, FREE, OCCUPIED, OCCUPIED], np.int8)  # by has_ground + 2 * occupied
assert (EMPTY, IGNORE) == (0, 255)  # GroundColumns tells both apart from classes with one uint8 wrap-around
DEFAULT_TRAVERSABLE = ("road", "parking", "sidewalk", "other-ground", "terrain")


@dataclass(frozen=True)
class OccupancyRule:
    traversable: FrozenSet[int]
    band: Tuple[float, float] = (0.1, 2.0)  # metres above the ground
    ground_z: float = -1.73  # grid-frame ground height where a column shows none (KITTI: the LiDAR 1.73 m up)
    factor: int = 1  # voxel columns per cell side
    use_confidence: bool = False  # occupied cells hold round(100 * confidence) instead of 100

    @classmethod
    def from_names(cls, names: Sequence[str], classes: Sequence[str], **kwargs) -> OccupancyRule:
        unknown = [n for n in names if n not in classes[1:]]
        if unknown:
            raise ValueError(f"occupancy: unknown traversable classes {unknown}; known: {', '.join(classes[1:])}")
        return cls(traversable=frozenset(classes.index(n) for n in names), **kwargs)


@dataclass(frozen=True)
class ObstacleFilter:
    """Which voxels go into the obstacle cloud: ``ground`` gives the traversable classes and the default ground
    (shared with the occupancy grid), ``band`` the heights above the ground, ``classes`` the obstacle classes
    (None: every class that is not traversable)."""
    ground: OccupancyRule
    band: Tuple[float, float] = (0.1, 2.0)
    classes: Optional[FrozenSet[int]] = None


class GroundColumns:
    """What every bird's-eye output needs of a grid, per column: traversable and obstacle layers as bits (layer z
    = bit z) and the highest traversable layer. Two dense passes over the voxels; everything after is per column,
    so the occupancy grid and the obstacle cloud share one of these per frame."""

    def __init__(self, labels: np.ndarray, grid: GridSpec, traversable: FrozenSet[int], ground_z: float) -> None:
        X, Y, Z = labels.shape
        if Z > 64:
            raise ValueError(f"bird's-eye outputs pack a column's layers into 64 bits; this grid has {Z} layers")
        self.shape, self.grid, self.ground_z, self.traversable = (X, Y, Z), grid, ground_z, frozenset(traversable)
        cols = np.ascontiguousarray(labels).reshape(X * Y, Z)
        # SIMD comparisons, one pair per run of consecutive class ids (uint8 wrap-around: c - lo < n means
        # lo <= c < lo + n), are ~5x cheaper than a 256-entry lookup over 2 M voxels
        runs = [(cols - np.uint8(lo)) < n if n > 1 else cols == lo for lo, n in _runs(sorted(traversable))]
        trav = functools.reduce(np.logical_or, runs) if runs else np.zeros(cols.shape, bool)
        occupied = (cols - np.uint8(1)) < 254  # neither 0 (empty) nor 255 (unknown)
        self.trav_bits = column_bits(trav)
        self.obst_bits = column_bits(occupied) & ~self.trav_bits  # per column: cheaper than per voxel
        self.top = highest_bit(self.trav_bits)

    @property
    def has_ground(self) -> np.ndarray:
        return self.top >= 0

    def band_bits(self, band: Tuple[float, float]) -> np.ndarray:
        """Per column, the layers whose bottom face lies within ``band`` above the ground: the top face of the
        highest traversable layer, or ``ground_z`` where the column shows none. The mask depends on the column only
        through its top layer, so it is a lookup in a table of Z + 1 masks (index 0: no ground)."""
        Z = self.shape[2]
        vs, z0 = self.grid.voxel_size, self.grid.origin[2]
        top = np.arange(-1, Z)
        ground = np.where(top >= 0, z0 + (top + 1) * vs, self.ground_z)
        k_lo = np.ceil((ground + band[0] - z0) / vs - 1e-6).astype(np.int64)
        k_hi = np.floor((ground + band[1] - z0) / vs + 1e-6).astype(np.int64)
        return np.take(_range_bits(k_lo, k_hi), self.top + 1)

    def layers(self, bits: np.ndarray) -> np.ndarray:
        """(n,) bit sets -> (n, Z) bool (unpacking the little-endian bytes: 8x less work than 64-bit shifts)."""
        n = bits.shape[0]
        as_bytes = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8).reshape(n, 8)
        return np.unpackbits(as_bytes, axis=1, count=self.shape[2], bitorder="little").view(bool)


def occupancy(labels: np.ndarray, grid: GridSpec, rule: OccupancyRule, confidence: Optional[np.ndarray] = None,
              columns: Optional[GroundColumns] = None) -> np.ndarray:
    """(X, Y, Z) uint8 labels -> (X / factor, Y / factor) int8 cells in {-1, 0, 1..100}. ``columns`` may pass the
    frame's GroundColumns (built with this rule's traversable classes and ground_z)."""
    X, Y, Z = labels.shape
    f = rule.factor
    if f > 1 and (X % f or Y % f):
        raise ValueError(f"occupancy factor {f} does not divide the grid {X}x{Y}")
    cols = columns or GroundColumns(labels, grid, rule.traversable, rule.ground_z)
    hit = cols.obst_bits & cols.band_bits(rule.band)
    occupied = hit != 0
    # cell = table[has ground + 2 * occupied]: a lookup, where boolean-mask assignments cost 4x more
    code = cols.has_ground.view(np.uint8) + (occupied.view(np.uint8) << 1)
    out = np.take(_CELL_OF_CODE, code)
    if rule.use_confidence and confidence is not None:
        idx = np.flatnonzero(occupied)
        conf = np.ascontiguousarray(confidence).reshape(X * Y, Z)[idx]
        best = np.where(cols.layers(hit[idx]), conf, 0).max(axis=1)
        out[idx] = np.clip(np.rint(best * 100.0 / 255.0), 1, 100)
    out = out.reshape(X, Y)
    if f > 1:
        blocks = out.reshape(X // f, f, Y // f, f).transpose(0, 2, 1, 3).reshape(X // f, Y // f, f * f)
        # occupied (1..100) beats free (0) beats unknown (-1): the block maximum
        out = blocks.max(axis=2)
    return out


def obstacle_voxels(labels: np.ndarray, grid: GridSpec, rule: OccupancyRule, band: Tuple[float, float],
                    classes: Optional[FrozenSet[int]] = None, columns: Optional[GroundColumns] = None) -> np.ndarray:
    """Flat indices (ascending) of the obstacle voxels (occupied, not traversable under ``rule``; only ``classes``
    when given) whose bottom face lies within ``band`` above their column's ground, as ``occupancy`` measures it."""
    Z = labels.shape[2]
    cols = columns or GroundColumns(labels, grid, rule.traversable, rule.ground_z)
    hit = cols.obst_bits & cols.band_bits(band)
    idx = np.flatnonzero(hit)
    rows, z = unravel_flat(flat_nonzero(cols.layers(hit[idx])), (idx.size, Z))  # 1-D: 5x cheaper than 2-D nonzero
    flat = idx[rows] * Z + z
    if classes is not None:
        wanted = np.zeros(256, bool)
        wanted[list(classes)] = True
        flat = flat[wanted[labels.reshape(-1)[flat]]]
    return flat


def _runs(ids) -> list:
    """Sorted class ids -> [(first id, length)] of their runs of consecutive ids."""
    runs: list = []
    for c in ids:
        if runs and runs[-1][0] + runs[-1][1] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return [tuple(r) for r in runs]


_SPREAD = np.uint64(0x0102040810204080)  # multiplying 8 bytes of 0/1 by this gathers them into the top byte


def column_bits(mask: np.ndarray) -> np.ndarray:
    """(C, Z <= 64) bool -> (C,) uint64 with bit z set where ``mask[:, z]``. Eight layers at a time: a uint64 view
    of 8 bool bytes times ``_SPREAD`` has those bytes as bits 56..63 (3x faster than np.packbits here)."""
    C, Z = mask.shape
    nb = (Z + 7) // 8
    if Z % 8:
        mask = np.concatenate([mask, np.zeros((C, nb * 8 - Z), bool)], axis=1)
    words = (np.ascontiguousarray(mask).view(np.uint64) * _SPREAD) >> np.uint64(56)
    bits = words[:, 0].copy()
    for j in range(1, nb):
        bits |= words[:, j] << np.uint64(8 * j)
    return bits


def highest_bit(bits: np.ndarray) -> np.ndarray:
    """uint64 -> index of the highest set bit, -1 for 0. Below 2^53 a float64 holds the value exactly, so the index is
    its exponent (5x cheaper); above, the top bit is smeared down and the bits counted."""
    bits = np.asarray(bits, np.uint64)
    if not bits.size or bits.max() < np.uint64(1 << 53):
        exponent = (bits.astype(np.float64).view(np.int64) >> 52) - 1023  # 0.0 has exponent field 0: -1023
        return np.maximum(exponent, -1)
    x = bits.copy()
    for s in (1, 2, 4, 8, 16, 32):
        x |= x >> np.uint64(s)
    return np.bitwise_count(x).astype(np.int64) - 1


def _range_bits(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Bits lo..hi (inclusive) set, for lo/hi in any int range (clipped to 0..64)."""
    one, full = np.uint64(1), np.uint64(0xFFFFFFFFFFFFFFFF)

    def below(k: np.ndarray) -> np.ndarray:  # bits 0..k-1; a shift by 64 is undefined, so k = 64 is spelt out
        k = np.clip(k, 0, 64).astype(np.uint64)
        return np.where(k >= 64, full, (one << np.minimum(k, np.uint64(63))) - one)

    return below(hi + 1) & ~below(lo)


def occupancy_data(cells: np.ndarray) -> np.ndarray:
    """(X, Y) cells -> OccupancyGrid.data order: row-major with the map x axis (grid x, forward) fastest."""
    return np.ascontiguousarray(cells.T).reshape(-1)
