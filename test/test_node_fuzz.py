"""Fuzzed input for the decoders and the node's callback path: random sizes, encodings, steps, truncated or padded
buffers, random camera_info contents and stamps. Whatever comes in, the decoders raise only their own error
type, FrameProcessor.process raises only FrameError, the callbacks never raise, and a good frame afterwards is
processed normally. Seeded, so a failure replays.
"""
from __future__ import annotations

import random
import time
from types import SimpleNamespace as NS
from typing import Any, List

import numpy as np
import pytest

from scanssc_ros.ros.frame_processor import FrameError, FrameProcessor
from scanssc_ros.ros.frame_sync import DropCounter, FrameSync, LatestSlot
from scanssc_ros.ros.image_decode import (
    CameraInfoError,
    ImageDecodeError,
    camera_info_to_intrinsics,
    image_to_depth,
    image_to_rgb,
)
from scanssc_ros.ros.params import KITTI_CAM_FROM_GRID

BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "16UC1": 2, "32FC1": 4}
ENCODINGS = list(BYTES_PER_PIXEL) + ["yuv422", "RGB8", "bgr16", "mono16", "8UC3", "", "32FC3"]
ODD_NUMBERS = [0, 1, -1, 7, 8, 2**31, 2**32 - 1, 2**63, 1.5, float("nan"), float("inf"), None, "3", True, [1]]
ODD_FLOATS = [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-300, 1e300]
FX, CX, CY = 150.0, 100.0, 10.0
P_LEFT = [FX, 0.0, CX, 0.0, 0.0, FX, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
P_RIGHT = [FX, 0.0, CX, -0.5 * FX, 0.0, FX, CY, 0.0, 0.0, 0.0, 1.0, 0.0]


def stamp(t: float) -> NS:
    ns = int(round(t * 1e9))
    return NS(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def image(rng: random.Random, w: int, h: int, encoding: str, t: float) -> NS:
    step = w * BYTES_PER_PIXEL[encoding]
    if encoding == "32FC1":
        values = np.random.default_rng(rng.randrange(1 << 30)).uniform(-5, 60, h * w).astype(np.float32)
        values[values < 0] = rng.choice([np.nan, np.inf, -1.0, 0.0])
        data = values.view(np.uint8)
    elif encoding == "16UC1":
        data = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 65535, h * w, dtype=np.uint16).view(np.uint8)
    else:
        data = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, h * step, dtype=np.uint8)
    return NS(height=h, width=w, step=step, encoding=encoding, is_bigendian=0, data=data,
              header=NS(stamp=stamp(t), frame_id="cam"))


def info(P: List[float], w: int, h: int, t: float) -> NS:
    return NS(width=w, height=h, k=[P[0], P[1], P[2], P[4], P[5], P[6], 0.0, 0.0, 1.0], p=list(P), d=[0.0] * 5,
              header=NS(stamp=stamp(t), frame_id="cam"))


def mutate(rng: random.Random, msg: NS) -> None:
    """Replace one field with something a buggy driver, a corrupt bag or a hostile publisher could send."""
    name = rng.choice([n for n in vars(msg) if n != "header"])
    value = getattr(msg, name)
    if name in ("k", "p", "d"):
        value = list(value) if isinstance(value, list) else []
        if value and rng.random() < 0.7:
            value[rng.randrange(len(value))] = rng.choice(ODD_FLOATS)
        else:
            value = rng.choice([[], [0.0] * rng.randrange(20), [float("nan")] * 12, ["a"] * 9, None])
    elif name == "data":
        buf = np.asarray(value, np.uint8).reshape(-1) if isinstance(value, (np.ndarray, list)) else np.zeros(9, "u1")
        value = rng.choice([buf[: rng.randrange(buf.size + 1)], np.concatenate([buf, np.zeros(5, np.uint8)]), b"",
                            bytes(buf[:7]), buf.view(np.uint8)[::2], list(buf[:9]), "text", None,
                            np.zeros(4, np.float32)])
    elif name == "encoding":
        value = rng.choice(ENCODINGS + [None, 5])
    else:
        value = rng.choice(ODD_NUMBERS + [rng.randrange(0, 3000)])
    setattr(msg, name, value)


