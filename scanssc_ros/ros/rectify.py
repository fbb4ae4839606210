"""Undistort + rectify raw camera images with their CameraInfo (K, D, R, P), for cameras without image_proc.

ROS convention: ``K``/``D`` describe the raw sensor image, ``R`` rotates it into the rectified frame and
``P[:3, :3]`` is the rectified camera, which is what the model is given. The OpenCV maps depend only on the
calibration, so they are computed once per camera_info content and reused for every frame.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import cv2
import numpy as np

# CameraInfo.distortion_model -> the OpenCV map builder that understands its coefficients
PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
FISHEYE_MODELS = ("equidistant",)


class RectifyError(ValueError):
    pass


class Rectifier:
    def __init__(self) -> None:
        self._maps: Dict[bytes, Tuple[np.ndarray, np.ndarray]] = {}

    def maps(self, K: np.ndarray, D: np.ndarray, R: np.ndarray, P: np.ndarray, size: Tuple[int, int],
             model: str) -> Tuple[np.ndarray, np.ndarray]:
        key = b"".join(np.ascontiguousarray(a, np.float64).tobytes() for a in (K, D, R, P)) + \
            np.asarray(size, np.int64).tobytes() + model.encode()
        cached = self._maps.get(key)
        if cached is not None:
            return cached
        if not np.any(K) or K[2, 2] == 0:
            raise RectifyError("rectify_input needs the raw intrinsics K in camera_info, and K is all zeros")
        R = R if np.any(R) else np.eye(3)  # an unset R (all zeros) means no rectifying rotation
        newK = np.asarray(P, np.float64)[:3, :3]
        if model in PINHOLE_MODELS or (model == "" and not np.any(D)):
            m1, m2 = cv2.initUndistortRectifyMap(K, D, R, newK, size, cv2.CV_32FC1)
        elif model in FISHEYE_MODELS:
            if D.size < 4:
                raise RectifyError(f"equidistant distortion needs 4 coefficients, camera_info has {D.size}")
            m1, m2 = cv2.fisheye.initUndistortRectifyMap(K, D[:4], R, newK, size, cv2.CV_32FC1)
        else:
            raise RectifyError(f"cannot rectify distortion_model {model!r}; supported: "
                               f"{', '.join(PINHOLE_MODELS + FISHEYE_MODELS)}")
        if len(self._maps) > 8:  # a handful of cameras at most; a changing calibration must not grow this forever
            self._maps.clear()
        self._maps[key] = pair = (m1, m2)
        return pair

    def __call__(self, image: np.ndarray, cam: Any) -> np.ndarray:
        h, w = image.shape[:2]
        m1, m2 = self.maps(cam.K_raw, cam.D, cam.R, cam.P, (w, h), cam.distortion_model)
        return cv2.remap(image, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
