"""sensor_msgs/Image and CameraInfo -> numpy, without cv_bridge.

cv_bridge is deliberately not used (numpy-2 ABI breakage, not installable from PyPI for ROS 2); every supported
encoding is a plain reshape of the message buffer. The functions only read attributes (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``), so they accept rclpy messages, rosbags messages or any object
with those fields.

Anything that cannot be decoded unambiguously raises :class:`ImageDecodeError` (a ``ValueError``): an unknown
encoding, a buffer whose length is not ``step * height``, a ``step`` shorter than one row of pixels, zero sizes.
No other exception type escapes the decoders, so a node can catch exactly this one and drop the frame.

Depth convention: metres as float32 with **0.0 marking invalid pixels** for both depth encodings (16UC1 stores 0 for
"no return"; for 32FC1 NaN, +-inf and values <= 0 are mapped to 0.0). A single sentinel keeps masks simple
(``depth > 0``) and survives float16/integer casts, which NaN does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import numpy as np

from scanssc_ros.geometry import intrinsics_from_k_p


class ImageDecodeError(ValueError):
    """An Image message that cannot be decoded unambiguously."""


class CameraInfoError(ValueError):
    """A CameraInfo message without a usable pinhole model or image size."""


_COLOR: Dict[str, Tuple[int, Tuple[int, ...]]] = {
    # encoding -> (channels in the buffer, indices of R, G, B within a pixel)
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
_DEPTH: Dict[str, Tuple[str, float]] = {
    # encoding -> (numpy type without byte order, which comes from is_bigendian; scale to metres)
    "16UC1": ("u2", 1e-3),
    "32FC1": ("f4", 1.0),
}
COLOR_ENCODINGS = tuple(_COLOR)
DEPTH_ENCODINGS = tuple(_DEPTH)


def _as_int(value: Any, name: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageDecodeError(f"image {name} {value!r} is not an integer") from None
    if out != value:
        raise ImageDecodeError(f"image {name} {value!r} is not an integer")
    return out


def _buffer(data: Any) -> np.ndarray:
    """The message's ``data`` as a flat uint8 array (no copy for buffer-protocol objects)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageDecodeError(f"image data has dtype {data.dtype}, expected uint8")
        return data.reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast("B"), np.uint8)
    except (TypeError, ValueError):
        pass
    # rclpy with check_fields off accepts plain lists of ints
    try:
        arr = np.asarray(data)
    except Exception as exc:  # noqa: BLE001 - arbitrary user objects; the error type is our contract
        raise ImageDecodeError(f"image data of type {type(data).__name__} is not a byte buffer") from exc
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise ImageDecodeError(f"image data of type {type(data).__name__} is not a sequence of bytes")
    return arr.astype(np.uint8)


def _rows(msg: Any, bytes_per_pixel: int) -> np.ndarray:
    """Validate sizes and return the (height, width * bytes_per_pixel) uint8 view without row padding."""
    height = _as_int(msg.height, "height")
    width = _as_int(msg.width, "width")
    step = _as_int(msg.step, "step")
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image has zero or negative size {width}x{height}")
    row = width * bytes_per_pixel
    if step < row:
        raise ImageDecodeError(f"image step {step} is shorter than a row of {width} pixels ({row} bytes, "
                               f"encoding {msg.encoding!r})")
    buf = _buffer(msg.data)
    if buf.size != step * height:
        raise ImageDecodeError(f"image data has {buf.size} bytes, expected step*height = {step}*{height} = "
                               f"{step * height}")
    return buf.reshape(height, step)[:, :row]


def _encoding(msg: Any) -> str:
    enc = msg.encoding
    if not isinstance(enc, str):
        raise ImageDecodeError(f"image encoding {enc!r} is not a string")
    # exact match, as in sensor_msgs/image_encodings.hpp: a misspelt encoding is an error, not a guess
    return enc


