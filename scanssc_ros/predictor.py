"""numpy image + camera (+ stereo depth) -> voxel labels and confidences. The one inference entry point used by
the ROS node, the CLIs and the demo; it imports no ROS.

Pre-processing follows the ScanSSC pipeline: resize so the width becomes the network input width (PIL bicubic,
as the official loader), keep the bottom rows (``geometry.input_transform``), ImageNet normalisation. A stereo
depth map gets the same transform; it is resized with a *minimum-preserving* nearest rule (each output pixel
takes the smallest valid depth of the source pixels it covers) so thin foreground structures are not replaced
by background, and invalid pixels (NaN, inf, <= 0) stay invalid (0).

``mark_unseen``: set voxels whose centre does not project into the image (or lies behind the camera) to 255
(unknown): the camera never saw them, so any label there is invented. Off by default here because the official
evaluation scores every voxel, including those out of view; the ROS node turns it on (parameter ``mark_unseen``).
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from scanssc_ros import geometry
from scanssc_ros.checkpoint import load
from scanssc_ros.config import ModelConfig
from scanssc_ros.data.image import crop_window, network_input
from scanssc_ros.malloc_tuning import tune_malloc
from scanssc_ros.model import fastpath
from scanssc_ros.model.decode import labels_confidence, labels_confidence_reference
from scanssc_ros.model.precision import check_precision, inference_precision
from scanssc_ros.model.scanssc import ModelInputs, ScanSSC
from scanssc_ros.model.timing import stage

UNKNOWN = 255
MIN_IMAGE_SIDE = 8  # px; smaller images carry no usable content and break the resize/crop arithmetic


def _image_layout() -> torch.memory_format:
    # the backbone's CPU fast path runs channels-last (no conversion needed then); the reference runs NCHW
    return torch.channels_last if fastpath.enabled() else torch.contiguous_format


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 (X, Y, Z) class ids; 255 = unknown (only with mark_unseen)
    confidence: np.ndarray  # uint8 (X, Y, Z) = round(255 * max softmax probability)
    timings: Dict[str, float]  # milliseconds per stage


_WORKER: Optional[ThreadPoolExecutor] = None
_WORKER_LOCK = threading.Lock()


def _worker() -> ThreadPoolExecutor:
    """One process-wide helper thread for the parts of preprocessing that overlap (created on first use)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanssc-preprocess")
        return _WORKER


def _forget_worker() -> None:
    # a forked child has no copy of the helper thread, and an executor that still lists it would queue work
    # nobody runs: the child makes its own on first use
    global _WORKER, _WORKER_LOCK
    _WORKER, _WORKER_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker)


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available in this torch build/machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r} (use 'cpu', 'cuda' or 'cuda:N')")
    return dev


