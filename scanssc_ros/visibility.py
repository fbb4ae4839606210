"""Which voxels a sensor at one point sees, given which voxels are occupied: open3d ray casting (Embree).

A voxel is *visible* when the straight line from the sensor to its centre passes through no other occupied voxel
before entering it: occupied voxels on the seen surface, and the free space in front of it. Everything else is
hidden behind something (or the sensor sits inside an occupied voxel). One ray per queried voxel against the
exposed faces of the occupied voxels: all 2M voxels of a 256x256x32 grid (seq 08 frame 0, ten scans merged)
took 7 s on the project's shared 2-core machine, where the Python voxel walk the tests compare against would
take many minutes. Needs open3d (``requirements/viz.txt``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from scanssc_ros.geometry import GridSpec, voxel_centers
from scanssc_ros.voxel_mesh import exposed_faces, quad_triangles

_SLACK = 1e-4  # of the sensor-to-centre distance: float32 hits on a voxel's own entry face must not count as cover


def visible_voxels(occupied: np.ndarray, grid: GridSpec, sensor: Sequence[float],
                   query: Optional[np.ndarray] = None) -> np.ndarray:
    """(X, Y, Z) bool: visible voxels (module docstring); ``query`` limits the rays to those voxels (others False)."""
    import open3d as o3d

    occ = np.asarray(occupied, bool)
    todo = np.flatnonzero(np.ones(occ.size, bool) if query is None else np.asarray(query, bool).reshape(-1))
    out = np.zeros(occ.size, bool)
    if len(todo) == 0:
        return out.reshape(occ.shape)
    faces = exposed_faces(occ, grid)
    if len(faces) == 0:
        out[todo] = True
        return out.reshape(occ.shape)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(faces.vertices), o3d.core.Tensor(quad_triangles(len(faces)).astype(np.uint32)))
    origin = np.asarray(sensor, np.float64)
    delta = voxel_centers(grid).reshape(-1, 3)[todo].astype(np.float64) - origin  # t = 1 at the centre
    rays = np.concatenate([np.broadcast_to(origin, delta.shape), delta], axis=1).astype(np.float32)
    t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    out[todo] = t_hit >= entry_fraction(delta, grid.voxel_size / 2) - _SLACK
    return out.reshape(occ.shape)


def entry_fraction(delta: np.ndarray, half: float) -> np.ndarray:
    """Fraction of the way from the sensor to a voxel centre (offsets ``delta`` (N, 3)) where the line enters the
    voxel's cube (0 when the sensor is inside it)."""
    a = np.abs(delta)
    return np.maximum(((a - half) / np.maximum(a, half)).max(axis=1), 0.0)
