"""Voxel grids as quad meshes, numpy only: the geometry behind the open3d renders and the ``.ply`` voxel export.

Only faces between an occupied voxel and a non-occupied neighbour (or the grid border) are built: a road of
10k voxels is then ~10k top faces instead of 120k triangles of closed cubes, which is what keeps a software
renderer fast. Each face has its own four vertices so that it can carry a flat colour (the shading of a face
depends on which way it points, see ``FACE_SHADE``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from scanssc_ros.geometry import GridSpec
from scanssc_ros.voxels import neighbour

# the six face directions (axis, sign) and their corner offsets, counter-clockwise seen from outside
_DIRECTIONS = ((0, -1), (0, 1), (1, -1), (1, 1), (2, -1), (2, 1))
_QUADS = np.array([
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]],  # -x
    [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 1]],  # +x
    [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]],  # -y
    [[0, 1, 0], [0, 1, 1], [1, 1, 1], [1, 1, 0]],  # +y
    [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]],  # -z
    [[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],  # +z
], np.float32)
# Brightness per face direction, baked into the vertex colours so an unlit (cheap) shader still shows cubes:
# tops brightest, the faces a viewer behind the car sees (-x) next, the two sides apart from each other.
FACE_SHADE = np.array([0.80, 0.55, 0.62, 0.70, 0.45, 1.0], np.float32)


@dataclass
class QuadMesh:
    vertices: np.ndarray  # (4F, 3) float32, grid frame (metres)
    triangles: np.ndarray  # (2F, 3) int32
    voxel: np.ndarray  # (F, 3) int: the voxel each face belongs to
    direction: np.ndarray  # (F,) int: index into _DIRECTIONS

    def __len__(self) -> int:
        return len(self.voxel)


def exposed_faces(occupied: np.ndarray, grid: GridSpec, scale: float = 1.0) -> QuadMesh:
    """Faces of the ``occupied`` voxels that border a non-occupied voxel or the grid's edge. ``scale`` < 1 shrinks
    every cube about its centre (gaps show that the voxels are samples, e.g. LiDAR-sparse ground truth)."""
    occ = np.asarray(occupied, bool)
    every = np.argwhere(occ) if scale < 1.0 else None  # shrunken cubes show all six faces
    voxels, dirs = [], []
    for k, (axis, sign) in enumerate(_DIRECTIONS):
        idx = every if every is not None else np.argwhere(occ & ~neighbour(occ, axis, sign))
        voxels.append(idx)
        dirs.append(np.full(len(idx), k, np.int8))
    voxel = np.concatenate(voxels)
    direction = np.concatenate(dirs)
    corners = _QUADS[direction]  # (F, 4, 3) in voxel units from the min corner
    if scale < 1.0:
        corners = 0.5 + (corners - 0.5) * scale
    vs = np.float32(grid.voxel_size)
    vertices = (np.asarray(grid.origin, np.float32) + (voxel[:, None, :] + corners) * vs).reshape(-1, 3)
    return QuadMesh(vertices.astype(np.float32), quad_triangles(len(voxel)), voxel, direction)


def floor_quads(columns: np.ndarray, grid: GridSpec, z: Optional[float] = None) -> np.ndarray:
    """(Q, 4, 3) horizontal quads covering the True cells of a (X, Y) mask at height ``z`` (default: the grid's
    bottom), one quad per run of consecutive cells along y: far fewer than one per cell."""
    cols = np.asarray(columns, bool)
    padded = np.zeros((cols.shape[0], cols.shape[1] + 2), bool)
    padded[:, 1:-1] = cols
    edge = np.diff(padded.astype(np.int8), axis=1)
    rows_start, y_start = np.nonzero(edge == 1)
    rows_end, y_end = np.nonzero(edge == -1)  # same row order as the starts: runs alternate within a row
    assert np.array_equal(rows_start, rows_end)
    vs = grid.voxel_size
    x0 = grid.origin[0] + rows_start * vs
    y0, y1 = grid.origin[1] + y_start * vs, grid.origin[1] + y_end * vs
    zz = np.full(len(x0), grid.origin[2] if z is None else z)
    quads = np.stack([np.stack([x0, y0, zz], 1), np.stack([x0 + vs, y0, zz], 1),
                      np.stack([x0 + vs, y1, zz], 1), np.stack([x0, y1, zz], 1)], 1)
    return quads.astype(np.float32)


def quad_triangles(n: int) -> np.ndarray:
    """Two triangles per quad for ``n`` quads of four consecutive vertices each."""
    base = np.arange(n, dtype=np.int32)[:, None] * 4
    return np.concatenate([base + [0, 1, 2], base + [0, 2, 3]], axis=1).reshape(-1, 3).astype(np.int32)
