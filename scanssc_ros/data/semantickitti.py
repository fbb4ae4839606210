"""SemanticKITTI SSC reader for the official directory layout.

```
root/semantic-kitti.yaml                     (label config; or pass label_config)
root/sequences/XX/{calib.txt, poses.txt, image_2/, image_3/, velodyne/, labels/, voxels/}
root/labels/XX/NNNNNN_1_1.npy                (optional MonoScene/VoxFormer preprocessed targets, uint8, 255 invalid)
```
The ground truth comes from an explicit ``target_source``:
- ``voxel_label``: ``voxels/NNNNNN.label`` through the benchmark's completion mapping
  (``LabelConfig.voxel_to_train``: raw 0 = empty, outlier / other-structure / other-object -> 255), ``.invalid`` -> 255;
- ``preprocessed``: ``<preprocessed_root>/XX/NNNNNN_1_1.npy`` as stored;
- ``sparse``: labelled LiDAR points voxelized on the grid (``data.sparse_gt``), ``.invalid`` -> 255;
- ``auto``: the first of these that exists for the frame, else no target; ``none``: never a target.
Each sample records the source that was used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from scanssc_ros.data.depth import SgbmParams, stereo_depth
from scanssc_ros.data.image import load_rgb
from scanssc_ros.data.labels_io import (
    LabelConfig,
    load_label_config,
    read_scan,
    read_voxel_labels,
    shift_down_one_layer,
)
from scanssc_ros.data.sample import TARGET_SOURCES, SscSample, assemble_sample, cached_array
from scanssc_ros.data.sparse_gt import read_voxel_mask, sequence_sparse_gt
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, kitti_camera, read_kitti_calib, stereo_baseline
from scanssc_ros.labels import IGNORE

PathLike = Union[str, Path]
SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{s:02d}" for s in range(11, 22)),
}


def split_frames(root: PathLike, split: str, preprocessed_root: Optional[PathLike] = None) -> List[Tuple[str, str]]:
    """(sequence, frame id) pairs of a split that exist under ``root``: the frames that have a voxel file
    (``voxels/NNNNNN.*``; every 5th frame in the official data) or a preprocessed target; a sequence with
    neither contributes every image of ``image_2``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    root = Path(root)
    pre = Path(preprocessed_root) if preprocessed_root is not None else root / "labels"
    out: List[Tuple[str, str]] = []
    for seq in SPLITS[split]:
        seq_dir = root / "sequences" / seq
        if not seq_dir.is_dir():
            continue
        ids = {p.stem for p in (seq_dir / "voxels").glob("*") if p.stem.isdigit()}
        ids |= {p.name[:-len("_1_1.npy")] for p in (pre / seq).glob("*_1_1.npy")}
        if not ids:
            ids = {p.stem for p in (seq_dir / "image_2").glob("*.png")}
        out += [(seq, f) for f in sorted(ids)]
    return out


