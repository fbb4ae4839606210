"""Datasets as the train / eval commands see them: which reader, which frames, reproducible augmentation.

The readers (``data.semantickitti``, ``data.kitti360``) stay free of training concerns; this module picks one by
name, turns command-line frame lists into (sequence, frame) pairs, and wraps a dataset so its colour jitter is a
pure function of (seed, epoch, sample index). That makes a run independent of the number of DataLoader workers
and of the number of processes, and lets a resumed run see the same augmented samples as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from scanssc_ros.data.kitti360 import INPUT_HW as KITTI360_INPUT_HW
from scanssc_ros.data.kitti360 import Kitti360Dataset
from scanssc_ros.data.labels_io import LabelConfig, load_label_config
from scanssc_ros.data.sample import SscSample
from scanssc_ros.data.semantickitti import SemanticKittiDataset
from scanssc_ros.labels import KITTI360, SEMANTIC_KITTI, LabelSet

DATASETS = ("semantickitti", "kitti360")
DEPTH_MODES = ("stereo", "mono")
# Official schedules (spec section 6): total optimizer steps and the one LR milestone (gamma 0.1).
OFFICIAL_SCHEDULE = {"semantickitti": (25000, 20000), "kitti360": (54000, 44000)}


@dataclass(frozen=True)
class DataOptions:
    """Where the data lives and what each sample carries."""

    kind: str  # semantickitti | kitti360
    root: str
    target_source: str = "auto"
    depth_mode: str = "stereo"  # stereo: SGBM (or cached) depth is a model input; mono: no depth input
    stereo_cache: Optional[str] = None
    lidar_depth: bool = True  # LiDAR depth map of each frame (target of the depth loss)
    label_config: Optional[str] = None  # label yaml (SemanticKITTI: default root/semantic-kitti.yaml)
    labels_root: Optional[str] = None  # preprocessed _1_1.npy targets (default root/labels)
    v1_z_shift: bool = False  # SemanticKITTI v1.0 voxel files (one layer too high)

    def validate(self) -> DataOptions:
        if self.kind not in DATASETS:
            raise ValueError(f"unknown dataset {self.kind!r}; expected one of {DATASETS}")
        if self.depth_mode not in DEPTH_MODES:
            raise ValueError(f"unknown depth mode {self.depth_mode!r}; expected one of {DEPTH_MODES}")
        if not Path(self.root).is_dir():
            raise FileNotFoundError(f"data root {self.root} is not a directory")
        return self


def label_set_for(kind: str) -> LabelSet:
    return {"semantickitti": SEMANTIC_KITTI, "kitti360": KITTI360}[kind]


def input_size_for(kind: str) -> Tuple[int, int]:
    """The official network input of each dataset (the model config may use another size)."""
    return KITTI360_INPUT_HW if kind == "kitti360" else (384, 1280)


def parse_frames(text: Optional[str]) -> Optional[List[Tuple[str, str]]]:
    """``"08/000000,08/000005"`` or a path to a file with one ``seq/frame`` per line -> [(seq, frame)]."""
    if text is None:
        return None
    path = Path(text)
    items = path.read_text().split() if path.is_file() else text.split(",")
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        seq, sep, frame = item.rpartition("/")
        if not sep or not seq or not frame:
            raise ValueError(f"frame {item!r} is not of the form SEQUENCE/FRAME (e.g. 08/000000)")
        out.append((seq, frame))
    if not out:
        raise ValueError(f"no frames in {text!r}")
    return out


def build_dataset(opts: DataOptions, split: Optional[str] = None,
                  frames: Optional[Sequence[Tuple[str, str]]] = None, training: bool = False,
                  out_hw: Tuple[int, int] = (384, 1280)) -> Dataset:
    """The reader for ``opts.kind`` over a split or an explicit frame list. Raises when it holds no frame."""
    common = dict(split=split, frames=frames, target_source=opts.target_source, training=training,
                  with_lidar_depth=opts.lidar_depth, with_stereo=opts.depth_mode == "stereo",
                  stereo_cache_dir=opts.stereo_cache, out_hw=out_hw)
    if opts.kind == "semantickitti":
        ds: Dataset = SemanticKittiDataset(opts.root, label_config=opts.label_config,
                                           preprocessed_root=opts.labels_root, v1_z_shift=opts.v1_z_shift, **common)
    else:
        ds = Kitti360Dataset(opts.root, labels_root=opts.labels_root, **common)
    if len(ds) == 0:
        what = f"split {split!r}" if split is not None else "the given frames"
        raise ValueError(f"no frames of {what} under {opts.root}")
    return ds


def label_config_for(dataset: Dataset, path: Optional[str] = None) -> Optional[LabelConfig]:
    """The label yaml used for ``.label`` export: ``path`` when given, else the dataset's own (SemanticKITTI)."""
    if path is not None:
        return load_label_config(path)
    return getattr(dataset, "label_config", None)


def load_target(dataset: Dataset, index: int) -> Optional[np.ndarray]:
    """The (X, Y, Z) uint8 target of sample ``index`` without reading its image (None without a target)."""
    seq, frame = dataset.frames[index]
    if isinstance(dataset, SemanticKittiDataset):
        target, _ = dataset.load_target(seq, frame, dataset.resolve_target_source(seq, frame))
        return target
    if isinstance(dataset, Kitti360Dataset):
        return dataset.load_target(seq, frame)[1]
    raise TypeError(f"unsupported dataset {type(dataset).__name__}")


def augment_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 1) % (2 ** 62)


class SeededAugmentation(Dataset):
    """Runs ``dataset[index]`` with the torch RNG seeded from (seed, epoch, index), inside ``fork_rng`` so the
    caller's RNG stream is untouched. Call ``set_epoch`` before each epoch's DataLoader iterator is created."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> SscSample:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augment_seed(self.seed, self.epoch, index))
            return self.dataset[index]
