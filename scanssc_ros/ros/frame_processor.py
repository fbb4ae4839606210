"""One input set -> one prediction: decode and check the messages, compute the depth prior, run the Predictor.

No rclpy here; the node calls :meth:`FrameProcessor.process` from its worker thread. Every problem with the input
raises :class:`FrameError` with a message naming the topic and what is wrong, so the node can skip the frame, count
it and say why, and carry on with the next one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from scanssc_ros.data.depth import SgbmParams, stereo_depth
from scanssc_ros.geometry import stereo_baseline
from scanssc_ros.predictor import MIN_IMAGE_SIDE, Prediction
from scanssc_ros.ros.compressed_decode import compressed_header, compressed_to_rgb, is_compressed
from scanssc_ros.ros.frame_sync import FrameSet
from scanssc_ros.ros.image_decode import (
    CameraInfoError,
    CameraModel,
    ImageDecodeError,
    camera_info_to_intrinsics,
    image_to_depth,
    image_to_rgb,
)
from scanssc_ros.ros.rectify import Rectifier, RectifyError

MAX_PIXELS = 4096 * 4096  # larger images are refused before decoding (a corrupt size would exhaust memory)


class FrameError(ValueError):
    """An input set that cannot be processed; the message says which input and why."""


@dataclass
class FrameResult:
    stamp: Any  # the left image's builtin_interfaces/Time, reused by every output
    camera_frame: str
    prediction: Prediction
    timings: Dict[str, float] = field(default_factory=dict)  # ms: decode, depth_prior, inference
    looks_unrectified: bool = False  # the left camera_info describes a raw, distorted image (CameraModel)


def _cv_bridge_rgb() -> Optional[Callable[[Any], np.ndarray]]:
    """ROS cv_bridge's conversion when it is installed and works with this numpy (its numpy-2 ABI break makes
    an import succeed and the first conversion crash), else None."""
    try:
        from cv_bridge import CvBridge  # noqa: PLC0415 - optional dependency
        from sensor_msgs.msg import Image  # noqa: PLC0415

        bridge = CvBridge()
        probe = Image(height=1, width=2, encoding="bgr8", step=6, data=bytes([1, 2, 3, 4, 5, 6]))
        if bridge.imgmsg_to_cv2(probe, desired_encoding="rgb8").tolist() != [[[3, 2, 1], [6, 5, 4]]]:
            return None
    except Exception:  # noqa: BLE001 - any failure means: use our decoder
        return None

    def convert(msg: Any) -> np.ndarray:
        if msg.encoding not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
            return image_to_rgb(msg)  # same errors for unsupported encodings as without cv_bridge
        return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))

    return convert


def _check_size(msg: Any, topic: str) -> None:
    try:
        h, w = int(msg.height), int(msg.width)
    except (TypeError, ValueError, OverflowError):
        raise FrameError(f"{topic}: image size {msg.width!r}x{msg.height!r} is not integer") from None
    _check_dims(w, h, topic)


def _check_dims(w: int, h: int, topic: str) -> None:
    if h <= 0 or w <= 0:
        raise FrameError(f"{topic}: empty image ({w}x{h})")
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise FrameError(f"{topic}: image {w}x{h} is smaller than the {MIN_IMAGE_SIDE} px minimum")
    if h * w > MAX_PIXELS:
        raise FrameError(f"{topic}: image {w}x{h} exceeds the {MAX_PIXELS} pixel limit")


class FrameProcessor:
    def __init__(self, predictor: Any, cam_from_grid: np.ndarray, sgbm: SgbmParams = SgbmParams(),
                 use_cv_bridge: bool = True, rectify: bool = False) -> None:
        self.predictor = predictor
        self.rectifier = Rectifier() if rectify else None  # raw images in: undistort + rectify with camera_info
        self.cam_from_grid = np.asarray(cam_from_grid, np.float64).reshape(4, 4)
        self.sgbm = sgbm
        self._rgb = (_cv_bridge_rgb() if use_cv_bridge else None) or image_to_rgb
        self.uses_cv_bridge = self._rgb is not image_to_rgb
        self._info_cache: Dict[str, Tuple[Any, CameraModel]] = {}

    # ------------------------------------------------------------------------------------------ decoding
    def camera(self, msg: Any, topic: str) -> CameraModel:
        cached = self._info_cache.get(topic)
        if cached is not None and cached[0] is msg:
            return cached[1]
        try:
            cam = camera_info_to_intrinsics(msg)
        except CameraInfoError as exc:
            raise FrameError(f"{topic}: {exc}") from None
        self._info_cache[topic] = (msg, cam)
        return cam

    def rgb(self, msg: Any, topic: str, cam: CameraModel) -> np.ndarray:
        rgb = self._decode_rgb(msg, topic, cam)
        if self.rectifier is None:
            return rgb
        try:
            return self.rectifier(rgb, cam)
        except RectifyError as exc:
            raise FrameError(f"{topic}: {exc}") from None

    def _decode_rgb(self, msg: Any, topic: str, cam: CameraModel) -> np.ndarray:
        if is_compressed(msg):
            return self._compressed_rgb(msg, topic + "/compressed", cam)
        _check_size(msg, topic)
        if (int(msg.width), int(msg.height)) != (cam.width, cam.height):
            raise FrameError(f"{topic}: image is {msg.width}x{msg.height} but its camera_info says "
                             f"{cam.width}x{cam.height}")
        try:
            return self._rgb(msg)
        except ImageDecodeError as exc:
            raise FrameError(f"{topic}: {exc}") from None

    def _compressed_rgb(self, msg: Any, topic: str, cam: CameraModel) -> np.ndarray:
        # the size comes from the PNG/JPEG header, so the limits hold before OpenCV allocates the pixels
        try:
            header = compressed_header(msg)
        except ImageDecodeError as exc:
            raise FrameError(f"{topic}: {exc}") from None
        _check_dims(header.width, header.height, topic)
        if (header.width, header.height) != (cam.width, cam.height):
            raise FrameError(f"{topic}: image is {header.width}x{header.height} but its camera_info says "
                             f"{cam.width}x{cam.height}")
        try:
            return compressed_to_rgb(msg, header)
        except ImageDecodeError as exc:
            raise FrameError(f"{topic}: {exc}") from None

    def depth(self, msg: Any, topic: str, hw: Tuple[int, int]) -> np.ndarray:
        _check_size(msg, topic)
        if (int(msg.height), int(msg.width)) != tuple(hw):
            raise FrameError(f"{topic}: depth image is {msg.width}x{msg.height} but the left image is "
                             f"{hw[1]}x{hw[0]} (register the depth to the left camera)")
        try:
            depth = image_to_depth(msg)  # NaN/inf/<=0 -> 0 = invalid
        except ImageDecodeError as exc:
            raise FrameError(f"{topic}: {exc}") from None
        if not np.any(depth > 0):
            raise FrameError(f"{topic}: depth image has no valid pixel")
        return depth

    # ------------------------------------------------------------------------------------------ processing
    def process(self, fs: FrameSet, cam_from_grid: Optional[np.ndarray] = None) -> FrameResult:
        """Decode, depth prior, inference. ``cam_from_grid``: this frame's grid -> camera transform (from TF);
        default the fixed one given at construction."""
        T = self.cam_from_grid if cam_from_grid is None else cam_from_grid
        t0 = time.perf_counter()
        cam = self.camera(fs.left_info, "left/camera_info")
        rgb = self.rgb(fs.left, "left/image_rect", cam)
        timings = {"decode": 0.0, "depth_prior": 0.0}
        prior: Optional[np.ndarray] = None
        if fs.right is not None:
            rcam = self.camera(fs.right_info, "right/camera_info")
            right = self.rgb(fs.right, "right/image_rect", rcam)
            if right.shape != rgb.shape:
                right_topic = "right/image_rect" + ("/compressed" if is_compressed(fs.right) else "")
                raise FrameError(f"{right_topic} is {right.shape[1]}x{right.shape[0]} but the left image is "
                                 f"{rgb.shape[1]}x{rgb.shape[0]}")
            if not (np.all(np.isfinite(cam.P)) and np.all(np.isfinite(rcam.P)) and cam.P[0, 0] > 0):
                raise FrameError("stereo baseline: the camera_info P matrices are not finite or have no focal "
                                 f"length (left P[0,0] = {cam.P[0, 0]})")
            baseline = stereo_baseline(cam.P, rcam.P)
            if not (np.isfinite(baseline) and baseline > 0):
                raise FrameError(f"stereo baseline from the camera_info P matrices is {baseline:.4f} m; expected "
                                 "> 0 (right camera to the right of the left one, P[0,3] = -fx * baseline)")
            timings["decode"] = (time.perf_counter() - t0) * 1e3
            t1 = time.perf_counter()
            try:
                prior = stereo_depth(rgb, right, float(cam.K[0, 0]), baseline, self.sgbm)
            except ValueError as exc:  # e.g. images narrower than the SGBM disparity range
                raise FrameError(f"stereo matching: {exc}") from None
            timings["depth_prior"] = (time.perf_counter() - t1) * 1e3
        elif fs.depth is not None:
            prior = self.depth(fs.depth, "depth/image", rgb.shape[:2])
            timings["decode"] = (time.perf_counter() - t0) * 1e3
        else:
            timings["decode"] = (time.perf_counter() - t0) * 1e3
        t2 = time.perf_counter()
        try:
            prediction = self.predictor.predict(rgb, cam.K, T, prior, p_shift=cam.p_shift)
        except ValueError as exc:  # the Predictor's own input checks (e.g. K not a pinhole matrix)
            raise FrameError(f"rejected by the predictor: {exc}") from None
        timings["inference"] = (time.perf_counter() - t2) * 1e3
        return FrameResult(stamp=fs.left.header.stamp, camera_frame=cam.frame_id or str(fs.left.header.frame_id),
                           prediction=prediction, timings=timings, looks_unrectified=cam.looks_unrectified)