def resize_depth_min(depth: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """Resize a metric depth map to (h, w). Shrinking an axis takes the minimum valid depth over each output
    pixel's footprint; growing it takes the nearest source pixel. Invalid (NaN, inf, <= 0) -> 0."""
    a = np.where(np.isfinite(depth) & (depth > 0), depth, np.inf).astype(np.float32)
    for axis, n in enumerate(out_hw):
        N = a.shape[axis]
        if n <= N:
            starts = np.floor(np.arange(n) * N / n).astype(np.int64)  # contiguous footprints [start_i, start_i+1)
            a = np.minimum.reduceat(a, starts, axis=axis)
        else:
            a = np.take(a, np.floor((np.arange(n) + 0.5) * N / n).astype(np.int64), axis=axis)
    return np.where(np.isfinite(a), a, 0.0).astype(np.float32)


class Predictor:
    def __init__(self, model_or_checkpoint: Union[str, Path, nn.Module], device: Union[str, torch.device] = "cpu",
                 precision: str = "fp32", config: Optional[ModelConfig] = None, mark_unseen: bool = False) -> None:
        self.device = resolve_device(device)
        check_precision(precision, self.device)
        self.precision = precision
        self.mark_unseen = mark_unseen
        # large CPU temporaries reuse freed memory instead of faulting in fresh pages each frame
        self.malloc_tuning = tune_malloc() if self.device.type == "cpu" else None
        self._unseen_cache: Tuple[bytes, Optional[np.ndarray]] = (b"", None)
        if isinstance(model_or_checkpoint, nn.Module):
            cfg = config if config is not None else getattr(model_or_checkpoint, "config", None)
            if not isinstance(cfg, ModelConfig):
                raise ValueError("a preloaded model needs its ModelConfig (pass config=...)")
            self.model, self.config = model_or_checkpoint, cfg
        else:
            self.model, self.config, _ = load(model_or_checkpoint, map_location="cpu")
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_config(cls, config: ModelConfig, **kwargs) -> Predictor:
        """An untrained model (random weights): for wiring tests and benchmarks only."""
        return cls(ScanSSC(config), config=config, **kwargs)

    # ------------------------------------------------------------------------------------------ validation
    def _validate(self, image: np.ndarray, K: np.ndarray, T: np.ndarray, stereo: Optional[np.ndarray],
                  p_shift: Optional[np.ndarray] = None) -> None:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be a uint8 HxWx3 RGB array, got {desc}")
        if image.shape[0] < MIN_IMAGE_SIDE or image.shape[1] < MIN_IMAGE_SIDE:
            raise ValueError(f"image too small: {image.shape}")
        for name, m, shape in (("K", K, (3, 3)), ("T_cam_grid", T, (4, 4))):
            m = np.asarray(m)
            if m.shape != shape:
                raise ValueError(f"{name} must be {shape}, got {m.shape}")
            if not np.all(np.isfinite(m)):
                raise ValueError(f"{name} contains non-finite values")
        K = np.asarray(K, np.float64)
        if K[0, 0] <= 0 or K[1, 1] <= 0 or abs(K[2, 2] - 1.0) > 1e-6 or np.any(K[2, :2] != 0):
            raise ValueError(f"K is not a pinhole intrinsics matrix: {K.tolist()}")
        if abs(np.linalg.det(np.asarray(T, np.float64)[:3, :3]) - 1.0) > 1e-3:
            raise ValueError("T_cam_grid rotation block is not a rotation (det != 1)")
        if p_shift is not None:
            shift = np.asarray(p_shift)
            if shift.shape != (3,) or not np.all(np.isfinite(shift)):
                raise ValueError(f"p_shift must be 3 finite numbers (P[:3, 3]), got {shift.tolist()}")
        if stereo is not None:
            if not isinstance(stereo, np.ndarray) or stereo.ndim != 2 or stereo.shape != image.shape[:2]:
                desc = stereo.shape if isinstance(stereo, np.ndarray) else type(stereo).__name__
                raise ValueError(f"stereo_depth must be an HxW array matching the image {image.shape[:2]}, got {desc}")
            if not np.issubdtype(stereo.dtype, np.floating):
                raise ValueError(f"stereo_depth must be float metres, got {stereo.dtype}")

    # ------------------------------------------------------------------------------------------ inference
    def preprocess(self, image: np.ndarray, K: np.ndarray, T_cam_grid: np.ndarray,
                   stereo_depth: Optional[np.ndarray] = None, p_shift: Optional[np.ndarray] = None) -> ModelInputs:
        self._validate(image, K, T_cam_grid, stereo_depth, p_shift)
        out_hw = self.config.input_size
        _, (rh, rw, top, left) = geometry.input_transform(image.shape[0], image.shape[1], out_hw)
        # the depth map is resized on the helper thread while this one starts on the image, whose resize the two
        # threads then share (numpy and PIL release the GIL; data.image.resize_bicubic): 15 -> 10 ms for KITTI
        depth = None if stereo_depth is None else _worker().submit(
            lambda: crop_window(resize_depth_min(stereo_depth, (rh, rw)), top, left, out_hw))
        x, aug = network_input(image, out_hw, channels_last=_image_layout() == torch.channels_last, pool=_worker())
        to = dict(device=self.device)
        sd = None if depth is None else torch.from_numpy(depth.result())[None, None].to(**to)
        return ModelInputs(
            image=x.to(**to),
            K=torch.as_tensor(np.asarray(K, np.float32))[None].to(**to),
            T_cam_grid=torch.as_tensor(np.asarray(T_cam_grid, np.float32))[None].to(**to),
            img_aug=torch.as_tensor(aug.astype(np.float32))[None].to(**to),
            stereo_depth=sd,
            p_shift=None if p_shift is None else torch.as_tensor(np.asarray(p_shift, np.float32))[None].to(**to))

    def unseen_mask(self, K: np.ndarray, T_cam_grid: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
        """(X, Y, Z) bool: voxel centres that do not project into the original image. Cached for the last camera:
        a fixed camera (every frame of a stream) pays the 2M-voxel projection once."""
        key = np.asarray(K, np.float64).tobytes() + np.asarray(T_cam_grid, np.float64).tobytes() + \
            np.asarray(image_hw, np.int64).tobytes()
        if self._unseen_cache[0] == key:
            return self._unseen_cache[1]
        centers = geometry.voxel_centers(self.config.grid).reshape(-1, 3).astype(np.float64)
        uv, d = geometry.project_points(centers, np.asarray(K, np.float64), np.asarray(T_cam_grid, np.float64))
        h, w = image_hw
        seen = (d > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        mask = ~seen.reshape(self.config.grid_dims)
        self._unseen_cache = (key, mask)
        return mask

    def predict(self, image_rgb: np.ndarray, K: np.ndarray, T_cam_grid: np.ndarray,
                stereo_depth: Optional[np.ndarray] = None, p_shift: Optional[np.ndarray] = None) -> Prediction:
        """``K``: the rectified intrinsics P[:3, :3]; ``T_cam_grid``: grid frame -> this camera's optical frame;
        ``p_shift``: P[:3, 3] of the same projection (None = zeros). With ``P = K [I | t]``, t is where the
        camera sits relative to the reference camera of the rectification (KITTI: camera 0), which is what
        checkpoints of the official convention were trained to see in their camera vector."""
        timings: Dict[str, float] = {}
        t0 = time.perf_counter()
        with stage(timings, "preprocess", self.device):
            inputs = self.preprocess(image_rgb, K, T_cam_grid, stereo_depth, p_shift)
        with torch.inference_mode(), inference_precision(self.device, self.precision):
            fast = fastpath.enabled()
            out = self.model(inputs, timings=timings, upsample=not fast)
            with stage(timings, "postprocess", self.device):
                if fast:
                    labels, confidence = labels_confidence(out.logits[0], self.config.grid_dims)
                else:
                    labels, confidence = labels_confidence_reference(out.logits[0])
                labels, confidence = labels.cpu().numpy(), confidence.cpu().numpy()
        if self.mark_unseen:
            labels[self.unseen_mask(K, T_cam_grid, image_rgb.shape[:2])] = UNKNOWN
        timings["total"] = (time.perf_counter() - t0) * 1000.0
        return Prediction(labels=labels, confidence=confidence, timings=timings)