# ------------------------------------------------------------------------------------------------ decoders
def test_decoders_raise_only_their_own_error() -> None:
    rng = random.Random(7)
    decoded = 0
    for _ in range(4000):
        w, h = rng.choice([(1, 1), (8, 3), (16, 8), (33, 5)])
        msg = image(rng, w, h, rng.choice(list(BYTES_PER_PIXEL)), 1.0)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            mutate(rng, msg)
        for decode in (image_to_rgb, image_to_depth):
            try:
                out = decode(msg)
            except ImageDecodeError:
                continue
            decoded += 1
            assert out.shape[:2] == (msg.height, msg.width) and out.flags.c_contiguous
            if decode is image_to_depth:
                assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.all(out >= 0)
        cam = info(P_LEFT, w, h, 1.0)
        for _ in range(rng.choice([1, 2, 3])):
            mutate(rng, cam)
        try:
            model = camera_info_to_intrinsics(cam)
        except CameraInfoError:
            continue
        K = model.K
        assert np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0 and K[2].tolist() == [0.0, 0.0, 1.0], K
    assert decoded > 500  # the fuzz must also reach the success paths


# -------------------------------------------------------------------------------------- pairing + processing
class ShapeCheckingFake:
    """The tests' stand-in model with the real Predictor's input checks (it never sees a bad array)."""

    def __init__(self) -> None:
        from nodeutil import FakePredictor

        from scanssc_ros.predictor import Predictor

        self._fake = FakePredictor()
        self._validate = Predictor._validate
        self.config, self.labels = self._fake.config, self._fake.labels

    def predict(self, image, K, T, stereo_depth=None, p_shift=None):
        self._validate(None, image, K, T, stereo_depth, p_shift)
        if stereo_depth is not None:
            assert np.all(np.isfinite(stereo_depth)) and np.all(stereo_depth >= 0)
        return self._fake.predict(image, K, T, stereo_depth, p_shift)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_sync_and_processor_raise_only_frame_error(seed: int) -> None:
    rng = random.Random(seed)
    drops = DropCounter()
    slot = LatestSlot(drops)
    syncs = {mode: FrameSync(mode, slot, drops, tolerance=0.02) for mode in ("stereo", "depth", "mono")}
    processor = FrameProcessor(ShapeCheckingFake(), np.asarray(KITTI_CAM_FROM_GRID).reshape(4, 4),
                               use_cv_bridge=False)
    processed = rejected = 0
    t = 100.0
    for _ in range(1500):
        mode = rng.choice(list(syncs))
        sync = syncs[mode]
        w, h = rng.choice([(9, 9), (64, 20), (191, 12), (200, 12), (256, 24)])
        t += rng.choice([0.1, 0.1, 0.0, -0.3, 0.015, 5.0])  # repeats, jumps back, near misses
        msgs = {"left_info": info(P_LEFT, w, h, t), "left": image(rng, w, h, rng.choice(["rgb8", "bgr8", "mono8"]), t)}
        if mode == "stereo":
            msgs["right_info"] = info(P_RIGHT, w, h, t)
            msgs["partner"] = image(rng, w, h, "rgb8", t + rng.choice([0.0, 0.0, 0.01, 0.05, -0.05]))
        elif mode == "depth":
            msgs["partner"] = image(rng, w, h, rng.choice(["16UC1", "32FC1"]), t)
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            mutate(rng, rng.choice(list(msgs.values())))
        events = [("left_info", sync.on_left_info), ("right_info", sync.on_right_info), ("partner", sync.on_partner),
                  ("left", sync.on_left)]
        rng.shuffle(events)
        for key, callback in events:
            if key in msgs and rng.random() > 0.05:  # now and then a message is lost
                callback(msgs[key])
        fs = slot.take(timeout=0)
        if fs is None:
            continue
        try:
            result = processor.process(fs)
        except FrameError:
            rejected += 1
            continue
        processed += 1
        assert result.prediction.labels.shape == processor.predictor.config.grid_dims
    assert processed > 100 and rejected > 100, (processed, rejected)
    assert set(drops.snapshot()) <= {"unpaired", "no_camera_info", "superseded"}, drops.snapshot()

    # a good stereo set afterwards is paired and processed
    sync = syncs["stereo"]
    t += 10.0
    sync.on_left_info(info(P_LEFT, 256, 24, t))
    sync.on_right_info(info(P_RIGHT, 256, 24, t))
    sync.on_partner(image(rng, 256, 24, "rgb8", t))
    sync.on_left(image(rng, 256, 24, "rgb8", t))
    fs = slot.take(timeout=0)
    assert fs is not None and fs.stamp == pytest.approx(t)
    assert np.array_equal(processor.process(fs).prediction.labels, processor.predictor.labels)


