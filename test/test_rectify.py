"""Raw (distorted) images rectified with their CameraInfo: against an image distorted from a known rectified one."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from scanssc_ros.ros.image_decode import camera_info_to_intrinsics
from scanssc_ros.ros.rectify import Rectifier, RectifyError

W, H = 320, 240
K = np.array([[260.0, 0, 161.0], [0, 262.0, 118.0], [0, 0, 1]])
D = np.array([-0.28, 0.08, 0.001, -0.0005, 0.0])
P = np.array([[230.0, 0, 160.0, 0], [0, 230.0, 120.0, 0], [0, 0, 1, 0]])


def _info(**kw):
    base = dict(width=W, height=H, k=K.reshape(-1).tolist(), d=D.tolist(), r=np.eye(3).reshape(-1).tolist(),
                p=P.reshape(-1).tolist(), distortion_model="plumb_bob", header=SimpleNamespace(frame_id="cam"))
    base.update(kw)
    return SimpleNamespace(**base)


def _scene() -> np.ndarray:
    """A smooth rectified test pattern (smooth, so bilinear resampling errors stay small)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([127 + 100 * np.sin(u / 9.0), 127 + 100 * np.cos(v / 7.0), 127 + 60 * np.sin((u + v) / 13.0)], -1)
    return img.astype(np.uint8)


def _distort(rect: np.ndarray) -> np.ndarray:
    """The raw image the camera would have taken: each raw pixel looks up where it lands in the rectified image."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    raw_px = np.stack([u.ravel(), v.ravel()], -1)[:, None, :]
    rect_px = cv2.undistortPoints(raw_px, K, D, R=np.eye(3), P=P[:3, :3]).reshape(H, W, 2).astype(np.float32)
    return cv2.remap(rect, rect_px[..., 0], rect_px[..., 1], cv2.INTER_LINEAR)


def test_rectifying_the_distorted_image_recovers_the_rectified_one():
    rect = _scene()
    raw = _distort(rect)
    cam = camera_info_to_intrinsics(_info())
    assert cam.distorted and not cam.looks_unrectified  # P differs from K: a proper rectified calibration
    out = Rectifier()(raw, cam)
    inner = (slice(40, H - 40), slice(50, W - 50))  # the border has pixels the raw image never saw
    err = np.abs(out[inner].astype(float) - rect[inner].astype(float))
    assert np.median(err) < 2.0 and np.percentile(err, 99) < 12.0
    # without rectification the raw image is far off: the check above is not trivially true
    assert np.median(np.abs(raw[inner].astype(float) - rect[inner].astype(float))) > 10.0


def test_maps_are_cached_and_bad_calibrations_refused():
    r = Rectifier()
    cam = camera_info_to_intrinsics(_info())
    a = r.maps(cam.K_raw, cam.D, cam.R, cam.P, (W, H), cam.distortion_model)
    assert r.maps(cam.K_raw, cam.D, cam.R, cam.P, (W, H), cam.distortion_model) is a
    with pytest.raises(RectifyError, match="distortion_model 'unknown'"):
        r(np.zeros((H, W, 3), np.uint8), camera_info_to_intrinsics(_info(distortion_model="unknown")))
    with pytest.raises(RectifyError, match="K is all zeros"):
        r(np.zeros((H, W, 3), np.uint8), camera_info_to_intrinsics(_info(k=[0.0] * 9)))
    fish = camera_info_to_intrinsics(_info(distortion_model="equidistant", d=[0.05, 0.01, 0.0, 0.0]))
    assert r(np.zeros((H, W, 3), np.uint8), fish).shape == (H, W, 3)


def test_a_camera_info_whose_p_is_k_looks_unrectified():
    assert camera_info_to_intrinsics(_info(p=np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist())).looks_unrectified
    assert not camera_info_to_intrinsics(_info(d=[0.0] * 5, p=np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist())
                                         ).looks_unrectified


def test_frame_processor_rectifies_raw_images_only_when_asked():
    from scanssc_ros.ros.frame_processor import FrameProcessor

    rect = _scene()
    raw = _distort(rect)
    msg = SimpleNamespace(width=W, height=H, encoding="rgb8", is_bigendian=0, step=W * 3, data=raw.tobytes(),
                          header=SimpleNamespace(frame_id="cam"))
    cam = camera_info_to_intrinsics(_info())
    inner = (slice(40, H - 40), slice(50, W - 50))
    on = FrameProcessor(None, np.eye(4), use_cv_bridge=False, rectify=True).rgb(msg, "left/image_rect", cam)
    off = FrameProcessor(None, np.eye(4), use_cv_bridge=False).rgb(msg, "left/image_rect", cam)
    assert np.median(np.abs(on[inner].astype(float) - rect[inner])) < 2.0
    assert np.array_equal(off, raw)
