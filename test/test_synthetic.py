"""Synthetic SemanticKITTI generator: geometry against slow references, sensor consistency, files and reader.

Everything runs at half KITTI resolution on a few frames (about 20 s in all on a loaded 2-core machine).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scanssc_ros.cli import synth as synth_cli
from scanssc_ros.data import raycast, synthetic, synthetic_sensors
from scanssc_ros.data.depth import stereo_depth
from scanssc_ros.data.labels_io import load_label_config, read_point_labels, read_scan
from scanssc_ros.data.semantickitti import SemanticKittiDataset
from scanssc_ros.data.synthetic_scene import RAW_OF_TRAIN, generate_scene
from scanssc_ros.geometry import (
    SEMANTIC_KITTI_GRID,
    kitti_camera,
    points_to_voxels,
    project_points,
    read_kitti_calib,
    read_kitti_poses,
    stereo_baseline,
    transform_points,
    velo_to_velo,
)

SCALE = 0.5
SEED = 7


# ----------------------------------------------------------------------------------------- slow references
def _ref_box(box: raycast.Box, o: np.ndarray, d: np.ndarray):
    """Nearest face-plane crossing inside its face rectangle, one ray at a time."""
    c, s = math.cos(box.yaw), math.sin(box.yaw)
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # world -> box frame
    o_l, d_l = rot @ (o - np.asarray(box.center)), rot @ d
    best, normal = math.inf, None
    for axis in range(3):
        for sign in (-1.0, 1.0):
            if d_l[axis] == 0:
                continue
            t = (sign * box.half[axis] - o_l[axis]) / d_l[axis]
            p = o_l + t * d_l
            on_face = all(abs(p[k]) <= box.half[k] + 1e-12 for k in range(3) if k != axis)
            if t > 0 and on_face and t < best:
                n = np.zeros(3)
                n[axis] = sign
                best, normal = t, rot.T @ n
    return best, normal


def _random_rays(rng: np.random.Generator, target: np.ndarray, n: int):
    origin = target + rng.uniform(-12, 12, 3)
    origin[2] = target[2] + rng.uniform(2, 6) * rng.choice([-1, 1])
    aim = target + rng.normal(0, 1.5, (n, 3))
    return origin, (aim - origin) * rng.uniform(0.5, 2.0, (n, 1))  # lengths other than 1: t in those units


def test_box_intersection_matches_per_ray_reference():
    rng = np.random.default_rng(0)
    hits = 0
    for yaw in (0.0, 0.4, -1.2):
        box = raycast.Box((3.0, -2.0, 0.5), (2.0, 0.7, 1.1), yaw)
        origin, dirs = _random_rays(rng, np.asarray(box.center), 40)
        fast = box.intersect(origin, dirs)
        for k in range(len(dirs)):
            t, n = _ref_box(box, origin, dirs[k])
            if math.isinf(t):
                assert math.isinf(fast[k])
                continue
            hits += 1
            assert fast[k] == pytest.approx(t, rel=1e-9)
            assert np.allclose(box.normal((origin + t * dirs[k])[None])[0], n, atol=1e-9)
    assert 30 < hits < 110  # both hits and misses were exercised


def test_cylinder_and_sphere_hits_lie_on_the_surface():
    rng = np.random.default_rng(1)
    cyl, sph = raycast.Cylinder(1.0, 2.0, 0.4, -1.0, 2.0), raycast.Sphere((1.0, 2.0, 0.0), 1.3)
    for shape in (cyl, sph):
        origin, dirs = _random_rays(rng, np.array([1.0, 2.0, 0.5]), 200)
        t = shape.intersect(origin, dirs)
        hit = np.isfinite(t)
        assert 20 < hit.sum() < 200
        p = origin + t[hit, None] * dirs[hit]
        if shape is cyl:
            rho = np.hypot(p[:, 0] - 1.0, p[:, 1] - 2.0)
            on = (np.abs(rho - 0.4) < 1e-9) | ((np.abs(p[:, 2] - 2.0) < 1e-9) | (np.abs(p[:, 2] + 1.0) < 1e-9))
            assert on.all() and (rho <= 0.4 + 1e-9).all()
        else:
            assert np.allclose(np.linalg.norm(p - np.array(sph.center), axis=1), 1.3)
        # nothing of the solid lies on the ray before the hit: sample the segment and test containment
        for frac in np.linspace(0.0, 0.999, 25):
            q = origin + frac * t[hit, None] * dirs[hit]
            inside = shape.overlaps(q - 1e-9, q + 1e-9) if shape is sph else (
                (np.hypot(q[:, 0] - 1.0, q[:, 1] - 2.0) < 0.4 - 1e-6) & (q[:, 2] > -1.0 + 1e-6) & (q[:, 2] < 2 - 1e-6))
            assert not inside.any()


def _contains(shape, pts: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Points strictly inside the solid grown by ``margin``."""
    if isinstance(shape, raycast.Sphere):
        return np.linalg.norm(pts - np.asarray(shape.center), axis=1) < shape.radius + margin
    if isinstance(shape, raycast.Cylinder):
        return ((np.hypot(pts[:, 0] - shape.x, pts[:, 1] - shape.y) < shape.radius + margin)
                & (pts[:, 2] > shape.z0 - margin) & (pts[:, 2] < shape.z1 + margin))
    c, s = math.cos(shape.yaw), math.sin(shape.yaw)
    d = pts - np.asarray(shape.center)
    loc = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    return (np.abs(loc) < np.asarray(shape.half) + margin).all(1)


