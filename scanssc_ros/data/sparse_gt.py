"""Sparse voxel ground truth from labelled LiDAR points, on the official SemanticKITTI grid.

Used where the official voxel labels are missing (the shared sample data). The result is far sparser than the
official ground truth (which accumulates ~70 future scans and fills in the free space), so it is for pipeline,
geometry and metric checks, not for benchmark numbers.

Conventions:
- A voxel hit by no point is empty (0). ``.invalid`` voxels, when given, become 255 afterwards.
- A voxel hit by points is the majority train id of its *labelled* points (``LabelConfig.point_to_train``):
  points of train id 0 (unlabeled, and the raw ids mapped to it: outlier, other-structure, other-object) and of
  the ``learning_ignore`` classes do not vote. Ties go to the smaller train id.
  A voxel hit only by such points is occupied but of unknown class: 255. That is the voxel rule of the benchmark
  (``LabelConfig.voxel_to_train``: those raw ids are ignored, never empty) seen from the points.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from scanssc_ros.data.labels_io import (
    LabelConfig,
    read_packed_voxels,
    read_point_labels,
    read_scan,
    shift_down_one_layer,
)
from scanssc_ros.geometry import (
    SEMANTIC_KITTI_GRID,
    GridSpec,
    flat_index,
    points_to_voxels,
    read_kitti_calib,
    read_kitti_poses,
    transform_points,
    velo_to_velo,
)
from scanssc_ros.labels import IGNORE


def voxelize_train_labels(points: np.ndarray, labels: np.ndarray,
                          grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """Points (N, 3) in the grid frame with uint8 train ids (255 = ignore) -> uint8 label grid (X, Y, Z)."""
    idx, inside = points_to_voxels(np.asarray(points)[:, :3], grid)
    flat = flat_index(idx[inside], grid.dims)
    lab = np.asarray(labels)[inside].astype(np.int64)
    out = np.zeros(grid.num_voxels, np.uint8)
    out[flat] = IGNORE
    voting = lab != IGNORE
    # one (voxel, class) key per point; counting unique keys gives the votes without a voxels x classes table
    keys, counts = np.unique(flat[voting] * 256 + lab[voting], return_counts=True)
    vox, cls = keys // 256, keys % 256
    order = np.lexsort((cls, -counts, vox))
    vox, cls = vox[order], cls[order]
    winner = np.ones(vox.shape, bool)
    winner[1:] = vox[1:] != vox[:-1]
    out[vox[winner]] = cls[winner]
    return out.reshape(grid.dims)


def voxel_occupancy(points: np.ndarray, grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """Points (N, 3+) -> bool grid of the voxels that hold at least one point."""
    idx, inside = points_to_voxels(np.asarray(points)[:, :3], grid)
    occ = np.zeros(grid.num_voxels, bool)
    occ[flat_index(idx[inside], grid.dims)] = True
    return occ.reshape(grid.dims)


def occupancy_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else float("nan")


def accumulate_scans(scans: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                     to_reference: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Merge scans into one reference frame: scan k is moved by the 4x4 ``to_reference[k]``
    (geometry.velo_to_velo). Returns (points (N, 3) float32, labels (N,))."""
    if not (len(scans) == len(labels) == len(to_reference)):
        raise ValueError("scans, labels and transforms must have the same length")
    pts = [transform_points(np.asarray(T, np.float64), np.asarray(s, np.float64)[:, :3]).astype(np.float32)
           for s, T in zip(scans, to_reference)]
    return np.concatenate(pts, axis=0), np.concatenate([np.asarray(lab) for lab in labels], axis=0)


def sparse_ground_truth(points: np.ndarray, raw_labels: np.ndarray, cfg: LabelConfig,
                        invalid: Optional[np.ndarray] = None,
                        grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """Labelled points (raw SemanticKITTI ids, instance bits allowed) -> uint8 ground-truth grid with 255 where
    the class is unknown or where ``invalid`` (the ``.invalid`` mask, already in the grid's z convention) is set."""
    train = cfg.point_to_train(raw_labels)
    out = voxelize_train_labels(points, train, grid)
    if invalid is not None:
        out[np.asarray(invalid, bool)] = IGNORE
    return out


def read_voxel_mask(path: Union[str, Path], v1_z_shift: bool, fill: bool,
                    grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """A bit-packed voxel mask, moved down one layer when it is SemanticKITTI v1.0 data (``fill`` for the lost
    top layer: False for ``.bin``, True for ``.invalid`` / ``.occluded``)."""
    mask = read_packed_voxels(path, grid.dims)
    return shift_down_one_layer(mask, fill) if v1_z_shift else mask


def sequence_sparse_gt(seq_dir: Union[str, Path], frame: int, cfg: LabelConfig,
                       offsets: Sequence[int] = (0,), use_invalid: bool = True, v1_z_shift: bool = False,
                       grid: GridSpec = SEMANTIC_KITTI_GRID) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Sparse ground truth of ``frame`` from an official sequence directory.

    ``offsets`` lists the scans to merge, relative to ``frame`` (e.g. ``range(10)``); those whose scan or labels
    are absent (sequence end, partial copies) are skipped, and ``poses.txt`` is needed only when merging.
    ``voxels/<frame>.invalid`` is applied when present and ``use_invalid`` is set; ``v1_z_shift`` moves it down
    one layer (v1.0 data). Returns (labels uint8 (X, Y, Z), invalid bool or None).
    """
    seq = Path(seq_dir)
    frames = [frame + o for o in offsets if frame + o >= 0]
    frames = [f for f in frames if (seq / "velodyne" / f"{f:06d}.bin").is_file()
              and (seq / "labels" / f"{f:06d}.label").is_file()]
    if frame not in frames:
        raise FileNotFoundError(f"{seq}: no scan + labels for frame {frame:06d}")
    scans = [read_scan(seq / "velodyne" / f"{f:06d}.bin") for f in frames]
    raws = [read_point_labels(seq / "labels" / f"{f:06d}.label")[0] for f in frames]
    if len(frames) > 1:
        poses = read_kitti_poses(seq / "poses.txt")
        Tr = read_kitti_calib(seq / "calib.txt")["Tr"]
        transforms = [velo_to_velo(poses[f], poses[frame], Tr) for f in frames]
    else:
        transforms = [np.eye(4)]
    points, raw = accumulate_scans(scans, raws, transforms)
    invalid = None
    inv_path = seq / "voxels" / f"{frame:06d}.invalid"
    if use_invalid and inv_path.is_file():
        invalid = read_voxel_mask(inv_path, v1_z_shift, True, grid)
    return sparse_ground_truth(points, raw, cfg, invalid, grid), invalid
