"""The ScanSSC image pipeline: resize to the network width, keep the bottom rows, colour jitter, normalise.

The geometry of the resize/crop lives in ``geometry.input_transform`` (``img_aug``); everything here applies that
same matrix, so a pixel of the network input and the projection ``img_aug @ K`` always agree.
"""
from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np
import torch
from PIL import Image

from scanssc_ros.geometry import input_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def load_rgb(path: Union[str, Path]) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def crop_window(img: np.ndarray, top: int, left: int, out_hw: Tuple[int, int]) -> np.ndarray:
    """The ``out_hw`` window of ``img`` starting at (top, left); parts outside the image are zeros (PIL's crop)."""
    out = np.zeros(tuple(out_hw) + img.shape[2:], img.dtype)
    h, w = img.shape[:2]
    r0, r1 = max(top, 0), min(top + out_hw[0], h)
    c0, c1 = max(left, 0), min(left + out_hw[1], w)
    if r1 > r0 and c1 > c0:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = img[r0:r1, c0:c1]
    return out


def resize_crop_image(img: np.ndarray, out_hw: Tuple[int, int] = (384, 1280)) -> Tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image -> (out_h, out_w, 3) network window and the 3x3 ``img_aug`` that maps original
    pixels to window pixels.

    Resampled with PIL's default bicubic filter, as the official loader (``PIL.Image.resize``) does, so the
    released weights see the pixels they were trained on.
    """
    img_aug, (rh, rw, top, left) = input_transform(img.shape[0], img.shape[1], out_hw)
    if (rh, rw) != img.shape[:2]:
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((rw, rh), Image.Resampling.BICUBIC))
    return crop_window(img, top, left, out_hw), img_aug


def resize_bicubic(img: np.ndarray, size: Tuple[int, int], pool: Optional[Executor] = None) -> np.ndarray:
    """PIL's bicubic resize of an (H, W, 3) uint8 image to ``size`` (width, height), split between this thread
    and ``pool`` (PIL releases the GIL while it resamples), bitwise the same: PIL resamples horizontally into an
    8-bit image and then vertically, the horizontal pass treats each row alone and the vertical pass each
    column alone, with coefficients that depend only on the two sizes. So the horizontal pass runs on two bands
    of rows and the vertical one on two bands of columns. KITTI's 1226 x 370 to 1280 x 386: 9.3 ms in one call."""
    rw, rh = size
    h, w = img.shape[:2]

    def resample(a: np.ndarray, wh: Tuple[int, int]) -> np.ndarray:
        return np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize(wh, Image.Resampling.BICUBIC))

    if pool is None or min(h, w, rh, rw) < 2:
        return resample(img, (rw, rh)) if (rh, rw) != (h, w) else img
    if rw != w:
        bottom = pool.submit(resample, img[h // 2:], (rw, h - h // 2))
        img = np.concatenate([resample(img[:h // 2], (rw, h // 2)), bottom.result()])
    if rh != h:
        out = np.empty((rh, rw, 3), np.uint8)
        right = pool.submit(resample, img[:, rw // 2:], (rw - rw // 2, rh))
        out[:, :rw // 2] = resample(img[:, :rw // 2], (rw // 2, rh))
        out[:, rw // 2:] = right.result()
        img = out
    return img


def network_input(img: np.ndarray, out_hw: Tuple[int, int] = (384, 1280), channels_last: bool = False,
                  pool: Optional[Executor] = None) -> Tuple[torch.Tensor, np.ndarray]:
    """``prepare_image`` without jitter as one (1, 3, out_h, out_w) float32 batch (channels-last memory if asked),
    the same values, built for inference: the resize shared with ``pool`` (``resize_bicubic``), the window taken
    as a view where it lies inside the resized image, and the normalisation run on rows of interleaved pixels
    (a per-channel constant broadcast over channels-last memory is an innermost loop of 3)."""
    img_aug, (rh, rw, top, left) = input_transform(img.shape[0], img.shape[1], out_hw)
    img = resize_bicubic(img, (rw, rh), pool)
    oh, ow = out_hw
    if top >= 0 and left >= 0 and top + oh <= rh and left + ow <= rw:
        img = img[top:top + oh, left:left + ow]
    else:
        img = crop_window(img, top, left, out_hw)
    x = torch.empty((1, oh, ow, 3), dtype=torch.float32)
    x[0].copy_(torch.from_numpy(np.ascontiguousarray(img)))
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).repeat(ow)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).repeat(ow)
    x.view(oh, ow * 3).div_(255.0).sub_(mean).div_(std)  # normalize(to_float_tensor(.)): the same float ops
    x = x.permute(0, 3, 1, 2)
    return (x if channels_last else x.contiguous()), img_aug


def resize_crop_depth(depth: np.ndarray, out_hw: Tuple[int, int] = (384, 1280)) -> np.ndarray:
    """(H, W) depth map -> (out_h, out_w) by nearest sampling through ``img_aug``.

    Nearest (not bilinear, as a PIL/cv2 resize would do) so that invalid pixels (0) are never blended into valid
    depths and no depth is invented between a foreground and a background surface. Pixels that fall outside the
    original image (top padding) are 0.
    """
    h, w = depth.shape[:2]
    img_aug, _ = input_transform(h, w, out_hw)
    s, tx, ty = img_aug[0, 0], img_aug[0, 2], img_aug[1, 2]
    u = np.rint((np.arange(out_hw[1]) - tx) / s).astype(np.int64)
    v = np.rint((np.arange(out_hw[0]) - ty) / s).astype(np.int64)
    ok_u, ok_v = (u >= 0) & (u < w), (v >= 0) & (v < h)
    out = np.zeros(out_hw, np.float32)
    out[np.ix_(ok_v, ok_u)] = depth[np.ix_(v[ok_v], u[ok_u])]
    return out


def to_float_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def _gray(img: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY_WEIGHTS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True)


def _blend(img: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * img + (1.0 - factor) * other).clamp_(0.0, 1.0)


def color_jitter(img: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random brightness / contrast / saturation on a (3, H, W) float image in [0, 1], in random order.

    Each factor is drawn from U[max(0, 1 - s), 1 + s]; brightness scales the image, contrast blends it with its
    mean grey level, saturation with its per-pixel grey image (the torchvision ColorJitter definitions, hue 0).
    Random numbers come from torch so DataLoader workers get distinct streams.
    """
    def draw(s: float) -> float:
        lo, hi = max(0.0, 1.0 - s), 1.0 + s
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    ops = torch.randperm(3, generator=generator).tolist()
    factors = [draw(brightness), draw(contrast), draw(saturation)]
    for op in ops:
        f = factors[op]
        if op == 0:
            img = (img * f).clamp_(0.0, 1.0)
        elif op == 1:
            img = _blend(img, _gray(img).mean(), f)
        else:
            img = _blend(img, _gray(img), f)
    return img


def normalize(img: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img - mean) / std


def prepare_image(img: np.ndarray, out_hw: Tuple[int, int] = (384, 1280), jitter: bool = False,
                  generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, np.ndarray]:
    """(H, W, 3) uint8 RGB -> normalised (3, out_h, out_w) float32 network input and ``img_aug``.

    Jitter is applied after the resize/crop, as in the official pipeline, so a top-padded black band (KITTI-360)
    takes part in the contrast mean exactly like the official PIL padding does.
    """
    out, img_aug = resize_crop_image(img, out_hw)
    t = to_float_tensor(out)
    if jitter:
        t = color_jitter(t, generator=generator)
    return normalize(t), img_aug