def test_voxel_overlap_matches_dense_sampling():
    """Cells overlap a solid exactly when dense samples say so, up to the sampling resolution: every cell with a
    sample inside the solid is flagged, and every flagged cell has a sample within one sample spacing of it."""
    cells = np.stack(np.meshgrid(*[np.arange(-2.0, 2.0, 0.2)] * 3, indexing="ij"), -1)
    lo, hi = cells, cells + 0.2
    n = 8
    sub = (np.arange(n) + 0.5) / n * 0.2  # n^3 samples strictly inside each cell
    pts = (lo[..., None, None, None, :] + np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1)).reshape(-1, 3)
    reach = 0.2 / n * math.sqrt(3) / 2  # every point of a cell is this close to one of its samples
    shapes = [raycast.Box((0.13, -0.31, 0.07), (1.1, 0.45, 0.6), 0.5), raycast.Box((0.1, 0.1, 0.1), (0.5, 0.7, 0.3)),
              raycast.Cylinder(0.05, -0.2, 0.63, -0.9, 1.2), raycast.Sphere((0.2, 0.1, -0.3), 1.05)]
    for shape in shapes:
        fast = shape.overlaps(lo, hi)
        inside = _contains(shape, pts).reshape(*lo.shape[:3], -1).any(-1)
        near = _contains(shape, pts, reach + 1e-9).reshape(*lo.shape[:3], -1).any(-1)
        assert inside.sum() > 50 and not (inside & ~fast).any() and not (fast & ~near).any()


def test_tiled_cast_equals_brute_force():
    scene = generate_scene(3)
    parts = scene.at_frame(0)
    shapes = [p.shape for p in parts]
    K, T = kitti_camera(synthetic.kitti_calib(0.2), "P2")
    bundles = [synthetic_sensors.camera_rays(K, T, synthetic.image_size(0.2)) + (np.inf,),
               (np.zeros(3), synthetic.LidarSpec(azimuths=256).directions(), 80.0)]
    for origin, dirs, t_max in bundles:
        hits = raycast.cast(shapes, origin, dirs, t_max=t_max)
        flat = dirs.reshape(-1, 3)
        best, index = np.full(len(flat), np.inf), np.full(len(flat), -1)
        for k, shape in enumerate(shapes):
            t = shape.intersect(origin, flat)
            better = (t < best) & (t <= t_max)
            best[better], index[better] = t[better], k
        assert np.array_equal(hits.index, index) and np.array_equal(hits.t, best)
        assert 0.2 < (index >= 0).mean() < 1.0