class SemanticKittiDataset(Dataset):
    """Frames of SemanticKITTI as ``SscSample``s (batch them with ``data.sample.collate``).

    Args:
        root: dataset root (holds ``sequences/``).
        split / frames: a split name ("train", "val", "test"), or an explicit list of (sequence, frame id).
        target_source: see the module docstring.
        label_config: label yaml; defaults to ``root/semantic-kitti.yaml`` (needed for ``voxel_label``/``sparse``).
        training: enables colour jitter.
        with_lidar_depth: project ``velodyne/NNNNNN.bin`` into the input image (depth-loss target).
        with_stereo: SGBM depth from ``image_2``/``image_3`` (``data.depth``); with ``stereo_cache_dir`` it is read
            from / written to ``<dir>/sequences/XX/NNNNNN.npy`` at the original resolution. That is the layout of
            the official precomputed MobileStereoNet depth, which can therefore be used in place of SGBM.
        v1_z_shift: the voxel files are SemanticKITTI v1.0 (one layer too high): move ``.label``/``.invalid`` down.
        sparse_offsets: scans merged into the sparse target, relative to the frame (needs poses.txt).
        out_hw: network input size.
    """

    def __init__(self, root: PathLike, split: Optional[str] = None,
                 frames: Optional[Sequence[Tuple[str, str]]] = None, target_source: str = "auto",
                 label_config: Optional[PathLike] = None, preprocessed_root: Optional[PathLike] = None,
                 training: bool = False, with_lidar_depth: bool = True, with_stereo: bool = False,
                 stereo_cache_dir: Optional[PathLike] = None, sgbm: SgbmParams = SgbmParams(),
                 v1_z_shift: bool = False, sparse_offsets: Sequence[int] = (0,),
                 out_hw: Tuple[int, int] = (384, 1280)):
        if target_source not in TARGET_SOURCES:
            raise ValueError(f"target_source must be one of {TARGET_SOURCES}, got {target_source!r}")
        if (split is None) == (frames is None):
            raise ValueError("give exactly one of split and frames")
        self.root = Path(root)
        self.preprocessed_root = Path(preprocessed_root) if preprocessed_root is not None else self.root / "labels"
        self.frames = list(frames) if frames is not None else split_frames(self.root, split, self.preprocessed_root)
        self.target_source = target_source
        cfg_path = Path(label_config) if label_config is not None else self.root / "semantic-kitti.yaml"
        self.label_config: Optional[LabelConfig] = load_label_config(cfg_path) if cfg_path.is_file() else None
        if self.label_config is None and target_source in ("voxel_label", "sparse"):
            raise FileNotFoundError(f"target_source {target_source!r} needs a label config; {cfg_path} not found")
        self.training = training
        self.with_lidar_depth = with_lidar_depth
        self.with_stereo = with_stereo
        self.stereo_cache_dir = Path(stereo_cache_dir) if stereo_cache_dir is not None else None
        self.sgbm = sgbm
        self.v1_z_shift = v1_z_shift
        self.sparse_offsets = tuple(sparse_offsets)
        self.out_hw = out_hw
        self._calib: Dict[str, Dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def seq_dir(self, seq: str) -> Path:
        return self.root / "sequences" / seq

    def calib(self, seq: str) -> Dict[str, np.ndarray]:
        if seq not in self._calib:
            self._calib[seq] = read_kitti_calib(self.seq_dir(seq) / "calib.txt")
        return self._calib[seq]

    # ---------------------------------------------------------------------------------------- targets
    def resolve_target_source(self, seq: str, frame: str) -> str:
        if self.target_source != "auto":
            return self.target_source
        seq_dir = self.seq_dir(seq)
        if self.label_config is not None and (seq_dir / "voxels" / f"{frame}.label").is_file():
            return "voxel_label"
        if (self.preprocessed_root / seq / f"{frame}_1_1.npy").is_file():
            return "preprocessed"
        if self.label_config is not None and (seq_dir / "labels" / f"{frame}.label").is_file():
            return "sparse"
        return "none"

    def load_target(self, seq: str, frame: str, source: str) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """(uint8 target with 255 ignore, bool invalid mask or None) from ``source``."""
        seq_dir = self.seq_dir(seq)
        dims = SEMANTIC_KITTI_GRID.dims
        if source == "none":
            return None, None
        if source == "preprocessed":
            target = np.load(self.preprocessed_root / seq / f"{frame}_1_1.npy")
            if target.shape != dims:
                raise ValueError(f"{seq}/{frame}_1_1.npy has shape {target.shape}, expected {dims}")
            return target.astype(np.uint8), None
        assert self.label_config is not None
        if source == "sparse":
            return sequence_sparse_gt(seq_dir, int(frame), self.label_config, self.sparse_offsets,
                                      use_invalid=True, v1_z_shift=self.v1_z_shift)
        if source == "voxel_label":
            target = self.label_config.voxel_to_train(read_voxel_labels(seq_dir / "voxels" / f"{frame}.label", dims))
            if self.v1_z_shift:
                target = shift_down_one_layer(target, IGNORE)
            invalid = None
            inv_path = seq_dir / "voxels" / f"{frame}.invalid"
            if inv_path.is_file():
                invalid = read_voxel_mask(inv_path, self.v1_z_shift, True)
                target[invalid] = IGNORE
            return target, invalid
        raise ValueError(f"unknown target source {source!r}")

    # ------------------------------------------------------------------------------------------ depths
    def stereo_depth(self, seq: str, frame: str) -> np.ndarray:
        """Original-resolution SGBM depth of the left colour camera (cached when a cache dir is set)."""
        calib = self.calib(seq)
        if "P3" not in calib:
            raise ValueError(f"{seq}/calib.txt has no P3: stereo depth needs the right camera")
        seq_dir = self.seq_dir(seq)
        fx, baseline = float(calib["P2"][0, 0]), stereo_baseline(calib["P2"], calib["P3"])
        cache = None if self.stereo_cache_dir is None else self.stereo_cache_dir / "sequences" / seq / f"{frame}.npy"
        return cached_array(cache, lambda: stereo_depth(load_rgb(seq_dir / "image_2" / f"{frame}.png"),
                                                        load_rgb(seq_dir / "image_3" / f"{frame}.png"),
                                                        fx, baseline, self.sgbm))

    def __getitem__(self, index: int) -> SscSample:
        seq, frame = self.frames[index]
        seq_dir = self.seq_dir(seq)
        calib = self.calib(seq)
        K, T_cam_grid = kitti_camera(calib, "P2")
        source = self.resolve_target_source(seq, frame)
        target, invalid = self.load_target(seq, frame, source)
        scan = read_scan(seq_dir / "velodyne" / f"{frame}.bin") if self.with_lidar_depth else None
        stereo = self.stereo_depth(seq, frame) if self.with_stereo else None
        return assemble_sample(load_rgb(seq_dir / "image_2" / f"{frame}.png"), K, T_cam_grid, self.out_hw,
                               self.training, seq, frame, source, target, invalid, scan, stereo,
                               p_shift=calib["P2"][:, 3])
