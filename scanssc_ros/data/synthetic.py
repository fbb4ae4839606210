"""Synthetic SemanticKITTI: procedural street scenes written in the official directory layout.

Every code path (readers, depth priors, sparse/dense targets, training, the node) can run without the real
datasets. For frame j of a scene (``synthetic_scene.generate_scene``) ``render_frame`` produces:

- a rectified stereo pair from KITTI's P2 / P3 (sequence 08 calibration: fx 707.09, baseline 0.537 m; 1241x376
  images or a scaled copy) ray cast from the solids, textured so stereo matching works (``synthetic_sensors``);
- an HDL-64-like scan from the velodyne origin (64 beams from +2 to -24.9 deg), with raw SemanticKITTI point
  labels (instance ids in the high 16 bits for vehicles and people; moving vehicles get the "moving-*" ids);
- the voxel ground truth: a voxel takes the class of the highest-priority solid that shares volume with it
  (``synthetic_scene.PRIORITY``; ground slabs only in the voxel layer of their surface), so a LiDAR point lies in
  a voxel of its own class except where two solids meet;
- ``.invalid``: the voxels nobody observed. Observers are the left camera, the LiDAR, and ``future_views``
  virtual LiDARs further along the ego's lane: SemanticKITTI's labels come from the following scans of the drive,
  so space first seen from ahead is valid there too (the virtual views see the static solids only). A voxel
  holding a LiDAR return is always observed; the per-ray rule is in ``synthetic_sensors``;
- ``.bin``: the voxelized scan (voxels holding a return), which is what the official ``.bin`` holds.

``write_sequence`` writes frames, calibration, poses and the label yaml. No ``.occluded`` files are written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import yaml

from scanssc_ros.data.sparse_gt import voxel_occupancy
from scanssc_ros.data.synthetic_scene import PRIORITY, RAW_OF_TRAIN, Part, Scene, generate_scene
from scanssc_ros.data.synthetic_sensors import LidarSpec, observed_voxels, render_camera, scan_lidar
from scanssc_ros.data.voxel_io import write_voxel_file
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec, kitti_camera
from scanssc_ros.labels import SEMANTIC_KITTI

__all__ = ["generate_scene", "render_frame", "write_sequence", "kitti_calib", "label_config", "LidarSpec",
           "SyntheticFrame", "RAW_LABELS", "SIZES"]
PathLike = Union[str, Path]

# KITTI odometry sequence 08 (calib.txt): rectified projections of the four cameras and Tr (velodyne -> cam0)
_P = {
    "P0": ((707.0912, 0.0, 601.8873, 0.0), (0.0, 707.0912, 183.1104, 0.0), (0.0, 0.0, 1.0, 0.0)),
    "P1": ((707.0912, 0.0, 601.8873, -379.8145), (0.0, 707.0912, 183.1104, 0.0), (0.0, 0.0, 1.0, 0.0)),
    "P2": ((707.0912, 0.0, 601.8873, 46.88783), (0.0, 707.0912, 183.1104, 0.1178601), (0.0, 0.0, 1.0, 0.006203223)),
    "P3": ((707.0912, 0.0, 601.8873, -333.4597), (0.0, 707.0912, 183.1104, 1.930130), (0.0, 0.0, 1.0, 0.003318498)),
}
_TR = ((-1.857739385241e-03, -9.999659513510e-01, -8.039975204516e-03, -4.784029760483e-03),
       (-6.481465826011e-03, 8.051860151134e-03, -9.999466081774e-01, -7.337429464231e-02),
       (9.999773098287e-01, -1.805528627661e-03, -6.496203536139e-03, -3.339968064433e-01))
KITTI_HW = (376, 1241)  # the size of KITTI odometry sequences 00-02 (sequence 08 itself is 1226x370)
SIZES = {"kitti": 1.0, "small": 0.5}


@dataclass
class SyntheticFrame:
    left: np.ndarray  # (H, W, 3) uint8 RGB, camera P2
    right: np.ndarray  # camera P3
    depth: np.ndarray  # (H, W) float32 depth of the left camera, 0 = sky
    pixel_labels: np.ndarray  # (H, W) uint8 train ids seen by the left camera (0 = sky)
    points: np.ndarray  # (N, 4) float32 x, y, z, remission
    point_labels: np.ndarray  # (N,) uint32: raw id | instance << 16
    voxel_labels: np.ndarray  # (X, Y, Z) uint8 train ids
    invalid: np.ndarray  # (X, Y, Z) bool
    scan_occupancy: np.ndarray  # (X, Y, Z) bool


# -------------------------------------------------------------------------------------------- calibration
def kitti_calib(scale: float = 1.0) -> Dict[str, np.ndarray]:
    """The calibration as ``geometry.read_kitti_calib`` returns it, for images scaled by ``scale``."""
    out = {}
    for key, rows in _P.items():
        P = np.array(rows, np.float64)
        P[:2] *= scale
        out[key] = P
    out["Tr"] = np.vstack([np.array(_TR), [0.0, 0.0, 0.0, 1.0]])
    return out


def image_size(scale: float) -> Tuple[int, int]:
    return round(KITTI_HW[0] * scale), round(KITTI_HW[1] * scale)


def _calib_text(calib: Dict[str, np.ndarray]) -> str:
    keys = ("P0", "P1", "P2", "P3", "Tr")
    return "".join(f"{k}: " + " ".join(f"{v:.12e}" for v in calib[k][:3].reshape(-1)) + "\n" for k in keys)


# ------------------------------------------------------------------------------------------------- voxels
def voxel_labels(parts: Sequence[Part], grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """(X, Y, Z) uint8 train ids: each voxel gets the highest-priority part overlapping it (later parts win ties)."""
    labels = np.zeros(grid.dims, np.uint8)
    prio = np.zeros(grid.dims, np.uint8)
    o, s, dims = np.asarray(grid.origin), grid.voxel_size, np.asarray(grid.dims)
    for p in parts:
        lo, hi = p.shape.bounds()
        i0 = np.clip(np.floor((lo - o) / s).astype(int), 0, dims)
        i1 = np.clip(np.ceil((hi - o) / s).astype(int), 0, dims)
        if np.any(i1 <= i0):
            continue
        axes = [o[k] + np.arange(i0[k], i1[k] + 1) * s for k in range(3)]  # cell edges, as points_to_voxels has them
        edges = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
        inside = p.shape.overlaps(edges[:-1, :-1, :-1], edges[1:, 1:, 1:])
        block = tuple(slice(a, b) for a, b in zip(i0, i1))
        win = inside & (PRIORITY[p.label] >= prio[block])
        labels[block][win] = p.label
        prio[block][win] = PRIORITY[p.label]
    return labels


# -------------------------------------------------------------------------------------------------- frames
def render_frame(scene: Scene, j: int = 0, scale: float = 1.0, lidar: LidarSpec = LidarSpec(),
                 future_views: Sequence[float] = (10.0, 20.0, 30.0, 40.0), view_azimuths: int = 1024,
                 grid: GridSpec = SEMANTIC_KITTI_GRID) -> SyntheticFrame:
    """Everything the writer stores for frame ``j`` of ``scene``, with images at ``scale`` x KITTI size.

    ``future_views``: x offsets (m) of the extra visibility-only LiDAR positions along the ego lane.
    """
    parts = scene.at_frame(j)
    calib = kitti_calib(scale)
    hw = image_size(scale)
    K2, T2 = kitti_camera(calib, "P2")
    K3, T3 = kitti_camera(calib, "P3")
    left, depth, pixel_labels = render_camera(parts, scene, K2, T2, hw)
    right = render_camera(parts, scene, K3, T3, hw)[0]
    points, point_labels, ranges = scan_lidar(parts, scene, lidar)
    labels = voxel_labels(parts, grid)

    static = [p for p in parts if p.velocity == 0.0]
    coarse = LidarSpec(lidar.beams, lidar.elevation_up, lidar.elevation_down, view_azimuths, lidar.max_range)
    views = [((0.0, 0.0, 0.0), ranges)]
    views += [((dx, 0.0, 0.0), scan_lidar(static, scene, coarse, (dx, 0.0, 0.0))[2]) for dx in future_views]
    # readers voxelize the float32 points in float32 or in float64; a point within rounding of a voxel boundary
    # lands on different sides, and both voxels hold a return
    occupancy = voxel_occupancy(points, grid) | voxel_occupancy(points.astype(np.float64), grid)
    invalid = ~observed_voxels((K2, T2, depth), views, lidar, occupancy, grid)
    return SyntheticFrame(left, right, depth, pixel_labels, points, point_labels, labels, invalid, occupancy)


# ----------------------------------------------------------------------------------------------- label yaml
# (raw id, name, train id) of the official SemanticKITTI label set
RAW_LABELS: Tuple[Tuple[int, str, int], ...] = (
    (0, "unlabeled", 0), (1, "outlier", 0), (10, "car", 1), (11, "bicycle", 2), (13, "bus", 5),
    (15, "motorcycle", 3), (16, "on-rails", 5), (18, "truck", 4), (20, "other-vehicle", 5), (30, "person", 6),
    (31, "bicyclist", 7), (32, "motorcyclist", 8), (40, "road", 9), (44, "parking", 10), (48, "sidewalk", 11),
    (49, "other-ground", 12), (50, "building", 13), (51, "fence", 14), (52, "other-structure", 0),
    (60, "lane-marking", 9), (70, "vegetation", 15), (71, "trunk", 16), (72, "terrain", 17), (80, "pole", 18),
    (81, "traffic-sign", 19), (99, "other-object", 0), (252, "moving-car", 1), (253, "moving-bicyclist", 7),
    (254, "moving-person", 6), (255, "moving-motorcyclist", 8), (256, "moving-on-rails", 5),
    (257, "moving-bus", 5), (258, "moving-truck", 4), (259, "moving-other-vehicle", 5),
)


def label_config() -> dict:
    """A ``semantic-kitti.yaml`` equivalent (what ``labels_io.load_label_config`` reads), built from the label
    set: colours are the train-class colours (BGR, as the official file stores them)."""
    colors = SEMANTIC_KITTI.colors_rgb
    return {
        "labels": {raw: name for raw, name, _ in RAW_LABELS},
        "color_map": {raw: list(colors[t][::-1]) for raw, _, t in RAW_LABELS},
        "learning_map": {raw: t for raw, _, t in RAW_LABELS},
        "learning_map_inv": dict(enumerate(RAW_OF_TRAIN)),
        "learning_ignore": {t: t == 0 for t in range(len(RAW_OF_TRAIN))},
        "split": {"train": [0, 1, 2, 3, 4, 5, 6, 7, 9, 10], "valid": [8], "test": list(range(11, 22))},
    }


# ------------------------------------------------------------------------------------------------- writer
def scene_seed(seed: int, sequence: str, scene_index: int) -> int:
    return int(np.random.SeedSequence([seed, int(sequence), scene_index]).generate_state(1)[0])


def write_sequence(root: PathLike, sequence: str = "00", n_frames: int = 1, seed: int = 0, scale: float = 1.0,
                   frames_per_scene: int = 1, step: float = 0.8, lidar: LidarSpec = LidarSpec(),
                   future_views: Sequence[float] = (10.0, 20.0, 30.0, 40.0), progress: bool = False) -> Path:
    """Write ``root/sequences/<sequence>/`` (and ``root/semantic-kitti.yaml``) in the SemanticKITTI layout.

    Frames are grouped into drives of ``frames_per_scene`` frames through one scene (``frames_per_scene`` = 1:
    every frame is a new scene); scene k's seed derives from (``seed``, sequence, k). ``poses.txt`` moves the ego
    ``step`` m forward per frame throughout, which is exact within a drive (merging scans with ``poses.txt`` is
    only meaningful there). Same arguments, same bytes. Returns the sequence directory.
    """
    root = Path(root)
    seq_dir = root / "sequences" / sequence
    for sub in ("image_2", "image_3", "velodyne", "labels", "voxels"):
        (seq_dir / sub).mkdir(parents=True, exist_ok=True)
    (root / "semantic-kitti.yaml").write_text(yaml.safe_dump(label_config(), sort_keys=False))
    calib = kitti_calib(scale)
    (seq_dir / "calib.txt").write_text(_calib_text(calib))
    scene: Optional[Scene] = None
    poses: List[str] = []
    frames = range(n_frames)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc=f"sequence {sequence}", unit="frame")
    for k in frames:
        if k % frames_per_scene == 0:
            scene = generate_scene(scene_seed(seed, sequence, k // frames_per_scene), frames_per_scene, step)
        assert scene is not None
        f = render_frame(scene, k % frames_per_scene, scale, lidar, future_views)
        name = f"{k:06d}"
        cv2.imwrite(str(seq_dir / "image_2" / f"{name}.png"), f.left[..., ::-1])
        cv2.imwrite(str(seq_dir / "image_3" / f"{name}.png"), f.right[..., ::-1])
        f.points.astype("<f4").tofile(seq_dir / "velodyne" / f"{name}.bin")
        f.point_labels.astype("<u4").tofile(seq_dir / "labels" / f"{name}.label")
        raw = np.asarray(RAW_OF_TRAIN, np.uint16)[f.voxel_labels]
        write_voxel_file(seq_dir / "voxels" / f"{name}.label", raw)
        write_voxel_file(seq_dir / "voxels" / f"{name}.bin", f.scan_occupancy)
        write_voxel_file(seq_dir / "voxels" / f"{name}.invalid", f.invalid)
        shift = np.eye(4)
        shift[0, 3] = k * scene.step
        pose = calib["Tr"] @ shift @ np.linalg.inv(calib["Tr"])  # cam0 of frame k -> cam0 of frame 0
        poses.append(" ".join(f"{v:.9e}" for v in pose[:3].reshape(-1)))
    (seq_dir / "poses.txt").write_text("\n".join(poses) + "\n")
    (seq_dir / "times.txt").write_text("".join(f"{k * 0.1:.6e}\n" for k in range(n_frames)))
    return seq_dir
