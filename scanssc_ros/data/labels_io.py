"""Label configs and the SemanticKITTI file formats.

- Label configs are the official yaml files (``semantic-kitti.yaml``, SSCBench ``kitti360.yaml``). They are turned
  into dense lookup tables over every uint16 raw id, so mapping a whole scan or grid is one indexing operation.
- Point labels (``labels/*.label``): uint32 per point, low 16 bits semantic id, high 16 bits instance id.
- Voxel masks (``voxels/*.bin|.invalid|.occluded``): one bit per voxel, MSB first, 256x256x32 in C order.
- Voxel labels (``voxels/*.label`` and the benchmark submission format): uint16 raw id per voxel, C order.

Three mappings from raw ids to train ids, because train id 0 means different things:
- ``to_train``: the yaml's learning_map as written (train id 0 = "unlabeled").
- ``voxel_to_train``: voxel grids, where train id 0 means *empty*. Only raw 0 is empty; every other raw id that
  learning_map sends to 0 (SemanticKITTI: 1 outlier, 52 other-structure, 99 other-object) is a voxel of unknown
  class and becomes 255 (ignored). This is what the benchmark's ``evaluate_completion.py`` (semantic-kitti-api)
  scores and what the MonoScene/VoxFormer preprocessing writes into the ``_1_1.npy`` targets.
- ``point_to_train``: labelled LiDAR points. A point is evidence of an occupied voxel, never of an empty one, so
  every point whose train id is 0 (raw 0 included) or whose class is in ``learning_ignore`` becomes 255.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
import yaml

from scanssc_ros.geometry import SEMANTIC_KITTI_GRID
from scanssc_ros.labels import IGNORE

PathLike = Union[str, Path]
GRID_DIMS: Tuple[int, int, int] = SEMANTIC_KITTI_GRID.dims
_RAW_IDS = 1 << 16
# How voxel ground truth is mapped, as recorded in the eval results (see ``LabelConfig.voxel_to_train``).
VOXEL_MAPPING = "completion"
VOXEL_MAPPING_RULE = ("learning_map, then every raw id other than 0 that learning_map sends to train id 0 -> 255 "
                      "(ignored); raw 0 stays 0 (empty). As semantic-kitti-api evaluate_completion.py and the "
                      "MonoScene/VoxFormer _1_1.npy preprocessing.")


@dataclass(frozen=True)
class LabelConfig:
    """Lookup tables built from an official label yaml."""

    learning_map: np.ndarray  # (65536,) uint8: raw semantic id -> train id; ids missing from the yaml -> 255
    learning_map_inv: np.ndarray  # (num_classes,) uint16: train id -> raw id
    learning_ignore: np.ndarray  # (num_classes,) bool
    color_map_bgr: np.ndarray  # (65536, 3) uint8, raw id -> BGR as in the yaml (unknown ids black)
    split: Dict[str, List[int]]

    @property
    def num_classes(self) -> int:
        return int(self.learning_map_inv.shape[0])

    def train_colors_rgb(self) -> np.ndarray:
        """(num_classes, 3) RGB colour of each train id, through learning_map_inv."""
        return self.color_map_bgr[self.learning_map_inv][:, ::-1].copy()

    def to_train(self, raw: np.ndarray, ignore_to_255: bool = False) -> np.ndarray:
        """Raw semantic ids (any unsigned/int array; instance bits in the upper 16 bits are dropped) -> uint8 train
        ids through the plain learning_map. ``ignore_to_255`` also sends the ``learning_ignore`` classes to 255.

        Not for ground truth: voxel grids go through ``voxel_to_train``, labelled points through ``point_to_train``.
        """
        lut = self.learning_map
        if ignore_to_255:
            lut = np.where(self._ignored_train_ids()[lut], np.uint8(IGNORE), lut)
        return self._lookup(lut, raw)

    @property
    def voxel_learning_map(self) -> np.ndarray:
        """(65536,) uint8 lookup of ``voxel_to_train``."""
        lut = self.learning_map.copy()
        lut[lut == 0] = IGNORE
        lut[0] = 0
        return lut

    def voxel_ignored_raw_ids(self) -> List[int]:
        """The raw ids listed in learning_map that ``voxel_to_train`` sends to 255: those mapped to 0, except 0."""
        mapped = np.zeros(_RAW_IDS, bool)
        mapped[self.learning_map != IGNORE] = True
        return np.flatnonzero(mapped & (self.voxel_learning_map == IGNORE)).tolist()

    def voxel_to_train(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids of a voxel grid -> uint8 train ids, the benchmark's completion mapping (module docstring).

        In a voxel grid train id 0 must mean "observed free space"; a voxel labelled outlier / other-structure /
        other-object is occupied by something outside the 19 classes, so scoring it as empty would punish a
        correct occupancy prediction there. Use it for ground truth and for ``.label`` predictions alike.
        """
        return self._lookup(self.voxel_learning_map, raw)

    def point_to_train(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids of labelled points -> uint8 train ids with 255 for every point that carries no usable class
        (train id 0, raw 0 included, and the ``learning_ignore`` classes): a point can only say "occupied"."""
        lut = np.where(self._ignored_train_ids()[self.learning_map], np.uint8(IGNORE), self.learning_map)
        lut[lut == 0] = IGNORE
        return self._lookup(lut, raw)

    def _ignored_train_ids(self) -> np.ndarray:
        ignored = np.zeros(256, bool)
        ignored[: self.num_classes] = self.learning_ignore
        return ignored

    @staticmethod
    def _lookup(lut: np.ndarray, raw: np.ndarray) -> np.ndarray:
        return lut[np.asarray(raw).astype(np.int64) & 0xFFFF]

    def to_raw(self, train: np.ndarray) -> np.ndarray:
        """uint8 train ids -> uint16 raw ids for export. 255 (unknown) is written as raw 0 ("unlabeled")."""
        train = np.asarray(train)
        inv = np.zeros(256, np.uint16)
        inv[: self.num_classes] = self.learning_map_inv
        if np.any((train >= self.num_classes) & (train != IGNORE)):
            raise ValueError(f"train ids must be < {self.num_classes} or 255")
        return inv[train.astype(np.int64)]


def load_label_config(path: PathLike) -> LabelConfig:
    cfg = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    lmap = np.full(_RAW_IDS, IGNORE, np.uint8)
    for raw, train in cfg["learning_map"].items():
        lmap[int(raw)] = int(train)
    inv_items = sorted((int(k), int(v)) for k, v in cfg["learning_map_inv"].items())
    if [k for k, _ in inv_items] != list(range(len(inv_items))):
        raise ValueError(f"{path}: learning_map_inv keys are not 0..C-1")
    inv = np.array([v for _, v in inv_items], np.uint16)
    ignore = np.zeros(len(inv), bool)
    for k, v in cfg.get("learning_ignore", {}).items():
        ignore[int(k)] = bool(v)
    colors = np.zeros((_RAW_IDS, 3), np.uint8)
    for raw, bgr in cfg["color_map"].items():
        colors[int(raw)] = bgr
    split = {k: [int(s) for s in (v or [])] for k, v in cfg.get("split", {}).items()}
    return LabelConfig(lmap, inv, ignore, colors, split)


# ------------------------------------------------------------------------------------------------ points
def read_point_labels(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """A point ``.label`` file -> (semantic uint16, instance uint16)."""
    lab = np.fromfile(path, dtype=np.uint32)
    return (lab & 0xFFFF).astype(np.uint16), (lab >> 16).astype(np.uint16)


def read_scan(path: PathLike) -> np.ndarray:
    """A velodyne ``.bin`` -> (N, 4) float32 x, y, z, remission."""
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


# ------------------------------------------------------------------------------------------------ voxels
def read_packed_voxels(path: PathLike, dims: Tuple[int, int, int] = GRID_DIMS) -> np.ndarray:
    """A bit-packed ``.bin``/``.invalid``/``.occluded`` -> bool (X, Y, Z)."""
    packed = np.fromfile(path, dtype=np.uint8)
    n = dims[0] * dims[1] * dims[2]
    if packed.size * 8 != n:
        raise ValueError(f"{path}: {packed.size} bytes, expected {n // 8} for a {dims} grid")
    return np.unpackbits(packed).astype(bool).reshape(dims)


def write_packed_voxels(path: PathLike, mask: np.ndarray) -> None:
    np.packbits(np.asarray(mask, bool).reshape(-1)).tofile(path)


def read_voxel_labels(path: PathLike, dims: Tuple[int, int, int] = GRID_DIMS) -> np.ndarray:
    """A voxel ``.label`` -> uint16 raw ids (X, Y, Z)."""
    lab = np.fromfile(path, dtype=np.uint16)
    if lab.size != dims[0] * dims[1] * dims[2]:
        raise ValueError(f"{path}: {lab.size} labels, expected a {dims} grid")
    return lab.reshape(dims)


def write_voxel_labels(path: PathLike, raw: np.ndarray) -> None:
    np.ascontiguousarray(raw, dtype=np.uint16).reshape(-1).tofile(path)


def export_prediction(path: PathLike, pred: np.ndarray, cfg: LabelConfig) -> None:
    """Write a (X, Y, Z) train-id prediction as an official uint16 ``.label`` (benchmark submission format)."""
    write_voxel_labels(path, cfg.to_raw(pred))


def shift_down_one_layer(grid: np.ndarray, fill: Union[int, bool]) -> np.ndarray:
    """Move a SemanticKITTI v1.0 voxel grid one layer down in z (the upstream fix of Aug 2020).

    v1.0 grids sit one voxel too high, so stored layer k+1 holds true layer k. The true top layer was never
    stored: it is set to ``fill`` (0/False for occupancy, True for ``.invalid``, 255 for labels).
    """
    out = np.empty_like(grid)
    out[..., :-1] = grid[..., 1:]
    out[..., -1] = fill
    return out
