"""Synthetic, KITTI-like model inputs for tests and benchmarks (no data files needed).

The camera is the SemanticKITTI sequence-08 left colour camera (rounded); the stereo depth is a flat ground
plane 1.73 m below the camera with a wall at ``wall_m`` metres, so the voxel proposal has a realistic size.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from scanssc_ros.config import ModelConfig
from scanssc_ros.geometry import input_transform

from .scanssc import ModelInputs

KITTI_K = np.array([[707.09, 0.0, 601.89], [0.0, 707.09, 183.11], [0.0, 0.0, 1.0]])
# velodyne -> colour camera (optical axes: x right, y down, z forward); camera 0.27 m ahead, 0.08 m below
KITTI_T_CAM_GRID = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27],
                             [0.0, 0.0, 0.0, 1.0]])
KITTI_IMAGE_HW = (370, 1226)
KITTI_P_SHIFT = np.array([46.89, 0.12, 0.0062])  # P2[:3, 3]: camera 2 sits 0.06 m left of the reference camera


def synthetic_depth(K: np.ndarray, image_hw: Tuple[int, int], cam_height: float = 1.73, wall_m: float = 30.0
                    ) -> np.ndarray:
    """(H, W) metric depth of a ground plane + fronto-parallel wall as seen by a level camera."""
    h, w = image_hw
    v = np.arange(h, dtype=np.float64)[:, None] + np.zeros((1, w))
    below = v > K[1, 2] + 1e-3
    ground = np.where(below, K[1, 1] * cam_height / np.maximum(v - K[1, 2], 1e-3), np.inf)
    return np.minimum(ground, wall_m).astype(np.float32)


def example_inputs(cfg: ModelConfig, batch_size: int = 1, stereo: bool = True, seed: int = 0,
                   device: Optional[torch.device] = None, wall_m: Tuple[float, ...] = (30.0, 18.0)) -> ModelInputs:
    """Random image, KITTI camera, synthetic stereo depth (sample i uses wall distance wall_m[i % len])."""
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.input_size
    aug, (rh, rw, _, _) = input_transform(*KITTI_IMAGE_HW, out_hw=cfg.input_size)
    image = torch.randn(batch_size, 3, H, W, generator=g)
    depths = []
    for i in range(batch_size):
        d = synthetic_depth(KITTI_K * np.array([[rw / KITTI_IMAGE_HW[1]], [rh / KITTI_IMAGE_HW[0]], [1.0]]),
                            (rh, rw), wall_m=wall_m[i % len(wall_m)])
        depths.append(torch.from_numpy(d[rh - H:] if rh >= H else np.pad(d, ((H - rh, 0), (0, 0)))))
    rep = (batch_size, 1, 1)
    inputs = ModelInputs(
        image=image,
        K=torch.as_tensor(KITTI_K, dtype=torch.float32)[None].repeat(*rep),
        T_cam_grid=torch.as_tensor(KITTI_T_CAM_GRID, dtype=torch.float32)[None].repeat(*rep),
        img_aug=torch.as_tensor(aug, dtype=torch.float32)[None].repeat(*rep),
        stereo_depth=torch.stack(depths)[:, None] if stereo else None,
        p_shift=torch.as_tensor(KITTI_P_SHIFT, dtype=torch.float32)[None].repeat(batch_size, 1),
    )
    return inputs.to(device) if device is not None else inputs
