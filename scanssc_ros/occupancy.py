"""Bird's-eye occupancy for planners (Nav2's OccupancyGrid convention) from a semantic voxel grid. No ROS.

Per column (x, y) of the grid, with "ground" the top of the column's highest traversable voxel (road, parking,
sidewalk, ...), or ``ground_z`` (grid frame, metres) when the column shows no traversable voxel:

- occupied (100, or the obstacle's confidence in percent): an obstacle voxel (occupied, not traversable) whose
  bottom lies within ``band`` above the ground (default 0.1-2.0 m: kerbs under 0.1 m and tree canopies or bridges
  above the robot do not block);
- free (0): no such obstacle and at least one traversable voxel in the column;
- unknown (-1): anything else (columns the camera never saw, or with no evidence of ground).

A coarser output (``factor`` > 1 voxels per cell) keeps the most cautious value of each block: occupied if any
voxel column is, else free if any is, else unknown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Optional, Sequence, Tuple

import numpy as np

from scanssc_ros.geometry import GridSpec
from scanssc_ros.labels import EMPTY, IGNORE

FREE, OCCUPIED, UNKNOWN = 0, 100, -1
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


def occupancy(labels: np.ndarray, grid: GridSpec, rule: OccupancyRule,
              confidence: Optional[np.ndarray] = None) -> np.ndarray:
    """(X, Y, Z) uint8 labels -> (X / factor, Y / factor) int8 cells in {-1, 0, 1..100}."""
    X, Y, Z = labels.shape
    vs, z0 = grid.voxel_size, grid.origin[2]
    trav = np.zeros(256, bool)
    trav[list(rule.traversable)] = True
    obst = ~trav
    obst[[EMPTY, IGNORE]] = False
    is_trav = trav[labels]
    # ground: top face of the highest traversable voxel of the column
    top = Z - 1 - np.argmax(is_trav[:, :, ::-1], axis=2)
    has_ground = is_trav.any(axis=2)
    ground = np.where(has_ground, z0 + (top + 1) * vs, rule.ground_z)
    # layers whose bottom face lies in the band, as an index range per column (no float height per voxel)
    k_lo = np.ceil((ground + rule.band[0] - z0) / vs - 1e-6).astype(np.int16)
    k_hi = np.floor((ground + rule.band[1] - z0) / vs + 1e-6).astype(np.int16)
    k = np.arange(Z, dtype=np.int16)
    in_band = obst[labels] & (k >= k_lo[:, :, None]) & (k <= k_hi[:, :, None])
    occupied = in_band.any(axis=2)
    out = np.full((X, Y), UNKNOWN, np.int16)
    out[has_ground] = FREE
    if rule.use_confidence and confidence is not None:
        conf = np.where(in_band, confidence, 0).max(axis=2).astype(np.int32)
        out[occupied] = np.clip(np.rint(conf[occupied] * 100.0 / 255.0), 1, 100)
    else:
        out[occupied] = OCCUPIED
    f = rule.factor
    if f > 1:
        if X % f or Y % f:
            raise ValueError(f"occupancy factor {f} does not divide the grid {X}x{Y}")
        blocks = out.reshape(X // f, f, Y // f, f).transpose(0, 2, 1, 3).reshape(X // f, Y // f, f * f)
        # occupied (1..100) beats free (0) beats unknown (-1): the block maximum
        out = blocks.max(axis=2)
    return out.astype(np.int8)


def occupancy_data(cells: np.ndarray) -> np.ndarray:
    """(X, Y) cells -> OccupancyGrid.data order: row-major with the map x axis (grid x, forward) fastest."""
    return np.ascontiguousarray(cells.T).reshape(-1)
