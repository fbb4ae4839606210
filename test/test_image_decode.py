"""Image / CameraInfo decoding against a per-pixel reference, plus malformed-input fuzzing."""
from __future__ import annotations

import math
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from scanssc_ros.ros.image_decode import (
    CameraInfoError,
    ImageDecodeError,
    camera_info_to_intrinsics,
    decode_image,
    image_to_depth,
    image_to_rgb,
)

BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "16UC1": 2, "32FC1": 4}


def make_msg(height: int, width: int, encoding: str, step: int, data: bytes, is_bigendian: int = 0):
    return SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=is_bigendian, step=step,
                           data=data)


def reference_decode(msg) -> np.ndarray:
    """One pixel at a time with struct, straight from the sensor_msgs/Image definition."""
    raw = bytes(msg.data)
    enc, h, w = msg.encoding, msg.height, msg.width
    bpp = BYTES_PER_PIXEL[enc]
    depth = enc in ("16UC1", "32FC1")
    out = np.zeros((h, w) if depth else (h, w, 3), np.float32 if depth else np.uint8)
    for r in range(h):
        for c in range(w):
            px = raw[r * msg.step + c * bpp: r * msg.step + (c + 1) * bpp]
            if enc == "16UC1":
                out[r, c] = struct.unpack(">H" if msg.is_bigendian else "<H", px)[0] / 1000.0
            elif enc == "32FC1":
                v = struct.unpack(">f" if msg.is_bigendian else "<f", px)[0]
                out[r, c] = v if math.isfinite(v) and v > 0 else 0.0
            elif enc == "mono8":
                out[r, c] = (px[0], px[0], px[0])
            elif enc.startswith("bgr"):
                out[r, c] = (px[2], px[1], px[0])
            else:
                out[r, c] = (px[0], px[1], px[2])
    return out


def random_msg(rng: np.random.Generator, encoding: str, pad: int, is_bigendian: int = 0):
    h, w = int(rng.integers(1, 9)), int(rng.integers(1, 11))
    step = w * BYTES_PER_PIXEL[encoding] + pad
    data = rng.integers(0, 256, size=h * step, dtype=np.uint8)
    if encoding == "32FC1":  # mostly plausible depths, with the invalid values sprinkled in
        vals = rng.uniform(-5, 80, size=(h, w)).astype(np.float32)
        vals.flat[rng.integers(0, vals.size, 3)] = [np.nan, np.inf, 0.0]
        rows = data.reshape(h, step)
        rows[:, : w * 4] = vals.astype(">f4" if is_bigendian else "<f4").view(np.uint8).reshape(h, w * 4)
    return make_msg(h, w, encoding, step, data.tobytes(), is_bigendian)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("pad", [0, 1, 5])
def test_color_matches_reference(encoding: str, pad: int) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{encoding}/{pad}".encode()))
    for _ in range(5):
        msg = random_msg(rng, encoding, pad)
        got = image_to_rgb(msg)
        assert got.dtype == np.uint8 and got.shape == (msg.height, msg.width, 3) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, reference_decode(msg))
        np.testing.assert_array_equal(decode_image(msg), got)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("pad", [0, 1, 6])
@pytest.mark.parametrize("big", [0, 1])
def test_depth_matches_reference(encoding: str, pad: int, big: int) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{encoding}/{pad}/{big}".encode()))
    for _ in range(5):
        msg = random_msg(rng, encoding, pad, big)
        got = image_to_depth(msg)
        assert got.dtype == np.float32 and got.shape == (msg.height, msg.width)
        np.testing.assert_allclose(got, reference_decode(msg), rtol=1e-6)
        assert np.all(np.isfinite(got)) and np.all(got >= 0)


def test_depth_invalid_values_become_zero() -> None:
    vals = np.array([[np.nan, np.inf, -np.inf, -1.0, 0.0, 2.5]], np.float32)
    got = image_to_depth(make_msg(1, 6, "32FC1", 24, vals.tobytes()))
    np.testing.assert_array_equal(got, [[0, 0, 0, 0, 0, 2.5]])
    mm = np.array([[0, 1, 65535]], "<u2")
    np.testing.assert_allclose(image_to_depth(make_msg(1, 3, "16UC1", 6, mm.tobytes())), [[0, 0.001, 65.535]],
                               rtol=1e-6)


def test_output_does_not_alias_the_message_buffer() -> None:
    data = bytearray(range(12))
    out = image_to_rgb(make_msg(2, 2, "rgb8", 6, data))
    out[:] = 0
    assert bytes(data) == bytes(range(12))


def test_real_rclpy_message() -> None:
    msg_mod = pytest.importorskip("sensor_msgs.msg")
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = msg_mod.Image(height=4, width=5, encoding="bgr8", step=15, data=rgb[:, :, ::-1].tobytes())
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("fields, match", [
    (dict(encoding="yuv422"), "unsupported"),
    (dict(encoding="8UC3"), "unsupported"),
    (dict(step=5), "shorter than a row"),
    (dict(data=bytes(11)), "expected step"),
    (dict(data=bytes(13)), "expected step"),
    (dict(height=0, data=b""), "zero"),
    (dict(width=0), "zero"),
    (dict(data=np.zeros(12, np.uint16)), "dtype"),
    (dict(height="2"), "not an integer"),
    (dict(encoding=None), "not a string"),
])
def test_malformed_raises_decode_error(fields, match) -> None:
    base = dict(height=2, width=2, encoding="rgb8", is_bigendian=0, step=6, data=bytes(12))
    base.update(fields)
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(SimpleNamespace(**base))


