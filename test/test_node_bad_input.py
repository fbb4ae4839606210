"""Bad input against the running node: every case is skipped and counted by reason with a clear log line, and
the next good frame gives a correct output. The same cases, with what was observed, are the table in
docs/reliability.md; keep the two in step.

In-process node (FakePredictor, real topics through the middleware) for the message cases and runtime parameter
updates; the installed executable for the start-up refusals; the installed console scripts for the bag tools.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")

from nodeutil import (  # noqa: E402
    FX,
    P_LEFT,
    P_RIGHT,
    FakePredictor,
    Graph,
    H,
    Probe,
    W,
    close_graphs,
    image_msg,
    info_msg,
    make_node,
    same_voxels,
    textured_pair,
    wait_for,
)

from scanssc_ros.bag.lockstep import installed_executable  # noqa: E402
from scanssc_ros.ros.frame_sync import PARTNER_BUFFER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXECUTABLE = installed_executable()  # the build of the sourced distribution (scripts/env.sh)
LEFT, RIGHT = textured_pair(0)
DEPTH = np.full((H, W), 8.0, np.float32)
GOOD_T = 50.0
SKIP = "skip"  # send_set: do not publish this message


def compressed_msg(rgb: np.ndarray, t: float, frame: str = "camera_left", fmt: str = "rgb8; png compressed bgr8",
                   data: Optional[bytes] = None):
    """A CompressedImage as image_transport writes it (PNG unless ``fmt``/``data`` say otherwise)."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    if data is None:
        data = cv2.imencode(".jpg" if "jpeg" in fmt else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    msg = CompressedImage(format=fmt, data=data)
    msg.header = image_msg(np.zeros((1, 1, 3), np.uint8), t, frame=frame).header
    return msg


def image_topics(transport: str) -> Tuple[str, str]:
    suffix = "/compressed" if transport == "compressed" else ""
    return "left/image_rect" + suffix, "right/image_rect" + suffix


def send_set(probe: Probe, mode: str, t: float, left: Any = None, left_info: Any = None, right: Any = None,
             right_info: Any = None, depth: Any = None, transport: str = "raw") -> None:
    """Publish one input set for ``mode`` (camera_info first, then the partner, then the left image that
    completes it); None = the good message at stamp ``t``, SKIP = leave it out, a callable makes the message
    (large ones are built only when sent), anything else is sent as is. ``transport`` compressed: the images go
    to <image topic>/compressed as PNG CompressedImages."""
    make = image_msg if transport == "raw" else compressed_msg
    left_topic, right_topic = image_topics(transport)
    msgs = [("left/camera_info", left_info, lambda: info_msg(P_LEFT, t))]
    if mode == "stereo":
        msgs += [("right/camera_info", right_info, lambda: info_msg(P_RIGHT, t, frame="camera_right")),
                 (right_topic, right, lambda: make(RIGHT, t, frame="camera_right"))]
    elif mode == "depth":
        msgs.append(("depth/image", depth, lambda: image_msg(DEPTH, t)))
    msgs.append((left_topic, left, lambda: make(LEFT, t)))
    for topic, given, good in msgs:
        if given is not SKIP:
            probe.pub[topic].publish(good() if given is None else given() if callable(given) else given)


def raw_image(t: float, h: int, w: int, encoding: str, step: int, data: bytes):
    """An Image with exactly these fields (image_msg derives them from an array)."""
    msg = image_msg(np.zeros((1, 1, 3), np.uint8), t)
    msg.height, msg.width, msg.encoding, msg.step, msg.data = h, w, encoding, step, data
    return msg


def info(t: float, P=P_LEFT, w: int = W, h: int = H, k=None, frame: str = "camera_left", d=None):
    msg = info_msg(P, t, frame=frame, w=w, h=h)
    if k is not None:
        msg.k = [float(v) for v in k]
    if d is not None:
        msg.d = [float(v) for v in d]
    return msg


def depth_msg(t: float, values: np.ndarray):
    return image_msg(np.ascontiguousarray(values), t)


def textured(h: int, w: int, seed: int = 0, shift: int = 0) -> np.ndarray:
    wide = np.random.default_rng(seed).integers(0, 256, size=(h, w + 20, 3), dtype=np.uint8)
    return np.ascontiguousarray(wide[:, 20 - shift: 20 - shift + w])


def partly_invalid_depth() -> np.ndarray:
    d = np.full((H, W), 8.0, np.float32)
    d[:, : W // 4] = np.nan
    d[:, W // 4: W // 2] = np.inf
    d[: H // 2, W // 2: 3 * W // 4] = -3.0
    return d


def send_frames(n: int, t0: float, each: Callable[[Probe, float], None]) -> Callable[[Probe, Any], None]:
    def send(probe: Probe, node: Any) -> None:
        for i in range(n):
            each(probe, t0 + 0.1 * i)
            wait_for(lambda i=i: node.stats.frames_in >= i + 1, 5.0)
    return send


@dataclass
class Case:
    id: str
    send: Callable[[Probe, Any], None]  # (probe, node): publish the bad input
    drops: Dict[str, int]  # node.drops after the bad input, exactly
    log: str  # part of a line the node logs on /rosout
    mode: str = "stereo"
    outputs: int = 0  # outputs the bad input itself gives (a held frame released, a frame processed anyway)
    diag: Optional[Tuple[str, str]] = None  # (key, value) seen on /diagnostics while in the bad state
    final_drops: Optional[Dict[str, int]] = None  # node.drops after the good frame, when it adds some
    check: Optional[Callable[[Any, Probe], None]] = None
    release: Optional[Callable[[Probe, Any], None]] = None  # ends the bad state before the counts are checked
    predictor: Callable[[], Any] = field(default=FakePredictor)
    transport: str = "raw"  # the node's image_transport


def one(mode: str = "stereo", t: float = 10.0, **kw) -> Callable[[Probe, Any], None]:
    return lambda probe, node: send_set(probe, mode, t, **kw)


def _no_invalid_prior(node: Any, probe: Probe) -> None:
    prior = node.predictor.calls[0]["stereo"]
    ref = partly_invalid_depth()
    assert prior is not None and np.all(np.isfinite(prior)), "NaN/inf reached the predictor"
    assert np.all(prior[~(np.isfinite(ref) & (ref > 0))] == 0) and np.all(prior[ref == 8.0] == 8.0)


def _large_image_processed(node: Any, probe: Probe) -> None:
    assert node.predictor.calls[0]["shape"] == (3000, 4000, 3)


def _duplicate_once(probe: Probe, node: Any) -> None:
    send_set(probe, "mono", 10.0)
    assert wait_for(lambda: len(probe.got["grid"]) == 1, 10.0)
    send_set(probe, "mono", 10.0)


def _time_goes_back(probe: Probe, node: Any) -> None:
    send_set(probe, "mono", 10.0)
    assert wait_for(lambda: len(probe.got["grid"]) == 1, 10.0)
    send_set(probe, "mono", 5.0)


def _other_camera_info_then_frame(probe: Probe, node: Any) -> None:
    probe.pub["left/camera_info"].publish(info(5.0, w=640, h=200))
    probe.pub["right/camera_info"].publish(info(5.0, P_RIGHT, w=640, h=200, frame="camera_right"))
    assert wait_for(lambda: _info_stamp(node.sync.left_info) == 5.0 and _info_stamp(node.sync.right_info) == 5.0,
                    10.0)
    send_set(probe, "stereo", 10.0, left_info=SKIP, right_info=SKIP)


def _partner_buffer_bounded(node: Any, probe: Probe) -> None:
    assert len(node.sync._partners) == PARTNER_BUFFER


def _faulty_predictor() -> FakePredictor:
    pred = FakePredictor()
    pred.fail_next = 1
    return pred


def png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A 16x16 PNG whose header claims another size: what a decompression bomb looks like before decoding."""
    import struct
    import zlib

    data = bytearray(png_bytes(textured(16, 16)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def flipped(data: bytes, start: int, step: int) -> bytes:
    out = bytearray(data)
    for i in range(start, len(out) - 16, step):
        out[i] ^= 0x55
    return bytes(out)


def compressed(fmt: str = "rgb8; png compressed bgr8", data: Any = None, rgb: np.ndarray = LEFT, t: float = 10.0,
               frame: str = "camera_left") -> Callable[[], Any]:
    return lambda: compressed_msg(rgb, t, frame=frame, fmt=fmt, data=data() if callable(data) else data)


def one_c(mode: str = "stereo", t: float = 10.0, **kw) -> Callable[[Probe, Any], None]:
    return lambda probe, node: send_set(probe, mode, t, transport="compressed", **kw)


BIG = 4097  # one pixel per side over the 4096 x 4096 limit
CASES = [
    # ---------------------------------------------------------------------------------------- encodings
    Case("unknown-encoding", one(left=image_msg(LEFT, 10.0, encoding="yuv422")), {"rejected": 1},
         "left/image_rect: unsupported colour encoding 'yuv422'"),
    Case("misspelt-encoding", one(left=image_msg(LEFT, 10.0, encoding="RGB8")), {"rejected": 1},
         "unsupported colour encoding 'RGB8'"),
    Case("depth-encoding-on-colour-topic", one(left=image_msg(DEPTH, 10.0)), {"rejected": 1},
         "left/image_rect: unsupported colour encoding '32FC1'"),
    Case("colour-encoding-on-depth-topic", one("depth", depth=image_msg(LEFT, 10.0)), {"rejected": 1},
         "depth/image: unsupported depth encoding 'rgb8'", mode="depth"),
    # ------------------------------------------------------------------------------------ sizes and buffers
    Case("image-size-differs-from-camera-info", one(left=image_msg(np.zeros((10, 12, 3), np.uint8), 10.0)),
         {"rejected": 1}, f"left/image_rect: image is 12x10 but its camera_info says {W}x{H}"),
    Case("right-size-differs-from-left",
         one(right=image_msg(textured(200, 640), 10.0, frame="camera_right"),
             right_info=info(10.0, P_RIGHT, w=640, h=200, frame="camera_right")),
         {"rejected": 1}, f"right/image_rect is 640x200 but the left image is {W}x{H}"),
    Case("depth-size-differs-from-left", one("depth", depth=depth_msg(10.0, np.full((50, 100), 5.0, np.float32))),
         {"rejected": 1}, f"depth/image: depth image is 100x50 but the left image is {W}x{H}", mode="depth"),
    Case("truncated-data", one(left=raw_image(10.0, H, W, "rgb8", W * 3, LEFT.tobytes()[: W * 3 * H // 2])),
         {"rejected": 1}, f"image data has {W * 3 * H // 2} bytes, expected step*height"),
    Case("step-shorter-than-row", one(left=raw_image(10.0, H, W, "rgb8", W * 3 - 3, bytes((W * 3 - 3) * H))),
         {"rejected": 1}, f"image step {W * 3 - 3} is shorter than a row of {W} pixels"),
    Case("empty-image", one(left=raw_image(10.0, 0, 0, "rgb8", 0, b"")), {"rejected": 1},
         "left/image_rect: empty image (0x0)"),
    Case("1x1-image", one("mono", left=raw_image(10.0, 1, 1, "rgb8", 3, b"\x01\x02\x03"),
                          left_info=info(10.0, [1.0, 0, 0.5, 0, 0, 1.0, 0.5, 0, 0, 0, 1, 0], w=1, h=1)),
         {"rejected": 1}, "left/image_rect: image 1x1 is smaller than the 8 px minimum", mode="mono"),
    # 191 px: OpenCV's SGBM crashed the whole process (SIGSEGV/SIGFPE) on images num_disparities - 1 wide
    Case("stereo-narrower-than-disparity-range",
         one(left=image_msg(textured(100, 191), 10.0), right=image_msg(textured(100, 191, shift=5), 10.0),
             left_info=info(10.0, w=191, h=100), right_info=info(10.0, P_RIGHT, w=191, h=100)),
         {"rejected": 1}, "stereo matching: stereo images 191 px wide; SGBM needs more than"),
    Case("huge-claimed-size", one(left=raw_image(10.0, 100000, 100000, "rgb8", 300000, bytes(300))),
         {"rejected": 1}, "left/image_rect: image 100000x100000 exceeds the 16777216 pixel limit"),
    Case("very-large-image", one("mono", left=lambda: image_msg(np.zeros((BIG, BIG), np.uint8), 10.0, "mono8"),
                                 left_info=info(10.0, w=BIG, h=BIG)),
         {"rejected": 1}, f"left/image_rect: image {BIG}x{BIG} exceeds the 16777216 pixel limit", mode="mono"),
    Case("large-image-within-limit", one("mono", left=lambda: image_msg(np.zeros((3000, 4000), np.uint8), 10.0,
                                                                        encoding="mono8"),
                                         left_info=info(10.0, w=4000, h=3000)),
         {}, "", mode="mono", outputs=1, check=_large_image_processed),
    # ------------------------------------------------------------------------------------------ camera_info
    Case("zero-intrinsics", one(left_info=info(10.0, [0.0] * 12, k=[0.0] * 9)), {"rejected": 1},
         "left/camera_info: unusable camera intrinsics (K and P give fx=0.0, fy=0.0,"),
    # the intrinsics of a rectified image are P[:3, :3] (K describes the raw image and is not read)
    Case("nan-intrinsics", one(left_info=info(10.0, [np.nan, 0, 300, 0, 0, FX, 90, 0, 0, 0, 1, 0])), {"rejected": 1},
         "left/camera_info: unusable camera intrinsics (K and P give fx=nan"),
    Case("nan-right-projection", one(right_info=info(10.0, [np.nan] * 12, k=[FX, 0, 300, 0, FX, 90, 0, 0, 1],
                                                      frame="camera_right")),
         {"rejected": 1}, "right/camera_info: unusable camera intrinsics (K and P give fx=nan"),
    Case("left-right-swapped", one(left_info=info(10.0, P_RIGHT), right_info=info(10.0, P_LEFT, frame="camera_right")),
         {"rejected": 1}, "stereo baseline from the camera_info P matrices is -0.5379 m; expected > 0"),
    Case("uncalibrated-camera-info", one(left_info=info(10.0, w=0, h=0)), {"rejected": 1},
         "left/camera_info: camera_info has zero image size 0x0: not calibrated"),
    Case("distorted-camera-info", one("mono", left_info=info(10.0, d=[-0.3, 0.1, 0, 0, 0])), {},
         "left/camera_info has distortion coefficients but its projection P is just K", mode="mono", outputs=1),
    # no camera_info: each frame waits for it (WAIT_LIMIT), then is dropped naming what was missing
    Case("no-camera-info",
         send_frames(4, 10.0, lambda p, t: send_set(p, "stereo", t, left_info=SKIP, right_info=SKIP)),
         {"no_camera_info": 4}, "left image dropped (no_camera_info): no left/camera_info message received",
         diag=("dropped/no_camera_info", "4")),
    # only an older camera_info of another camera (the demo's synthetic scene before the KITTI frames): never used
    Case("camera-info-of-another-camera", _other_camera_info_then_frame, {"no_camera_info": 1},
         "(640x200, frame 'camera_left', stamped -5.000 s from the image) does not describe this 621x188, frame "
         "'camera_left' image"),
    # ------------------------------------------------------------------------------------------ pairing
    Case("stamps-never-match",
         send_frames(12, 10.0, lambda p, t: send_set(p, "stereo", t, right=image_msg(RIGHT, t + 0.05,
                                                                                        frame="camera_right"))),
         # frames 0.1 s apart with rights 0.05 s late: the nearest buffered right is +-0.05 s, by arrival order
         {"unpaired": 12}, "0.050 s from the left image's (sync_tolerance 0.02 s)",
         diag=("dropped/unpaired", "12"), check=_partner_buffer_bounded),
    Case("right-image-never-arrives", send_frames(4, 10.0, lambda p, t: send_set(p, "stereo", t, right=SKIP)),
         {"unpaired": 4}, "no right/image_rect message buffered"),
    Case("duplicate-frame", _duplicate_once, {"duplicate": 1}, "dropped a second frame stamped 10.000 s",
         mode="mono", outputs=1),
    Case("time-goes-back", _time_goes_back, {}, "input time went back 5.000 s; following it", mode="mono",
         outputs=2),
    # ------------------------------------------------------------------------------------------ depth values
    Case("depth-all-nan", one("depth", depth=depth_msg(10.0, np.full((H, W), np.nan, np.float32))),
         {"rejected": 1}, "depth/image: depth image has no valid pixel", mode="depth"),
    Case("depth-all-inf", one("depth", depth=depth_msg(10.0, np.full((H, W), np.inf, np.float32))),
         {"rejected": 1}, "depth/image: depth image has no valid pixel", mode="depth"),
    Case("depth-all-negative", one("depth", depth=depth_msg(10.0, np.full((H, W), -2.0, np.float32))),
         {"rejected": 1}, "depth/image: depth image has no valid pixel", mode="depth"),
    Case("depth-16uc1-all-zero", one("depth", depth=depth_msg(10.0, np.zeros((H, W), np.uint16))),
         {"rejected": 1}, "depth/image: depth image has no valid pixel", mode="depth"),
    Case("depth-partly-nan-inf-negative", one("depth", depth=depth_msg(10.0, partly_invalid_depth())), {}, "",
         mode="depth", outputs=1, check=_no_invalid_prior),
    # ------------------------------------------------------------------------------------------ faults
    Case("model-raises", one("mono"), {"failed": 1}, "RuntimeError: injected model fault", mode="mono",
         predictor=_faulty_predictor),
    # ------------------------------------------------------------------- compressed input (image_transport)
    Case("compressed-empty-payload", one_c(left=compressed("jpeg", b"")), {"rejected": 1},
         "left/image_rect/compressed: compressed image has no data", transport="compressed"),
    Case("compressed-not-an-image", one_c(left=compressed("jpeg", bytes(range(256)) * 4)), {"rejected": 1},
         "left/image_rect/compressed: compressed image data is neither JPEG nor PNG (first bytes: 00 01 02",
         transport="compressed"),
    Case("compressed-corrupt-png", one_c(left=compressed("png", lambda: flipped(png_bytes(LEFT), 60, 9))),
         {"rejected": 1}, "left/image_rect/compressed: OpenCV could not decode the png data",
         transport="compressed"),
    Case("compressed-truncated-jpeg",
         one_c(left=compressed("rgb8; jpeg compressed bgr8", lambda: jpeg_bytes(LEFT)[:20000])), {"rejected": 1},
         "left/image_rect/compressed: JPEG data is truncated: the end-of-image marker is missing (20000 bytes)",
         transport="compressed"),
    Case("compressed-truncated-png",
         one_c(right=compressed("png", lambda: png_bytes(RIGHT)[:-100], frame="camera_right")), {"rejected": 1},
         "right/image_rect/compressed: PNG data is truncated", transport="compressed"),
    Case("compressed-format-names-other-codec", one_c(left=compressed("rgb8; jpeg compressed bgr8",
                                                                      lambda: png_bytes(LEFT))),
         {"rejected": 1}, "format 'rgb8; jpeg compressed bgr8' says jpeg but the data is png",
         transport="compressed"),
    Case("compressed-unknown-format", one_c(left=compressed("rgb8; tiff compressed bgr8")), {"rejected": 1},
         "left/image_rect/compressed: unsupported compressed image format 'rgb8; tiff compressed bgr8'",
         transport="compressed"),
    Case("compressed-empty-format", one_c(left=compressed("")), {"rejected": 1},
         "unsupported compressed image format ''", transport="compressed"),
    Case("compressed-depth-format-on-colour-topic", one_c(left=compressed("16UC1; compressedDepth png")),
         {"rejected": 1}, "format '16UC1; compressedDepth png' is compressedDepth (a depth image)",
         transport="compressed"),
    Case("compressed-16-bit-original", one_c(left=compressed("rgb16; png compressed bgr16")), {"rejected": 1},
         "compressed image of encoding 'rgb16' (format 'rgb16; png compressed bgr16') is not supported",
         transport="compressed"),
    Case("compressed-size-differs-from-camera-info",
         one_c(left=compressed(rgb=np.zeros((10, 12, 3), np.uint8))), {"rejected": 1},
         f"left/image_rect/compressed: image is 12x10 but its camera_info says {W}x{H}", transport="compressed"),
    Case("compressed-right-size-differs-from-left",
         one_c(right=compressed(rgb=textured(200, 640), frame="camera_right"),
               right_info=info(10.0, P_RIGHT, w=640, h=200, frame="camera_right")),
         {"rejected": 1}, f"right/image_rect/compressed is 640x200 but the left image is {W}x{H}",
         transport="compressed"),
    Case("compressed-huge-claimed-size", one_c(left=compressed("png", lambda: png_claiming(100000, 100000))),
         {"rejected": 1}, "left/image_rect/compressed: image 100000x100000 exceeds the 16777216 pixel limit",
         transport="compressed"),
    Case("compressed-4x4-image", one_c("mono", left=compressed(rgb=textured(4, 4)),
                                       left_info=info(10.0, [4.0, 0, 2, 0, 0, 4.0, 2, 0, 0, 0, 1, 0], w=4, h=4)),
         {"rejected": 1}, "left/image_rect/compressed: image 4x4 is smaller than the 8 px minimum", mode="mono",
         transport="compressed"),
    Case("compressed-jpeg-is-processed", one_c(left=compressed("rgb8; jpeg compressed bgr8")), {}, "", outputs=1,
         transport="compressed"),
]


@pytest.fixture()
def graph_factory(ros_context):
    made = []

    def make(predictor, **params):
        node = make_node(ros_context, predictor, **params)
        probe = Probe(ros_context)
        if params.get("image_transport") == "compressed":
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from sensor_msgs.msg import CompressedImage

            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            for topic in image_topics("compressed"):
                probe.pub[topic] = probe.node.create_publisher(CompressedImage, topic, qos)
        graph = Graph(ros_context, node, probe.node)
        made.append((node, probe, graph))
        return node, probe

    yield make
    close_graphs(made)


def _connected(node: Any, probe: Probe, mode: str, transport: str = "raw") -> bool:
    """Inputs matched to the node's subscriptions, and the node's outputs to the probe (the node builds only
    the outputs somebody subscribes to)."""
    left, right = image_topics(transport)
    topics = {"stereo": [left, right, "right/camera_info"], "depth": [left, "depth/image"], "mono": [left]}[mode]
    return probe.connected(topics + ["left/camera_info"]) and all(
        pub.get_subscription_count() > 0 for pub in node.pubs.values())


def _info_stamp(msg: Any) -> Optional[float]:
    return None if msg is None else msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec


def _assert_good_frame_output(node: Any, probe: Probe, mode: str, n_before: int, transport: str = "raw") -> None:
    # camera_info first and on its own: topics are not ordered with each other, and a left image that overtook
    # a corrected camera_info would be paired with the bad one still cached
    send_set(probe, mode, GOOD_T, left=SKIP, right=SKIP, depth=SKIP)
    assert wait_for(lambda: _info_stamp(node.sync.left_info) == GOOD_T and (
        mode != "stereo" or _info_stamp(node.sync.right_info) == GOOD_T), 10.0)
    send_set(probe, mode, GOOD_T, left_info=SKIP, right_info=SKIP, transport=transport)
    assert wait_for(lambda: all(len(probe.got[k]) > n_before for k in ("grid", "markers", "cloud")), 10.0), \
        f"no output for the good frame: drops {node.drops.snapshot()}"
    grid, markers, cloud = (probe.got[k][-1] for k in ("grid", "markers", "cloud"))
    assert probe.stamps("grid")[-1] == pytest.approx(GOOD_T) and len(probe.got["grid"]) == n_before + 1
    labels = np.frombuffer(bytes(grid.labels), np.uint8).reshape(grid.size_x, grid.size_y, grid.size_z)
    assert np.array_equal(labels, node.predictor.labels)
    same_voxels(grid, markers, cloud, list(grid.class_names))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_skipped_counted_and_the_node_recovers(case: Case, graph_factory) -> None:
    node, probe = graph_factory(case.predictor(), depth_mode=case.mode, image_transport=case.transport)
    assert wait_for(lambda: _connected(node, probe, case.mode, case.transport), 10.0)
    case.send(probe, node)
    if case.log:
        assert wait_for(lambda: probe.logged(case.log), 10.0), [m.msg for m in probe.logs]
    if case.diag:
        key, value = case.diag
        assert wait_for(lambda: probe.diag_value(key) == value, 5.0), (key, probe.diag_value(key))
    if case.release:
        case.release(probe, node)
    assert wait_for(lambda: node.drops.snapshot() == case.drops and len(probe.got["grid"]) == case.outputs
                    and not node.slot.pending, 15.0), \
        f"drops {node.drops.snapshot()}, outputs {len(probe.got['grid'])}"
    if case.check:
        case.check(node, probe)
    _assert_good_frame_output(node, probe, case.mode, case.outputs, case.transport)
    assert node.drops.snapshot() == (case.drops if case.final_drops is None else case.final_drops)
    seen = next((m.msg for m in probe.logs if case.log and case.log in m.msg), "")
    print(f"\n[{case.id}] drops {node.drops.snapshot()} outputs {case.outputs}+1 log: {seen.splitlines()[-1:]}")


# ----------------------------------------------------------------------------------- runtime parameter updates
PARAM_CASES = [
    ("sync_tolerance", 5.0, "sync_tolerance"),
    ("max_rate", -1.0, "max_rate"),
    ("max_voxels", -3, "max_voxels"),
    ("confidence_threshold", float("nan"), "confidence_threshold"),
    ("diagnostics_period", 0.0, "diagnostics_period"),
    ("marker_lifetime", 1e9, "marker_lifetime"),
    ("class_filter", "car,spaceship", "unknown class 'spaceship'"),
    ("sync_tolerance", "fast", "Wrong parameter type"),
    ("device", "cuda", "read-only"),
    ("cam_from_grid", [float("nan")] * 16, "read-only"),
]


@pytest.mark.parametrize("name, value, reason", PARAM_CASES,
                         ids=[f"{n}={v!r}"[:40] for n, v, _ in PARAM_CASES])
def test_out_of_range_parameter_at_runtime_is_refused(name, value, reason, graph_factory) -> None:
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    node, probe = graph_factory(FakePredictor())
    before = dict(node.params)
    client = AsyncParameterClient(probe.node, "scanssc_node")
    assert client.wait_for_services(10.0) and wait_for(lambda: _connected(node, probe, "stereo"), 10.0)
    future = client.set_parameters([Parameter(name, value=value)])
    assert wait_for(future.done, 10.0)
    result = future.result().results[0]
    assert not result.successful and reason in result.reason, result.reason
    assert node.params == before
    print(f"\n[{name}={value!r}] refused: {result.reason}")
    _assert_good_frame_output(node, probe, "stereo", 0)


def test_unknown_output_frame_set_at_runtime_drops_frames_until_fixed(graph_factory) -> None:
    """output_frame cannot be checked when it is set (the camera frame comes with camera_info): every frame is
    refused with a warning naming the parameter, and output resumes once it is set back."""
    from rclpy.parameter import Parameter

    node, probe = graph_factory(FakePredictor(), depth_mode="mono")
    assert wait_for(lambda: _connected(node, probe, "mono"), 10.0)
    assert node.set_parameters([Parameter("output_frame", value="map")])[0].successful
    send_set(probe, "mono", 10.0)
    assert wait_for(lambda: node.drops.snapshot() == {"no_transform": 1}, 10.0), node.drops.snapshot()
    assert wait_for(lambda: probe.logged("output_frame 'map' is not the camera frame"), 5.0)
    assert node.set_parameters([Parameter("output_frame", value="")])[0].successful
    _assert_good_frame_output(node, probe, "mono", 0)


# --------------------------------------------------------------------------------------- start-up refusals
@pytest.mark.parametrize("reliability", ["reliable", "best_effort"])
def test_best_effort_camera_is_named_or_received(reliability: str, graph_factory) -> None:
    """A camera driver publishing with sensor-data QoS (best effort): the default reliable subscription cannot
    match it and the node says which parameter fixes that; with input_reliability best_effort its frames arrive."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    node, probe = graph_factory(FakePredictor(), depth_mode="mono", input_reliability=reliability)
    image_pub = probe.node.create_publisher(Image, "left/image_rect", qos_profile_sensor_data)
    info_pub = probe.node.create_publisher(CameraInfo, "left/camera_info", qos_profile_sensor_data)
    if reliability == "reliable":
        assert wait_for(lambda: probe.logged("offers QoS this subscription cannot accept (RELIABILITY): nothing from "
                                             "it arrives; a camera publishing best effort (sensor-data QoS) needs "
                                             "input_reliability: best_effort"), 10.0), [m.msg for m in probe.logs]
        assert image_pub.get_subscription_count() == 0
        return
    assert wait_for(lambda: image_pub.get_subscription_count() > 0 and info_pub.get_subscription_count() > 0
                    and all(pub.get_subscription_count() > 0 for pub in node.pubs.values()), 10.0)
    for i in range(3):  # small images: best effort on loopback delivers them
        info_pub.publish(info_msg(P_LEFT, 20.0 + i))
        image_pub.publish(image_msg(LEFT, 20.0 + i))
        assert wait_for(lambda i=i: len(probe.got["grid"]) > i, 10.0), node.drops.snapshot()
    assert not any("cannot accept" in m.msg for m in probe.logs)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    import torch

    from scanssc_ros.checkpoint import save
    from scanssc_ros.config import variant
    from scanssc_ros.model.scanssc import ScanSSC

    root = tmp_path_factory.mktemp("ckpt")
    cfg = variant("tiny")
    model = ScanSSC(cfg)
    good = save(root / "tiny.pt", model, cfg)
    data = good.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "garbage.pt").write_bytes(b"not a checkpoint\n" * 64)
    (root / "empty.pt").write_bytes(b"")
    torch.save({"weights": {}}, root / "foreign.pt")
    state = model.state_dict()
    state.pop(sorted(state)[0])
    torch.save({"format": "scanssc_ros/1", "config": cfg.to_dict(), "state_dict": state, "extra": {}},
               root / "missing_key.pt")
    (root / "a_directory.pt").mkdir()
    return root


# run as the installed executable (exit status 2 and the one line it prints)
STARTUP_CASES = [
    # (id, ros parameters with {ckpt} for the checkpoint folder, text the error line must contain)
    ("no-checkpoint", [], "no checkpoint given: set the 'checkpoint' parameter"),
    ("missing-checkpoint", ["checkpoint:={ckpt}/nowhere.pt"], "checkpoint '{ckpt}/nowhere.pt' does not exist"),
    ("truncated-checkpoint", ["checkpoint:={ckpt}/truncated.pt"],
     "truncated.pt is not a readable scanssc_ros checkpoint (RuntimeError: PytorchStreamReader failed"),
    ("wrong-variant", ["checkpoint:={ckpt}/tiny.pt", "variant:=lite"],
     "holds a 'tiny' model but a 'lite' model was expected"),
    ("cuda-without-cuda", ["allow_untrained:=true", "variant:=tiny", "device:=cuda"],
     "device 'cuda' requested but CUDA is not available"),
]
# the same start-up path (load_predictor -> StartupError -> "cannot start: ..."), in-process
LOAD_CASES = [
    ("checkpoint-is-a-directory", "a_directory.pt", "is a directory, not a checkpoint file"),
    ("garbage-checkpoint", "garbage.pt",
     "garbage.pt is not a readable scanssc_ros checkpoint (UnpicklingError: not a torch checkpoint"),
    ("empty-checkpoint", "empty.pt", "empty.pt is not a readable scanssc_ros checkpoint (EOFError"),
    ("foreign-checkpoint", "foreign.pt",
     "foreign.pt is not a scanssc_ros checkpoint (format None, expected 'scanssc_ros/1')"),
    ("checkpoint-missing-weights", "missing_key.pt", "does not match the model: missing keys:"),
]


@pytest.fixture(scope="module")
def refusals(checkpoints: Path) -> Dict[str, subprocess.CompletedProcess]:
    """Every STARTUP_CASES run of the executable, started together (each spends seconds importing torch)."""
    if not EXECUTABLE.is_file():
        pytest.skip(f"{EXECUTABLE} not built; run `make test`")
    procs = {}
    for case_id, args, _ in STARTUP_CASES:
        cmd = [str(EXECUTABLE), "--ros-args", "-r", f"__node:=refuse_{os.getpid()}"]
        for a in args:
            cmd += ["-p", a.format(ckpt=checkpoints)]
        procs[case_id] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = {}
    for case_id, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
        done[case_id] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("case_id, args, needle", STARTUP_CASES, ids=[c[0] for c in STARTUP_CASES])
def test_executable_refuses_to_start(case_id, args, needle, refusals, checkpoints: Path) -> None:
    if case_id == "cuda-without-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    proc = refusals[case_id]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[scanssc_node]")]
    assert len(errors) == 1 and errors[0].startswith("[scanssc_node] cannot start: "), proc.stderr
    assert needle.format(ckpt=checkpoints) in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    print(f"\n[{case_id}] exit 2: {errors[0]}")


@pytest.mark.parametrize("case_id, name, needle", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_bad_checkpoint_is_a_startup_error(case_id, name, needle, checkpoints: Path) -> None:
    from scanssc_ros.ros.node import StartupError, load_predictor
    from scanssc_ros.ros.params import PARAMS

    params = {p.name: p.default for p in PARAMS}
    params["checkpoint"] = str(checkpoints / name)
    with pytest.raises(StartupError) as err:
        load_predictor(params, log=None)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    print(f"\n[{case_id}] cannot start: {err.value}")


# ----------------------------------------------------------------------------------------------- bag tools
def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if not exe.is_file():
        pytest.skip(f"{exe} not installed (pip install -e .)")
    return str(exe)


@pytest.fixture(scope="module")
def tiny_sequence(tmp_path_factory) -> Path:
    """A 3-frame KITTI-layout sequence with 32x24 images (enough for the converter, fast)."""
    import cv2
    from fake_kitti import SEQ08_CALIB

    seq = tmp_path_factory.mktemp("seq") / "08"
    for folder in ("image_2", "image_3"):
        (seq / folder).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(seq / folder / f"{i:06d}.png"), textured(24, 32, seed=i))
    (seq / "calib.txt").write_text(SEQ08_CALIB)
    (seq / "times.txt").write_text("0.0\n0.1\n0.2\n")
    return seq


@pytest.fixture(scope="module")
def tiny_bags(tiny_sequence: Path, tmp_path_factory) -> Path:
    from scanssc_ros.bag.kitti2bag import convert_sequence

    root = tmp_path_factory.mktemp("bags")
    for storage in ("mcap", "sqlite3"):
        convert_sequence(tiny_sequence, root / storage, storage=storage, tf_static=False)
    return root


def _xor_span(path: Path, lo: float, hi: float, step: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(int(len(data) * lo), int(len(data) * hi), step):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _cut(path: Path, fraction: float) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])