def image_to_rgb(msg: Any) -> np.ndarray:
    """Colour or mono8 Image -> (H, W, 3) uint8 RGB, a fresh C-contiguous array (never a view of the message)."""
    enc = _encoding(msg)
    if enc not in _COLOR:
        raise ImageDecodeError(f"unsupported colour encoding {msg.encoding!r}; supported: {', '.join(COLOR_ENCODINGS)}")
    channels, order = _COLOR[enc]
    rows = _rows(msg, channels)
    pixels = rows.reshape(rows.shape[0], -1, channels)
    if enc == "rgb8":
        return pixels.copy()
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def image_to_depth(msg: Any) -> np.ndarray:
    """16UC1 (millimetres) or 32FC1 (metres) Image -> (H, W) float32 metres, 0.0 where invalid."""
    enc = _encoding(msg)
    if enc not in _DEPTH:
        raise ImageDecodeError(f"unsupported depth encoding {msg.encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}")
    base, scale = _DEPTH[enc]
    big = _as_int(msg.is_bigendian, "is_bigendian")
    if big not in (0, 1):
        raise ImageDecodeError(f"image is_bigendian must be 0 or 1, got {big}")
    dtype = np.dtype((">" if big else "<") + base)
    rows = _rows(msg, dtype.itemsize)
    # a padded step makes rows non-contiguous; the dtype view needs contiguous rows
    values = np.ascontiguousarray(rows).view(dtype)
    if enc == "16UC1":
        return values.astype(np.float32) * np.float32(scale)
    depth = values.astype(np.float32)
    depth[~(np.isfinite(depth) & (depth > 0))] = 0.0
    return depth


def decode_image(msg: Any) -> np.ndarray:
    """Any supported Image: colour encodings -> (H, W, 3) uint8 RGB, depth encodings -> (H, W) float32 metres."""
    enc = _encoding(msg)
    if enc in _DEPTH:
        return image_to_depth(msg)
    if enc in _COLOR:
        return image_to_rgb(msg)
    raise ImageDecodeError(f"unsupported image encoding {msg.encoding!r}; supported: "
                           f"{', '.join(COLOR_ENCODINGS + DEPTH_ENCODINGS)}")


# ------------------------------------------------------------------------------------------------ camera_info
@dataclass(frozen=True)
class CameraModel:
    """What the node needs from a CameraInfo: K (3x3 rectified intrinsics: P[:3, :3], or K when P is all zeros),
    P (3x4) and the image size."""

    K: np.ndarray
    P: np.ndarray
    width: int
    height: int
    frame_id: str
    distorted: bool  # any nonzero distortion coefficient (D describes the raw image)
    K_raw: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))  # CameraInfo.k: the raw sensor image
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    distortion_model: str = ""

    @property
    def looks_unrectified(self) -> bool:
        """Distortion coefficients while the projection is just K (or empty): a camera_info like that does not
        describe a rectified image, so the images on this topic are probably raw."""
        return self.distorted and np.allclose(self.K_raw, self.K)

    @property
    def p_shift(self) -> np.ndarray:
        """P[:3, 3] in the scale where P[2, 2] = 1: where the camera sits relative to the rectification's
        reference camera (KITTI camera 2: ~(46.9, 0.12, 0.0062) px; 0 for a ROS left camera)."""
        return self.P[:, 3] / self.P[2, 2]


def _numbers(values: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(values, np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CameraInfoError(f"camera_info {name} is not a list of numbers ({exc})") from None


def camera_info_to_intrinsics(msg: Any) -> CameraModel:
    """CameraInfo -> :class:`CameraModel`. The intrinsics are P[:, :3] (the rectified camera), or K when P is
    all zeros, and then P becomes [K | 0]. Raises :class:`CameraInfoError` without a usable model."""
    try:
        width, height = int(msg.width), int(msg.height)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CameraInfoError(f"camera_info size {msg.width!r}x{msg.height!r} is not integer") from exc
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"camera_info has zero image size {width}x{height}: not calibrated")
    k, p, d = (_numbers(getattr(msg, name, None), name) for name in ("k", "p", "d"))
    if k.size != 9 or p.size != 12:
        raise CameraInfoError(f"camera_info k/p have {k.size}/{p.size} values, expected 9/12")
    try:
        K = intrinsics_from_k_p(k, p)
    except ValueError as exc:
        raise CameraInfoError(str(exc)) from None
    P = p.reshape(3, 4).copy()
    if not np.any(P):
        P = np.hstack([K, np.zeros((3, 1))])
    header = getattr(msg, "header", None)
    frame_id = str(getattr(header, "frame_id", "")) if header is not None else ""
    r = getattr(msg, "r", None)
    r = _numbers(np.eye(3) if r is None else r, "r")
    R = r.reshape(3, 3) if r.size == 9 else np.eye(3)
    return CameraModel(K=K, P=P, width=width, height=height, frame_id=frame_id, distorted=bool(np.any(d != 0)),
                       K_raw=k.reshape(3, 3), D=d, R=R, distortion_model=str(getattr(msg, "distortion_model", "")))
