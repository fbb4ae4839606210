"""SSCBench-KITTI-360 reader (19 classes, same 256x256x32 grid and bounds as SemanticKITTI).

Layout (as read by the CGFormer/ScanSSC KITTI-360 dataset):
```
root/data_2d_raw/<drive>/image_00/data_rect/<id>.png     left rectified camera (1408x376)
root/data_2d_raw/<drive>/image_01/data_rect/<id>.png     right rectified camera (stereo only)
root/data_2d_raw/<drive>/voxels/<id>.bin                 frame list (when present)
labels_root/<drive>/<id>_1_1.npy                         uint8 targets (0-18, 255 invalid); default root/labels
lidar_root/<drive>/velodyne_points/data/<id>.bin         LiDAR scans, optional; default root/data_3d_raw
```
Calibration is fixed for every drive. The numbers are those of CGFormer's ``kitti360.py`` (spec section 1):
P2 = [f 0 cx 0; 0 f cy 0; 0 0 1 0] with f = 552.554261, cx = 682.049453, cy = 238.769549; P3 the same with
P3[0, 3] = -328.318735 (baseline 0.594 m); and the KITTI-360 ``calib_cam_to_velo`` matrix, inverted into the
velodyne -> camera transform. That matrix relates the *unrectified* image_00 camera to the LiDAR; like CGFormer,
the small rectifying rotation R_rect_00 is not applied. Pass ``calib`` to use other values.
The input is 384x1408: the 376-row image is kept at scale 1 and padded with 8 black rows at the top.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from scanssc_ros.data.depth import SgbmParams, stereo_depth
from scanssc_ros.data.image import load_rgb
from scanssc_ros.data.labels_io import read_scan
from scanssc_ros.data.sample import SscSample, assemble_sample, cached_array
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, kitti_camera, stereo_baseline

PathLike = Union[str, Path]
SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": tuple(f"2013_05_28_drive_{d:04d}_sync" for d in (0, 2, 3, 4, 5, 7, 10)),
    "val": ("2013_05_28_drive_0006_sync",),
    "test": ("2013_05_28_drive_0009_sync",),
}
INPUT_HW = (384, 1408)
_F, _CX, _CY = 552.554261, 682.049453, 238.769549
P2 = np.array([[_F, 0.0, _CX, 0.0], [0.0, _F, _CY, 0.0], [0.0, 0.0, 1.0, 0.0]])
P3 = np.array([[_F, 0.0, _CX, -328.318735], [0.0, _F, _CY, 0.0], [0.0, 0.0, 1.0, 0.0]])
CAM_TO_VELO = np.array([
    [0.04307104361, -0.08829286498, 0.995162929, 0.8043914418],
    [-0.999004371, 0.007784614041, 0.04392796942, 0.2993489574],
    [-0.01162548558, -0.9960641394, -0.08786966659, -0.1770225824],
    [0.0, 0.0, 0.0, 1.0],
])
TARGET_SOURCES = ("auto", "preprocessed", "none")


def default_calib() -> Dict[str, np.ndarray]:
    """{'P2', 'P3': 3x4, 'Tr': 4x4 velodyne -> camera}, the layout of ``geometry.read_kitti_calib``."""
    return {"P2": P2.copy(), "P3": P3.copy(), "Tr": np.linalg.inv(CAM_TO_VELO)}


def split_frames(root: PathLike, split: str, labels_root: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """(drive, frame id) pairs: frames with a target, else with a ``voxels/*.bin``, else every left image."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    root = Path(root)
    labels = Path(labels_root) if labels_root is not None else root / "labels"
    out: List[Tuple[str, str]] = []
    for drive in SPLITS[split]:
        ids = {p.name[:-len("_1_1.npy")] for p in (labels / drive).glob("*_1_1.npy")}
        if not ids:
            ids = {p.stem for p in (root / "data_2d_raw" / drive / "voxels").glob("*.bin")}
        if not ids:
            ids = {p.stem for p in (root / "data_2d_raw" / drive / "image_00" / "data_rect").glob("*.png")}
        out += [(drive, f) for f in sorted(ids)]
    return out


class Kitti360Dataset(Dataset):
    """SSCBench-KITTI-360 frames as ``SscSample``s. Arguments as ``SemanticKittiDataset`` (stereo cache layout
    ``<dir>/sequences/<drive>/<id>.npy``); targets are the preprocessed ``_1_1.npy`` files only (``auto`` falls
    back to no target when a frame has none)."""

    def __init__(self, root: PathLike, split: Optional[str] = None,
                 frames: Optional[Sequence[Tuple[str, str]]] = None, target_source: str = "auto",
                 labels_root: Optional[PathLike] = None, lidar_root: Optional[PathLike] = None,
                 calib: Optional[Dict[str, np.ndarray]] = None, training: bool = False,
                 with_lidar_depth: bool = False, with_stereo: bool = False,
                 stereo_cache_dir: Optional[PathLike] = None, sgbm: SgbmParams = SgbmParams(),
                 out_hw: Tuple[int, int] = INPUT_HW):
        if target_source not in TARGET_SOURCES:
            raise ValueError(f"target_source must be one of {TARGET_SOURCES}, got {target_source!r}")
        if (split is None) == (frames is None):
            raise ValueError("give exactly one of split and frames")
        self.root = Path(root)
        self.labels_root = Path(labels_root) if labels_root is not None else self.root / "labels"
        self.lidar_root = Path(lidar_root) if lidar_root is not None else self.root / "data_3d_raw"
        self.frames = list(frames) if frames is not None else split_frames(self.root, split, self.labels_root)
        self.target_source = target_source
        self.calib = calib if calib is not None else default_calib()
        needed = {"P2", "Tr", "P3"} if with_stereo else {"P2", "Tr"}
        missing = needed - set(self.calib)
        if missing:
            raise ValueError(f"calib lacks {sorted(missing)}")
        self.training = training
        self.with_lidar_depth = with_lidar_depth
        self.with_stereo = with_stereo
        self.stereo_cache_dir = Path(stereo_cache_dir) if stereo_cache_dir is not None else None
        self.sgbm = sgbm
        self.out_hw = out_hw

    def __len__(self) -> int:
        return len(self.frames)

    def image_path(self, drive: str, frame: str, cam: str = "image_00") -> Path:
        return self.root / "data_2d_raw" / drive / cam / "data_rect" / f"{frame}.png"

    def load_target(self, drive: str, frame: str) -> Tuple[str, Optional[np.ndarray]]:
        path = self.labels_root / drive / f"{frame}_1_1.npy"
        if self.target_source == "none" or (self.target_source == "auto" and not path.is_file()):
            return "none", None
        target = np.load(path)
        if target.shape != SEMANTIC_KITTI_GRID.dims:
            raise ValueError(f"{path} has shape {target.shape}, expected {SEMANTIC_KITTI_GRID.dims}")
        return "preprocessed", target.astype(np.uint8)

    def stereo_depth(self, drive: str, frame: str) -> np.ndarray:
        fx, baseline = float(self.calib["P2"][0, 0]), stereo_baseline(self.calib["P2"], self.calib["P3"])
        cache = None if self.stereo_cache_dir is None else self.stereo_cache_dir / "sequences" / drive / f"{frame}.npy"
        return cached_array(cache, lambda: stereo_depth(load_rgb(self.image_path(drive, frame)),
                                                        load_rgb(self.image_path(drive, frame, "image_01")),
                                                        fx, baseline, self.sgbm))

    def __getitem__(self, index: int) -> SscSample:
        drive, frame = self.frames[index]
        K, T_cam_grid = kitti_camera(self.calib, "P2")
        source, target = self.load_target(drive, frame)
        scan = None
        if self.with_lidar_depth:
            scan = read_scan(self.lidar_root / drive / "velodyne_points" / "data" / f"{frame}.bin")
        stereo = self.stereo_depth(drive, frame) if self.with_stereo else None
        return assemble_sample(load_rgb(self.image_path(drive, frame)), K, T_cam_grid, self.out_hw,
                               self.training, drive, frame, source, target, None, scan, stereo,
                               p_shift=self.calib["P2"][:, 3])