# ------------------------------------------------------------------------------------------------- scenes
def test_scene_is_deterministic_and_keeps_the_ego_lane_clear():
    a, b, c = generate_scene(11, frames=30), generate_scene(11, frames=30), generate_scene(12, frames=30)
    assert a.parts == b.parts and a.parts != c.parts
    seen = set()
    for seed in range(8):
        scene = generate_scene(seed, frames=30)
        labels = {p.label for p in scene.parts}
        assert {9, 11, 17, 18}.issubset(labels)  # road, sidewalk, terrain, pole in every layout
        seen |= labels
        for j in (0, 15, 29):
            for p in scene.at_frame(j):
                lo, hi = p.shape.bounds()
                blocked = lo[0] < 3.0 and hi[0] > -3.0 and lo[1] < 1.0 and hi[1] > -1.0 and hi[2] > -1.4
                assert not blocked, (seed, j, p)
    assert seen == {1, 4, 6, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19}  # all the classes the generator knows


@pytest.fixture(scope="module")
def frame():
    return synthetic.render_frame(generate_scene(synthetic.scene_seed(SEED, "00", 0), 2), 0, SCALE)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthetic.write_sequence(root, "00", 2, seed=SEED, scale=SCALE, frames_per_scene=2)
    return root


def test_lidar_points_agree_with_rendered_depth(frame):
    K, T = kitti_camera(synthetic.kitti_calib(SCALE), "P2")
    uv, z = project_points(frame.points[:, :3].astype(np.float64), K, T)
    u, v = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    h, w = frame.depth.shape
    ok = (z > 1.0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    assert ok.sum() > 10000
    rel = np.abs(frame.depth[v[ok], u[ok]] - z[ok]) / z[ok]
    # the nearest pixel's ray is up to half a pixel off the point's; occlusion edges differ between the sensors
    assert np.median(rel) < 0.01 and np.mean(rel < 0.05) > 0.9


def test_voxel_labels_agree_with_point_labels(frame):
    cfg_train = np.zeros(1 << 16, np.uint8)
    for raw, _, train in synthetic.RAW_LABELS:
        cfg_train[raw] = train
    idx, inside = points_to_voxels(frame.points[:, :3].astype(np.float64), SEMANTIC_KITTI_GRID)
    point = cfg_train[frame.point_labels[inside] & 0xFFFF]
    voxel = frame.voxel_labels[tuple(idx[inside].T)]
    assert inside.sum() > 20000 and np.mean(point == voxel) > 0.95
    assert not frame.invalid[tuple(idx[inside].T)].any()  # a voxel holding a return was observed


def test_invalid_mask_marks_unobserved_space(frame):
    grid = SEMANTIC_KITTI_GRID
    inv = frame.invalid
    assert 0.2 < inv.mean() < 0.9
    ix = lambda x: int((x - grid.origin[0]) / grid.voxel_size)  # noqa: E731
    iy = lambda y: int((y - grid.origin[1]) / grid.voxel_size)  # noqa: E731
    assert not inv[ix(3.0):ix(8.0), iy(-0.5):iy(0.5), 10:14].any()  # the air just ahead of the sensors
    building = frame.voxel_labels == 13
    interior = building.copy()
    for axis in range(3):  # voxels 3 deep inside a building are seen by nobody
        for shift in (-3, 3):
            interior &= np.roll(building, shift, axis)
    assert interior.any() and inv[interior].mean() > 0.99


def test_sgbm_recovers_the_rendered_depth(frame):
    calib = synthetic.kitti_calib(SCALE)
    sgbm = stereo_depth(frame.left, frame.right, calib["P2"][0, 0], stereo_baseline(calib["P2"], calib["P3"]))
    near = (frame.depth > 0) & (frame.depth < 20.0)
    both = near & (sgbm > 0)
    assert both.sum() > 0.5 * near.sum()
    err = np.abs(sgbm[both] - frame.depth[both])
    assert np.median(err) < 0.25 and np.median(err / frame.depth[both]) < 0.03


# -------------------------------------------------------------------------------------------------- files
def test_write_is_deterministic_and_seed_dependent(dataset_root, tmp_path):
    again = tmp_path / "again"
    synthetic.write_sequence(again, "00", 2, seed=SEED, scale=SCALE, frames_per_scene=2)
    files = sorted(p.relative_to(dataset_root) for p in dataset_root.rglob("*") if p.is_file())
    assert len(files) == 1 + 3 + 2 * 7  # yaml, calib/poses/times, 7 files per frame
    for rel in files:
        assert (dataset_root / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    assert synth_cli.main(["--out", str(other), "--sequences", "00", "--frames", "1", "--seed", str(SEED + 1),
                           "--size", "small", "--quiet"]) == 0
    for rel in ("velodyne/000000.bin", "image_2/000000.png", "voxels/000000.label"):
        a, b = dataset_root / "sequences/00" / rel, other / "sequences/00" / rel
        assert a.read_bytes() != b.read_bytes(), rel


def test_written_frame_matches_render_and_reader(dataset_root, frame):
    seq = dataset_root / "sequences" / "00"
    cfg = load_label_config(dataset_root / "semantic-kitti.yaml")
    assert np.array_equal(cfg.learning_map_inv, RAW_OF_TRAIN) and cfg.learning_map[252] == 1
    assert np.array_equal(read_scan(seq / "velodyne" / "000000.bin"), frame.points)
    raw, inst = read_point_labels(seq / "labels" / "000000.label")
    assert np.array_equal(raw, frame.point_labels & 0xFFFF) and inst.max() > 0
    calib = read_kitti_calib(seq / "calib.txt")
    for key, value in synthetic.kitti_calib(SCALE).items():
        assert np.allclose(calib[key], value, rtol=1e-9, atol=1e-12)
    ds = SemanticKittiDataset(dataset_root, frames=[("00", "000000"), ("00", "000001")], target_source="voxel_label")
    sample = ds[0]
    target = sample.target.numpy()
    assert np.array_equal(target[~frame.invalid], frame.voxel_labels[~frame.invalid])
    assert (target[frame.invalid] == 255).all() and sample.invalid.any()
    classes = set(np.unique(target).tolist()) - {0, 255}
    assert len(classes) >= 6
    assert (sample.lidar_depth > 0).sum() > 1000 and sample.image.shape == (3, 384, 1280)


def test_poses_move_static_points_onto_the_previous_frame(dataset_root):
    """Frames of one drive: frame 1's static points, moved by poses.txt, hit frame 0's voxels of their class."""
    seq = dataset_root / "sequences" / "00"
    cfg = load_label_config(dataset_root / "semantic-kitti.yaml")
    poses = read_kitti_poses(seq / "poses.txt")
    Tr = read_kitti_calib(seq / "calib.txt")["Tr"]
    pts = read_scan(seq / "velodyne" / "000001.bin")[:, :3].astype(np.float64)
    raw = read_point_labels(seq / "labels" / "000001.label")[0]
    static = raw < 252
    moved = transform_points(velo_to_velo(poses[1], poses[0], Tr), pts[static])
    assert np.allclose(moved[:, 0] - pts[static, 0], 0.8, atol=1e-3)
    labels0 = cfg.to_train(np.fromfile(seq / "voxels" / "000000.label", np.uint16)).reshape(SEMANTIC_KITTI_GRID.dims)
    idx, inside = points_to_voxels(moved, SEMANTIC_KITTI_GRID)
    agree = labels0[tuple(idx[inside].T)] == cfg.to_train(raw[static][inside])
    assert inside.sum() > 20000 and agree.mean() > 0.95