def compressed_image(rng: random.Random, w: int, h: int, t: float) -> NS:
    """A CompressedImage (JPEG or PNG of random pixels), as image_transport writes it."""
    import cv2

    pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    codec = rng.choice(["jpeg", "png"])
    data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", pixels)[1].reshape(-1)
    good = [f"rgb8; {codec} compressed bgr8", codec, f"bgr8; {codec} compressed bgr8"]
    bad = ["jpeg" if codec == "png" else "png", "rgb8; compressedDepth png", ""]
    fmt = rng.choice(good if rng.random() < 0.85 else bad)
    return NS(format=fmt, data=data, header=NS(stamp=stamp(t), frame_id="cam"))


def test_compressed_sets_raise_only_frame_error() -> None:
    pytest.importorskip("cv2")
    rng = random.Random(11)
    drops = DropCounter()
    slot = LatestSlot(drops)
    sync = FrameSync("stereo", slot, drops, tolerance=0.02)
    processor = FrameProcessor(ShapeCheckingFake(), np.asarray(KITTI_CAM_FROM_GRID).reshape(4, 4),
                               use_cv_bridge=False)
    processed = rejected = 0
    for i in range(400):
        t = 100.0 + 0.1 * i
        w, h = rng.choice([(9, 9), (200, 12), (256, 24)])
        msgs = {"left_info": info(P_LEFT, w, h, t), "right_info": info(P_RIGHT, w, h, t),
                "left": compressed_image(rng, w, h, t),
                "partner": compressed_image(rng, *rng.choice([(w, h), (w, h), (64, 20)]), t)}
        for _ in range(rng.choice([0, 0, 1, 2])):
            key = rng.choice(["left", "partner"])
            if rng.random() < 0.5:
                mutate(rng, msgs[key])
            else:  # cut or flipped bytes inside a payload whose format is right
                raw = msgs[key].data
                if isinstance(raw, np.ndarray) and raw.dtype == np.uint8:
                    raw = raw.tobytes()
                if not isinstance(raw, bytes):
                    continue  # already replaced by a non-byte value
                buf = bytearray(raw)
                if buf and rng.random() < 0.5:
                    buf = buf[: rng.randrange(len(buf))]
                for _ in range(rng.randrange(1, 6)):
                    if buf:
                        buf[rng.randrange(len(buf))] = rng.randrange(256)
                msgs[key].data = bytes(buf)
        for key, callback in (("left_info", sync.on_left_info), ("right_info", sync.on_right_info),
                              ("partner", sync.on_partner), ("left", sync.on_left)):
            callback(msgs[key])
        fs = slot.take(timeout=0)
        if fs is None:
            continue
        try:
            processor.process(fs)
        except FrameError:
            rejected += 1
            continue
        processed += 1
    assert processed > 50 and rejected > 100, (processed, rejected)


# ------------------------------------------------------------------------------------------- running node
def _ros_image(msg: NS) -> Any:
    """The rclpy message closest to a fuzzed one: out-of-range fields are clamped into the wire types, since a
    real publisher cannot send anything else."""
    from nodeutil import stamp as ros_stamp
    from sensor_msgs.msg import Image

    def u32(v: Any) -> int:
        try:
            return min(max(int(v), 0), 2**32 - 1)
        except (TypeError, ValueError, OverflowError):
            return 0

    try:
        data = bytes(np.asarray(msg.data, np.uint8).reshape(-1)) if msg.data is not None else b""
    except (TypeError, ValueError):
        data = b""
    encoding = msg.encoding if isinstance(msg.encoding, str) else ""
    out = Image(height=u32(msg.height), width=u32(msg.width), step=u32(msg.step), encoding=encoding,
                is_bigendian=u32(msg.is_bigendian) % 256, data=data)
    out.header.stamp = ros_stamp(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)
    out.header.frame_id = "cam"
    return out


