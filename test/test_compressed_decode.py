"""CompressedImage (JPEG / PNG) decoding: round trips against the pixels that were encoded, image_transport's format
strings, every malformed input as ImageDecodeError before OpenCV allocates pixels, and the FrameProcessor path
(PNG-compressed input gives the predictor exactly what raw input gives)."""
from __future__ import annotations

import struct
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from scanssc_ros.ros.compressed_decode import (  # noqa: E402
    compressed_header,
    compressed_to_rgb,
    is_compressed,
    parse_format,
)
from scanssc_ros.ros.image_decode import ImageDecodeError  # noqa: E402


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A camera-like image (smooth gradients plus mild texture), so JPEG errors are what real frames see."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200, y / h * 200, (x + y) / (w + h) * 255], axis=2)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)).astype(np.float32), (0, 0), 2)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, codec: str, quality: int = 95, as_rgb: bool = False) -> bytes:
    pixels = rgb if as_rgb or rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", pixels,
                            [cv2.IMWRITE_JPEG_QUALITY, quality] if codec == "jpeg" else [])
    assert ok
    return data.tobytes()


def cmsg(fmt, data):
    return SimpleNamespace(header=SimpleNamespace(), format=fmt, data=data)


RGB = smooth_rgb(37, 53)


@pytest.mark.parametrize("fmt", ["rgb8; png compressed bgr8", "bgr8; png compressed bgr8", "png",
                                 "rgba8; png compressed bgr8", "  png  "])
def test_png_round_trip_is_exact(fmt: str) -> None:
    out = compressed_to_rgb(cmsg(fmt, encode(RGB, "png")))
    assert out.dtype == np.uint8 and out.shape == RGB.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_rgb_ordered_compressed_pixels_are_not_swapped() -> None:
    # "compressed rgb8": the publisher handed the encoder an RGB buffer as is (image_transport swaps back only
    # for "compressed bgr")
    out = compressed_to_rgb(cmsg("rgb8; png compressed rgb8", encode(RGB, "png", as_rgb=True)))
    np.testing.assert_array_equal(out, RGB)


def test_mono_round_trip() -> None:
    grey = RGB[:, :, 1].copy()
    out = compressed_to_rgb(cmsg("mono8; png compressed ", encode(grey, "png")))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("fmt", ["rgb8; jpeg compressed bgr8", "jpeg", "jpg"])
def test_jpeg_round_trip_is_close(fmt: str) -> None:
    rgb = smooth_rgb(120, 160, seed=3)
    out = compressed_to_rgb(cmsg(fmt, encode(rgb, "jpeg", 95)))
    err = np.abs(out.astype(int) - rgb.astype(int))
    # colours in the right order: a swapped R/B would be off by the gradient (tens of levels)
    assert err.mean() < 2.0 and np.percentile(err, 99) < 12, (err.mean(), np.percentile(err, 99))