def test_wrong_family_is_rejected() -> None:
    with pytest.raises(ImageDecodeError, match="depth encoding"):
        image_to_depth(make_msg(1, 1, "rgb8", 3, bytes(3)))
    with pytest.raises(ImageDecodeError, match="colour encoding"):
        image_to_rgb(make_msg(1, 1, "16UC1", 2, bytes(2)))
    with pytest.raises(ImageDecodeError, match="is_bigendian"):
        image_to_depth(make_msg(1, 1, "16UC1", 2, bytes(2), is_bigendian=2))


def test_fuzz_only_decode_error_escapes() -> None:
    rng = np.random.default_rng(1234)
    encodings = list(BYTES_PER_PIXEL) + ["", "RGB8", "32FC3", "mono16", "\x00"]
    decoded = 0
    for _ in range(1500):
        h, w = (int(v) for v in rng.integers(-2, 7, 2))
        enc = encodings[rng.integers(len(encodings))]
        bpp = BYTES_PER_PIXEL.get(enc, 3)
        step = max(w, 0) * bpp + int(rng.integers(-3, 4)) if rng.random() < 0.8 else int(rng.integers(-9, 60))
        n = max(h, 0) * step + (int(rng.integers(-2, 3)) if rng.random() < 0.3 else 0)
        data = rng.integers(0, 256, max(n, 0), dtype=np.uint8).tobytes()
        msg = make_msg(h, w, enc, step, data, int(rng.integers(0, 3)))
        try:
            out = decode_image(msg)
        except ImageDecodeError:
            continue
        decoded += 1
        assert out.shape[:2] == (h, w)
        np.testing.assert_allclose(out, reference_decode(msg), rtol=1e-6)
    assert decoded > 50  # the fuzzer also exercises the success path


# ------------------------------------------------------------------------------------------------ camera_info
KITTI_P2 = np.array([[707.0912, 0, 601.8873, 46.88783], [0, 707.0912, 183.1104, 0.1178601], [0, 0, 1, 0.006203223]])


def camera_info(k=None, p=None, d=(0.0,) * 5, width=1226, height=370):
    return SimpleNamespace(width=width, height=height, k=np.zeros(9) if k is None else np.asarray(k).ravel(),
                           p=np.zeros(12) if p is None else np.asarray(p).ravel(), d=list(d),
                           header=SimpleNamespace(frame_id="cam2"))


def test_camera_info_intrinsics_come_from_p() -> None:
    model = camera_info_to_intrinsics(camera_info(p=KITTI_P2))
    np.testing.assert_allclose(model.K, KITTI_P2[:, :3])
    np.testing.assert_allclose(model.P, KITTI_P2)
    assert (model.width, model.height, model.frame_id, model.distorted) == (1226, 370, "cam2", False)


def test_camera_info_p_preferred_over_k_and_p_filled() -> None:
    """image_rect topics: P describes the rectified image, K the raw one (ROS CameraInfo convention)."""
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    model = camera_info_to_intrinsics(camera_info(k=K, p=KITTI_P2))
    np.testing.assert_allclose(model.K, KITTI_P2[:, :3])
    np.testing.assert_allclose(model.p_shift, KITTI_P2[:, 3])
    model = camera_info_to_intrinsics(camera_info(k=K, d=(0.1, 0, 0, 0, 0)))
    np.testing.assert_allclose(model.P, np.hstack([K, np.zeros((3, 1))]))
    assert model.distorted


@pytest.mark.parametrize("kwargs, match", [
    (dict(p=KITTI_P2, width=0), "zero image size"),
    (dict(p=KITTI_P2, height=0), "zero image size"),
    (dict(), "unusable"),
    (dict(k=np.full(9, np.nan)), "unusable"),
    # a negative K[2,2] used to flip fx and fy to negative values unnoticed
    (dict(k=np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, -1]])), "unusable"),
    (dict(k=np.array([[500.0, 0, 320], [0, 510, 240], [0.1, 0, 1]])), "unusable"),
    (dict(k=["a"] * 9), "not a list of numbers"),
    (dict(p=KITTI_P2, width=float("inf")), "not integer"),
])
def test_camera_info_errors(kwargs, match) -> None:
    with pytest.raises(CameraInfoError, match=match):
        camera_info_to_intrinsics(camera_info(**kwargs))


def test_camera_info_real_message() -> None:
    msg_mod = pytest.importorskip("sensor_msgs.msg")
    msg = msg_mod.CameraInfo(width=1226, height=370, p=KITTI_P2.ravel().tolist(), distortion_model="plumb_bob")
    msg.header.frame_id = "camera_color_left"
    model = camera_info_to_intrinsics(msg)
    np.testing.assert_allclose(model.K, KITTI_P2[:, :3])
    assert model.frame_id == "camera_color_left" and not model.distorted
