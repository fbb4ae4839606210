""".ply export of label grids (issue 16): round trips through our reader and open3d's (voxel count, labels,
colours)."""
from __future__ import annotations

import numpy as np
import pytest

from scanssc_ros.geometry import GridSpec
from scanssc_ros.labels import IGNORE, SEMANTIC_KITTI
from scanssc_ros.ply_export import points_to_grid, read_ply, write_ply
from scanssc_ros.voxel_mesh import exposed_faces
from scanssc_ros.voxels import occupied_mask

GRID = GridSpec((0.0, -6.4, -2.0), 0.2, (64, 64, 16))
COLORS = SEMANTIC_KITTI.color_table()


def _labels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice([0, 0, 0, 0, IGNORE, 1, 9, 11, 15], size=GRID.dims).astype(np.uint8)


def test_points_round_trip(tmp_path):
    labels = _labels()
    path = write_ply(tmp_path / "g.ply", labels, GRID, COLORS, SEMANTIC_KITTI.classes)
    ply = read_ply(path)
    occupied = occupied_mask(labels)
    assert len(ply.vertices) == occupied.sum() and ply.triangles is None
    assert ply.grid == GRID and list(ply.class_names) == list(SEMANTIC_KITTI.classes)
    assert np.array_equal(points_to_grid(ply), np.where(occupied, labels, 0))  # empty and unknown come back as 0
    assert np.array_equal(ply.colors, COLORS[ply.labels])
    assert path.stat().st_size < 600 + 16 * len(ply.vertices)  # header + 16 bytes per voxel


def test_open3d_reads_points_and_mesh(tmp_path):
    o3d = pytest.importorskip("open3d", reason="open3d not installed (`make setup` installs open3d-cpu)")
    labels = _labels(1)
    points = write_ply(tmp_path / "p.ply", labels, GRID, COLORS)
    ours = read_ply(points)
    cloud = o3d.io.read_point_cloud(str(points))
    assert len(cloud.points) == occupied_mask(labels).sum()
    assert np.allclose(np.asarray(cloud.points), ours.vertices, atol=1e-6)
    assert np.array_equal(np.rint(np.asarray(cloud.colors) * 255).astype(np.uint8), ours.colors)
    tensor = o3d.t.io.read_point_cloud(str(points))  # keeps the extra per-vertex property
    assert np.array_equal(tensor.point["label"].numpy().ravel(), ours.labels)

    mesh_path = write_ply(tmp_path / "m.ply", labels, GRID, COLORS, form="mesh")
    mesh = o3d.io.read_triangle_mesh(str(mesh_path))
    faces = len(exposed_faces(occupied_mask(labels), GRID))
    assert len(mesh.vertices) == 4 * faces and len(mesh.triangles) == 2 * faces
    assert np.array_equal(np.asarray(mesh.triangles), read_ply(mesh_path).triangles)
