"""Sparse ground truth from labelled points: majority vote vs a loop reference, and the real v1.0 voxels."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from scanssc_ros.data import sparse_gt
from scanssc_ros.data.labels_io import load_label_config, read_packed_voxels, read_scan
from scanssc_ros.geometry import GridSpec, read_kitti_calib, read_kitti_poses, transform_points, velo_to_velo

SMALL = GridSpec(origin=(0.0, -1.6, -0.8), voxel_size=0.4, dims=(8, 8, 4))


def ref_voxelize(points, labels, grid):
    votes = defaultdict(Counter)
    occupied = set()
    for p, lab in zip(points, labels):
        idx = tuple(int(np.floor((p[k] - grid.origin[k]) / grid.voxel_size)) for k in range(3))
        if not all(0 <= idx[k] < grid.dims[k] for k in range(3)):
            continue
        occupied.add(idx)
        if lab != 255:
            votes[idx][int(lab)] += 1
    out = np.zeros(grid.dims, np.uint8)
    for idx in occupied:
        if votes[idx]:
            best = max(votes[idx].values())
            out[idx] = min(c for c, n in votes[idx].items() if n == best)
        else:
            out[idx] = 255
    return out


def test_voxelize_matches_loop_reference():
    rng = np.random.default_rng(0)
    n = 3000
    lo, hi = np.array(SMALL.origin), np.array(SMALL.upper)
    points = rng.uniform(lo - 0.5, hi + 0.5, size=(n, 3))  # some outside the grid
    labels = rng.integers(0, 4, size=n).astype(np.uint8)
    labels[rng.random(n) < 0.2] = 255
    got = sparse_gt.voxelize_train_labels(points, labels, SMALL)
    assert np.array_equal(got, ref_voxelize(points, labels, SMALL))
    assert (got == 255).any() and (got == 0).any()


def test_tie_ignore_and_empty_rules():
    v = SMALL.voxel_size
    centre = lambda i, j, k: np.array(SMALL.origin) + (np.array([i, j, k]) + 0.5) * v  # noqa: E731
    points = np.array([centre(1, 1, 1)] * 4 + [centre(2, 2, 2)] * 3 + [centre(3, 3, 3)] * 2)
    labels = np.array([3, 3, 2, 2, 255, 255, 1, 255, 255], np.uint8)
    got = sparse_gt.voxelize_train_labels(points, labels, SMALL)
    assert got[1, 1, 1] == 2  # 2 votes each: smaller id wins
    assert got[2, 2, 2] == 1  # ignored points do not vote
    assert got[3, 3, 3] == 255  # only ignored points: occupied, class unknown
    assert (got > 0).sum() == 3


def test_sparse_ground_truth_maps_and_invalid(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "labels: {0: u, 10: car}\ncolor_map: {0: [0,0,0], 10: [1,2,3]}\nlearning_map: {0: 0, 1: 0, 10: 1}\n"
        "learning_map_inv: {0: 0, 1: 10}\nlearning_ignore: {0: true, 1: false}\n")
    cfg = load_label_config(tmp_path / "c.yaml")
    pts = np.array([[0.1, -1.5, -0.7], [0.5, -1.5, -0.7], [0.9, -1.5, -0.7]])
    raw = np.array([(7 << 16) | 10, 1, 10], np.uint32)  # car with an instance id, outlier, car
    invalid = np.zeros(SMALL.dims, bool)
    invalid[2, 0, 0] = True
    invalid[5, 5, 3] = True
    got = sparse_gt.sparse_ground_truth(pts, raw, cfg, invalid, SMALL)
    assert got[0, 0, 0] == 1 and got[1, 0, 0] == 255 and got[2, 0, 0] == 255 and got[5, 5, 3] == 255
    assert (got[invalid] == 255).all() and (got == 0).sum() == SMALL.num_voxels - 4


@pytest.mark.parametrize("ignore_line", ["learning_ignore: {0: true, 1: false}\n", ""])
def test_points_of_train_id_zero_never_make_a_voxel_empty(tmp_path, ignore_line):
    """Points labelled unlabeled / outlier / other-structure / other-object (learning_map -> 0) leave their voxel
    unknown (255), as the benchmark's voxel rule does for those raw ids, and never outvote a class; with or
    without learning_ignore in the yaml."""
    (tmp_path / "c.yaml").write_text(
        "labels: {0: u, 10: car}\ncolor_map: {0: [0,0,0], 10: [1,2,3]}\n"
        "learning_map: {0: 0, 1: 0, 10: 1, 52: 0, 99: 0}\nlearning_map_inv: {0: 0, 1: 10}\n" + ignore_line)
    cfg = load_label_config(tmp_path / "c.yaml")
    v = SMALL.voxel_size
    centre = lambda i: np.array(SMALL.origin) + (np.array([i, 0, 0]) + 0.5) * v  # noqa: E731
    pts = np.array([centre(0), centre(1), centre(2), centre(3), centre(4), centre(4), centre(4)])
    raw = np.array([0, 1, 52, 99, 52, 99, 10], np.uint32)
    got = sparse_gt.sparse_ground_truth(pts, raw, cfg, None, SMALL)
    assert got[:4, 0, 0].tolist() == [255, 255, 255, 255]
    assert got[4, 0, 0] == 1  # one car point against two unlabeled ones
    assert (got == 0).sum() == SMALL.num_voxels - 5


def test_accumulate_scans_and_velo_to_velo():
    rng = np.random.default_rng(1)
    Tr = np.eye(4)
    Tr[:3, :3] = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]])  # velodyne -> camera axes, KITTI style
    Tr[:3, 3] = [0.1, -0.2, 0.3]
    pose0, pose1 = np.eye(4), np.eye(4)
    pose1[:3, 3] = [0.0, 0.0, 2.0]  # camera 1 is 2 m further forward (camera z) than camera 0
    T = velo_to_velo(pose1, pose0, Tr)
    # a point 5 m ahead of the LiDAR in frame 1 is 7 m ahead in frame 0
    p = transform_points(T, np.array([[5.0, 0.0, 0.0]]))
    assert np.allclose(p, [[7.0, 0.0, 0.0]], atol=1e-9)
    assert np.allclose(velo_to_velo(pose1, pose1, Tr), np.eye(4))
    s0, s1 = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    pts, labs = sparse_gt.accumulate_scans([s0, s1], [np.zeros(5), np.ones(3)], [np.eye(4), T])
    assert pts.shape == (8, 3) and labs.tolist() == [0] * 5 + [1] * 3
    assert np.allclose(pts[5:], transform_points(T, s1[:, :3]), atol=1e-5)


# ----------------------------------------------------------------------------------------------- real data
@pytest.mark.parametrize("frame", [0, 5])
def test_real_voxelized_scan_matches_shifted_voxels(kitti_seq, frame):
    scan = read_scan(kitti_seq / "velodyne" / f"{frame:06d}.bin")
    occ = sparse_gt.voxel_occupancy(scan)
    stored = read_packed_voxels(kitti_seq / "voxels" / f"{frame:06d}.bin")
    shifted = sparse_gt.read_voxel_mask(kitti_seq / "voxels" / f"{frame:06d}.bin", v1_z_shift=True, fill=False)
    assert sparse_gt.occupancy_iou(occ, stored) < 0.3
    assert sparse_gt.occupancy_iou(occ, shifted) >= 0.98


def test_real_sparse_gt_and_multiscan(shared_data, kitti_seq):
    cfg = load_label_config(shared_data / "semantickitti-mini" / "semantic-kitti.yaml")
    single, invalid = sparse_gt.sequence_sparse_gt(kitti_seq, 0, cfg, v1_z_shift=True)
    assert single.shape == (256, 256, 32) and invalid is not None and (single[invalid] == 255).all()
    assert (single == 1).sum() > 100  # frame 0 has three cars in view
    assert set(np.unique(single)) <= set(range(20)) | {255}
    merged, _ = sparse_gt.sequence_sparse_gt(kitti_seq, 0, cfg, offsets=range(0, 10, 2), v1_z_shift=True)
    occupied = lambda gt: np.count_nonzero((gt != 0) & ~invalid)  # noqa: E731
    assert occupied(merged) > 1.2 * occupied(single)


def test_real_poses_align_consecutive_scans(kitti_seq):
    poses = read_kitti_poses(kitti_seq / "poses.txt")
    Tr = read_kitti_calib(kitti_seq / "calib.txt")["Tr"]
    assert poses.shape[1:] == (4, 4) and np.allclose(poses[0], np.eye(4), atol=1e-6)
    occ0 = sparse_gt.voxel_occupancy(read_scan(kitti_seq / "velodyne" / "000000.bin"))
    scan5 = read_scan(kitti_seq / "velodyne" / "000005.bin")[:, :3]
    aligned = sparse_gt.voxel_occupancy(transform_points(velo_to_velo(poses[5], poses[0], Tr), scan5))
    raw = sparse_gt.voxel_occupancy(scan5)
    assert sparse_gt.occupancy_iou(aligned, occ0) > 2 * sparse_gt.occupancy_iou(raw, occ0)