@pytest.mark.parametrize("h, w", [(8, 8), (1, 300), (370, 1226), (17, 9)])
@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_header_size_matches_the_decoded_size(codec: str, h: int, w: int) -> None:
    data = encode(smooth_rgb(h, w), codec)
    header = compressed_header(cmsg(codec, data))
    assert (header.codec, header.width, header.height) == (codec, w, h)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (h, w)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment holding one Orientation tag, inserted after SOI."""
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_exif_orientation_does_not_rotate_the_camera_image() -> None:
    rgb = smooth_rgb(40, 90)
    data = _with_exif_orientation(encode(rgb, "jpeg"), 6)  # 6: "rotate 90 degrees clockwise to display"
    # the tag is effective: OpenCV's default reading turns the image
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (90, 40)
    assert compressed_header(cmsg("jpeg", data)).width == 90
    out = compressed_to_rgb(cmsg("jpeg", data))
    assert out.shape == (40, 90, 3) and np.abs(out.astype(int) - rgb).mean() < 2.0


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose IHDR claims another size (a decompression bomb's header)."""
    data = bytearray(encode(smooth_rgb(8, 8), "png"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


JPEG = encode(RGB, "jpeg")
PNG = encode(RGB, "png")


def _flip(data: bytes, start: int, step: int) -> bytes:
    out = bytearray(data)
    for i in range(start, len(out) - 16, step):
        out[i] ^= 0x55
    return bytes(out)


@pytest.mark.parametrize("fmt, data, match", [
    ("jpeg", b"", "has no data"),
    ("jpeg", b"\x00" * 64, "neither JPEG nor PNG"),
    ("png", b"GIF89a" + bytes(40), "neither JPEG nor PNG"),
    ("jpeg", PNG, "says jpeg but the data is png"),
    ("rgb8; png compressed bgr8", JPEG, "says png but the data is jpeg"),
    ("", JPEG, "unsupported compressed image format ''"),
    ("tiff", JPEG, "unsupported compressed image format 'tiff'"),
    ("JPEG", JPEG, "unsupported compressed image format 'JPEG'"),
    ("rgb8; jpeg bgr8", JPEG, "unsupported compressed image format"),
    ("rgb8; webp compressed bgr8", JPEG, "unsupported compressed image format"),
    ("16UC1; compressedDepth png", PNG, "compressedDepth"),
    ("rgb16; png compressed bgr16", PNG, "encoding 'rgb16'"),
    ("yuv422; jpeg compressed bgr8", JPEG, "encoding 'yuv422'"),
    (None, JPEG, "not a string"),
    ("jpeg", JPEG[: len(JPEG) // 2], "JPEG data is truncated: the end-of-image marker is missing"),
    ("jpeg", JPEG[:30], "JPEG data is truncated"),
    ("jpeg", b"\xff\xd8\xff\xd9", "image data starts before a frame header"),
    ("jpeg", b"\xff\xd8" + b"\x12" * 20, "expected a marker at byte 2"),
    ("png", PNG[:-1], "PNG data is truncated"),
    ("png", PNG[:20], "no IHDR header"),
    ("png", _flip(PNG, 60, 9), "OpenCV could not decode the png data"),
    ("png", encode(np.zeros((9, 9), np.uint16) + 300, "png"), "16-bit"),
])
def test_malformed_raises_decode_error(fmt, data, match) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        compressed_to_rgb(cmsg(fmt, data))


def test_damaged_jpeg_scan_data_decodes_with_artefacts() -> None:
    """The documented gap: bytes flipped inside the entropy-coded data (headers and end marker intact) are only a
    libjpeg warning; the result is an image of the right size, not an error."""
    data = _flip(JPEG, 700, 7)
    out = compressed_to_rgb(cmsg("jpeg", data))
    assert out.shape == RGB.shape and np.abs(out.astype(int) - RGB).mean() > 5


def test_size_is_read_without_decoding() -> None:
    data = _png_claiming(100000, 100000)
    t = time.perf_counter()
    header = compressed_header(cmsg("png", data))
    assert (header.width, header.height) == (100000, 100000)
    assert time.perf_counter() - t < 0.05 and len(data) < 1000


def test_fuzz_only_decode_error_escapes() -> None:
    """Cut, flipped and spliced payloads with assorted formats: every outcome is ImageDecodeError or an RGB image
    of the size the header states."""
    rng = np.random.default_rng(7)
    sources = [(codec, encode(smooth_rgb(int(h), int(w), seed=i), codec))
               for i, (codec, h, w) in enumerate([("jpeg", 20, 31), ("png", 20, 31), ("jpeg", 64, 8),
                                                  ("png", 9, 40)])]
    formats = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed bgr8", "mono8; jpeg compressed ",
               "x", "; jpeg compressed", "rgb8;"]
    outcomes = {"decoded": 0, "error": 0}
    for _ in range(600):
        codec, data = sources[rng.integers(len(sources))]
        buf = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:
            buf = buf[: rng.integers(0, len(buf) + 1)]
        elif kind == 1:
            for i in rng.integers(0, len(buf), rng.integers(1, 8)):
                buf[i] = int(rng.integers(256))
        elif kind == 2:
            other = sources[rng.integers(len(sources))][1]
            cut = int(rng.integers(0, min(len(buf), len(other))))
            buf = buf[:cut] + bytearray(other[cut:])
        fmt = codec if rng.random() < 0.6 else formats[rng.integers(len(formats))]
        msg = cmsg(fmt, bytes(buf))
        try:
            out = compressed_to_rgb(msg)
        except ImageDecodeError:
            outcomes["error"] += 1
            continue
        header = compressed_header(msg)
        assert out.shape == (header.height, header.width, 3) and out.dtype == np.uint8
        outcomes["decoded"] += 1
    assert outcomes["decoded"] > 100 and outcomes["error"] > 100, outcomes


def test_parse_format_and_message_kind() -> None:
    assert parse_format("rgb8; jpeg compressed bgr8") == ("jpeg", False)
    assert parse_format("bgr8; png compressed rgb8") == ("png", True)
    assert parse_format("mono8; jpeg compressed ") == ("jpeg", False)
    assert parse_format("png") == ("png", False)
    assert is_compressed(cmsg("jpeg", b""))
    assert not is_compressed(SimpleNamespace(header=None, encoding="rgb8", format="x", data=b""))


def test_real_rclpy_message() -> None:
    msg_mod = pytest.importorskip("sensor_msgs.msg")
    msg = msg_mod.CompressedImage(format="rgb8; png compressed bgr8", data=PNG)
    np.testing.assert_array_equal(compressed_to_rgb(msg), RGB)


# --------------------------------------------------------------------------------- FrameProcessor (no ROS)
class Recorder:
    """Predictor stand-in that keeps its inputs."""

    def __init__(self) -> None:
        from scanssc_ros.config import variant

        self.config = variant("tiny")
        self.inputs = []

    def predict(self, image, K, T, stereo_depth=None, p_shift=None):
        from scanssc_ros.predictor import Prediction

        self.inputs.append((image.copy(), None if stereo_depth is None else stereo_depth.copy()))
        shape = self.config.grid_dims
        return Prediction(labels=np.zeros(shape, np.uint8), confidence=np.zeros(shape, np.uint8), timings={})


def _frame_set(left, right, w: int, h: int):
    from scanssc_ros.ros.frame_sync import FrameSet

    fx = 707.0912 / 2

    def info(tx: float):
        return SimpleNamespace(width=w, height=h, k=[fx, 0, w / 2, 0, fx, h / 2, 0, 0, 1],
                               p=[fx, 0, w / 2, -fx * tx, 0, fx, h / 2, 0, 0, 0, 1, 0], d=[0.0] * 5,
                               header=SimpleNamespace(frame_id="cam"))

    stamp = SimpleNamespace(sec=1, nanosec=0)
    for m in (left, right):
        m.header = SimpleNamespace(stamp=stamp, frame_id="cam")
    return FrameSet(left=left, left_info=info(0.0), right=right, right_info=info(0.54))


def _raw(rgb):
    h, w = rgb.shape[:2]
    return SimpleNamespace(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.tobytes())


def test_png_input_gives_the_predictor_what_raw_input_gives() -> None:
    from scanssc_ros.ros.frame_processor import FrameError, FrameProcessor

    h, w = 120, 260
    wide = smooth_rgb(h, w + 20, seed=5)
    left, right = np.ascontiguousarray(wide[:, 20:]), np.ascontiguousarray(wide[:, :w])
    rec = Recorder()
    proc = FrameProcessor(rec, np.eye(4), use_cv_bridge=False)
    proc.process(_frame_set(_raw(left), _raw(right), w, h))
    proc.process(_frame_set(cmsg("rgb8; png compressed bgr8", encode(left, "png")),
                            cmsg("rgb8; png compressed bgr8", encode(right, "png")), w, h))
    (img_raw, prior_raw), (img_png, prior_png) = rec.inputs
    np.testing.assert_array_equal(img_png, img_raw)
    np.testing.assert_array_equal(prior_png, prior_raw)
    # limits and sizes come from the header, with the compressed topic's name in the reason
    with pytest.raises(FrameError, match="left/image_rect/compressed: image 100000x100000 exceeds"):
        proc.process(_frame_set(cmsg("png", _png_claiming(100000, 100000)), _raw(right), w, h))
    with pytest.raises(FrameError, match=f"right/image_rect/compressed: image is 200x100 but its camera_info "
                                         f"says {w}x{h}"):
        proc.process(_frame_set(cmsg("png", encode(left, "png")), cmsg("png", encode(smooth_rgb(100, 200), "png")),
                                w, h))