BAG_CASES = [
    # (id, source bag, damage(bag dir), text of the error line)
    ("mcap-truncated", "mcap", lambda d: _cut(next(d.glob("*.mcap")), 0.5), "cannot open bag: File end magic"),
    ("mcap-empty-file", "mcap", lambda d: _cut(next(d.glob("*.mcap")), 0.0), "seems to be empty"),
    ("mcap-corrupt-chunk", "mcap", lambda d: _xor_span(next(d.glob("*.mcap")), 0.3, 0.6, 41),
     "bag is corrupt or truncated: Truncated record"),
    ("db3-truncated", "sqlite3", lambda d: _cut(next(d.glob("*.db3")), 0.5), "cannot open bag: Cannot open database"),
    ("db3-garbage", "sqlite3", lambda d: next(d.glob("*.db3")).write_bytes(b"not a database" * 100),
     "file is not a database"),
    ("metadata-garbage", "mcap", lambda d: (d / "metadata.yaml").write_text("rosbag2_bagfile_information: [x"),
     "Could not load YAML"),
    ("metadata-missing", "mcap", lambda d: (d / "metadata.yaml").unlink(), "Expected metadata file"),
    ("storage-file-missing", "mcap", lambda d: next(d.glob("*.mcap")).unlink(), "Some database files are missing"),
    ("no-such-bag", None, None, "no such bag"),
]