def _ros_info(msg: NS) -> Any:
    from nodeutil import stamp as ros_stamp
    from sensor_msgs.msg import CameraInfo

    def floats(v: Any, n: int) -> List[float]:
        try:
            vals = [float(x) for x in (v or [])]
        except (TypeError, ValueError):
            vals = []
        return (vals + [0.0] * n)[:n]

    def u32(v: Any) -> int:
        try:
            return min(max(int(v), 0), 2**32 - 1)
        except (TypeError, ValueError, OverflowError):
            return 0

    out = CameraInfo(width=u32(msg.width), height=u32(msg.height), k=floats(msg.k, 9), p=floats(msg.p, 12),
                     d=floats(msg.d, 5), distortion_model="plumb_bob")
    out.header.stamp = ros_stamp(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)
    out.header.frame_id = "cam"
    return out


@pytest.mark.ros
@pytest.mark.parametrize("mode", ["stereo", "depth", "mono"])
def test_running_node_survives_fuzzed_topics(mode: str, ros_context) -> None:
    pytest.importorskip("rclpy")
    from nodeutil import FakePredictor, Graph, Probe, make_node, wait_for

    node = make_node(ros_context, FakePredictor(), depth_mode=mode)
    probe = Probe(ros_context)
    graph = Graph(ros_context, node, probe.node)
    try:
        partner = {"stereo": "right/image_rect", "depth": "depth/image", "mono": None}[mode]
        assert wait_for(lambda: probe.connected(["left/image_rect", "left/camera_info"] + ([partner] if partner
                                                                                            else [])), 10.0)
        rng = random.Random({"stereo": 11, "depth": 12, "mono": 13}[mode])
        t = 10.0
        for _ in range(120):
            w, h = rng.choice([(9, 9), (64, 20), (191, 12), (200, 12)])
            t += rng.choice([0.1, 0.1, 0.0, -0.2, 0.015])
            msgs = {"left/camera_info": info(P_LEFT, w, h, t),
                    "left/image_rect": image(rng, w, h, rng.choice(["rgb8", "bgr8", "mono8"]), t)}
            if mode == "stereo":
                msgs["right/camera_info"] = info(P_RIGHT, w, h, t)
                msgs["right/image_rect"] = image(rng, w, h, "rgb8", t + rng.choice([0.0, 0.0, 0.05]))
            elif mode == "depth":
                msgs["depth/image"] = image(rng, w, h, rng.choice(["16UC1", "32FC1"]), t)
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                mutate(rng, rng.choice(list(msgs.values())))
            for topic in sorted(msgs, key=lambda k: "image" in k):  # camera_info first
                m = msgs[topic]
                probe.pub[topic].publish(_ros_info(m) if "camera_info" in topic else _ros_image(m))
            time.sleep(0.005)
        assert wait_for(lambda: node.stats.frames_in > 50 and not node.slot.pending, 20.0)
        time.sleep(0.3)  # the frame in progress
        drops = node.drops.snapshot()
        assert "failed" not in drops, "an exception other than FrameError escaped the frame processing"
        assert node._worker.is_alive() and graph._thread.is_alive()
        assert drops.get("rejected", 0) > 10, drops  # the fuzz must reach the decoders

        # a good frame afterwards gives the predictor's labels
        from nodeutil import P_LEFT as PL
        from nodeutil import P_RIGHT as PR
        from nodeutil import image_msg, info_msg, textured_pair

        n = len(probe.got["grid"])
        left, right = textured_pair(0)
        t = 1000.0
        probe.pub["left/camera_info"].publish(info_msg(PL, t))
        if mode == "stereo":
            probe.pub["right/camera_info"].publish(info_msg(PR, t, frame="camera_right"))
        assert wait_for(lambda: node.sync.left_info.header.stamp.sec == 1000 and (
            mode != "stereo" or node.sync.right_info.header.stamp.sec == 1000), 10.0)
        if mode == "stereo":
            probe.pub["right/image_rect"].publish(image_msg(right, t, frame="camera_right"))
        elif mode == "depth":
            probe.pub["depth/image"].publish(image_msg(np.full(left.shape[:2], 9.0, np.float32), t))
        probe.pub["left/image_rect"].publish(image_msg(left, t))
        assert wait_for(lambda: len(probe.got["grid"]) > n and probe.stamps("grid")[-1] == 1000.0, 10.0), \
            node.drops.snapshot()
        grid = probe.got["grid"][-1]
        assert bytes(grid.labels) == node.predictor.labels.tobytes()
    finally:
        node.close()
        graph.close()
        node.destroy_node()
        probe.node.destroy_node()
