"""The typed training sample shared by the dataset readers, its batched form, and how a sample is assembled."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from scanssc_ros.data.depth import lidar_depth_map
from scanssc_ros.data.image import prepare_image, resize_crop_depth

TARGET_SOURCES = ("auto", "voxel_label", "preprocessed", "sparse", "none")


@dataclass
class SscSample:
    """One frame. Images and depth maps are network-input sized (out_h, out_w); grids are (X, Y, Z).

    - ``image``: (3, H, W) float32, ImageNet-normalised (colour-jittered in training mode only).
    - ``K`` (3, 3), ``T_cam_grid`` (4, 4), ``img_aug`` (3, 3): float32, see ``geometry``; ``p_shift`` (3,): the
      4th column of the camera's rectified projection matrix (KITTI P2[:3, 3]), for the camera vector.
    - ``target``: uint8 class ids, 255 = ignore; ``invalid``: bool, the dataset's ``.invalid`` mask when the frame
      has one, else ``target == 255``. Both None without a target (``target_source == "none"``).
    - ``lidar_depth`` / ``stereo_depth``: (1, H, W) float32 metres, 0 = no depth; None when not requested.
    """

    image: torch.Tensor
    K: torch.Tensor
    T_cam_grid: torch.Tensor
    img_aug: torch.Tensor
    p_shift: torch.Tensor
    target: Optional[torch.Tensor]
    invalid: Optional[torch.Tensor]
    lidar_depth: Optional[torch.Tensor]
    stereo_depth: Optional[torch.Tensor]
    sequence: str
    frame_id: str
    target_source: str


@dataclass
class SscBatch:
    """``SscSample`` fields stacked along a leading batch dimension; string fields become lists."""

    image: torch.Tensor
    K: torch.Tensor
    T_cam_grid: torch.Tensor
    img_aug: torch.Tensor
    p_shift: torch.Tensor
    target: Optional[torch.Tensor]
    invalid: Optional[torch.Tensor]
    lidar_depth: Optional[torch.Tensor]
    stereo_depth: Optional[torch.Tensor]
    sequence: List[str]
    frame_id: List[str]
    target_source: List[str]

    def to(self, device: Union[str, torch.device]) -> SscBatch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return SscBatch(**moved)


def collate(samples: Sequence[SscSample]) -> SscBatch:
    """DataLoader ``collate_fn``. An optional field must be present in all samples or in none."""
    if not samples:
        raise ValueError("empty batch")
    out = {}
    for f in fields(SscSample):
        values = [getattr(s, f.name) for s in samples]
        if isinstance(values[0], torch.Tensor):
            if any(v is None for v in values):
                raise ValueError(f"field {f.name!r} is missing in some samples of the batch")
            out[f.name] = torch.stack(values)
        elif values[0] is None:
            if any(v is not None for v in values):
                raise ValueError(f"field {f.name!r} is missing in some samples of the batch")
            out[f.name] = None
        else:
            out[f.name] = list(values)
    return SscBatch(**out)


def _f32(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, np.float32))


def assemble_sample(rgb: np.ndarray, K: np.ndarray, T_cam_grid: np.ndarray, out_hw: Tuple[int, int],
                    training: bool, sequence: str, frame_id: str, target_source: str,
                    target: Optional[np.ndarray] = None, invalid: Optional[np.ndarray] = None,
                    scan: Optional[np.ndarray] = None, stereo: Optional[np.ndarray] = None,
                    p_shift: Optional[np.ndarray] = None) -> SscSample:
    """Run the image pipeline and build a sample.

    ``scan`` (N, 3+) grid-frame points become the LiDAR depth map of the network input (projected through
    ``img_aug``, as the official lidar2depth does); ``stereo`` is an original-resolution depth map, resampled
    with the same resize/crop as the image.
    """
    image, img_aug = prepare_image(rgb, out_hw, jitter=training)
    lidar = None
    if scan is not None:
        lidar = torch.from_numpy(lidar_depth_map(scan, K, T_cam_grid, out_hw, img_aug))[None]
    stereo_t = None
    if stereo is not None:
        if stereo.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"stereo depth {stereo.shape[:2]} does not match the image {rgb.shape[:2]}")
        stereo_t = torch.from_numpy(resize_crop_depth(stereo, out_hw))[None]
    tgt = None if target is None else torch.from_numpy(np.ascontiguousarray(target, np.uint8))
    inv = None
    if tgt is not None:
        inv = torch.from_numpy(np.ascontiguousarray(invalid, bool)) if invalid is not None else tgt == 255
    shift = _f32(np.zeros(3) if p_shift is None else np.asarray(p_shift, np.float64).reshape(3))
    return SscSample(image=image, K=_f32(K), T_cam_grid=_f32(T_cam_grid), img_aug=_f32(img_aug), p_shift=shift,
                     target=tgt,
                     invalid=inv, lidar_depth=lidar, stereo_depth=stereo_t, sequence=sequence,
                     frame_id=frame_id, target_source=target_source)


def cached_array(path: Optional[Path], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``path`` if it exists, else compute and (when a path is given) store it atomically, so concurrent
    DataLoader workers never read a half-written file."""
    if path is not None and path.is_file():
        return np.load(path)
    arr = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npy", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)
    return arr