@pytest.mark.parametrize("case_id, source, damage, needle", BAG_CASES, ids=[c[0] for c in BAG_CASES])
def test_play_refuses_a_bad_bag_with_one_line(case_id, source, damage, needle, tiny_bags: Path,
                                              tmp_path: Path) -> None:
    bag = tmp_path / case_id
    if source is not None:
        shutil.copytree(tiny_bags / source, bag)
        damage(bag)
    proc = subprocess.run([_tool("scanssc-play"), str(bag), "--start-delay", "0", "--rate", "100"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scanssc-play: error: ") and needle in lines[0], proc.stderr
    print(f"\n[{case_id}] exit 2: {lines[0]}")


def _replace(rel: str, content: bytes) -> Callable[[Path], None]:
    return lambda seq: (seq / rel).write_bytes(content)


SEQ_CASES = [
    ("truncated-png", lambda s: _cut(s / "image_3" / "000001.png", 0.3), "cannot read image"),
    ("garbage-png", _replace("image_2/000002.png", b"\x89PNG garbage" * 50), "cannot read image"),
    ("short-calib", _replace("calib.txt", b"P2: 1 2 3\n"), "calib.txt: P2 has 3 values, expected 12"),
    ("binary-calib", _replace("calib.txt", b"\x89PNG\x00\xff"), "calib.txt: 'utf-8' codec can't decode"),
    ("garbage-times", _replace("times.txt", b"abc\n"), "times.txt: could not convert string 'abc'"),
    ("two-column-times", _replace("times.txt", b"0 1\n2 3\n4 5\n"), "times.txt: expected one finite time"),
    ("nan-times", _replace("times.txt", b"nan\n0.1\n0.2\n"), "times.txt: expected one finite time"),
]


@pytest.mark.parametrize("case_id, damage, needle", SEQ_CASES, ids=[c[0] for c in SEQ_CASES])
def test_kitti2bag_refuses_a_bad_sequence_and_leaves_no_partial_bag(case_id, damage, needle, tiny_sequence: Path,
                                                                    tmp_path: Path, capsys) -> None:
    from scanssc_ros.bag.kitti2bag import main

    seq = tmp_path / "08"
    shutil.copytree(tiny_sequence, seq)
    damage(seq)
    out = tmp_path / "out_bag"
    if case_id == SEQ_CASES[0][0]:  # one case through the installed console script, the rest in-process
        proc = subprocess.run([_tool("scanssc-kitti2bag"), str(seq), str(out), "--quiet"], capture_output=True,
                              text=True, timeout=120)
        rc, err = proc.returncode, proc.stderr
    else:
        rc, err = main([str(seq), str(out), "--quiet"]), capsys.readouterr().err
    assert rc == 2, f"exit {rc}\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scanssc-kitti2bag: error: ") and needle in lines[0], err
    assert "Traceback" not in err
    assert not out.exists(), "a partial bag was left behind"
    print(f"\n[{case_id}] exit 2: {lines[0]}")
