"""Helpers for the in-process node tests: camera messages from numpy, a predictor stand-in, and a graph that spins
in a background thread (so a test can wait on its own conditions while the node's executor keeps answering)."""
from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Deque, List, Optional

import numpy as np

from scanssc_ros.config import variant
from scanssc_ros.predictor import Prediction

# KITTI odometry seq 08 P2 / P3, scaled by 1/2 for small test images (621x188)
FX, CX, CY = 707.0912 / 2, 601.8873 / 2, 183.1104 / 2
P_LEFT = [FX, 0, CX, 46.88783 / 2, 0, FX, CY, 0.1178601 / 2, 0, 0, 1, 0.006203223]
P_RIGHT = [FX, 0, CX, -333.4597 / 2, 0, FX, CY, 1.930130 / 2, 0, 0, 1, 0.003318498]
W, H = 621, 188


def write_camera_bag(out: Path, frames: int, period: float = 0.1, size=(1226, 370)) -> Path:
    """A stereo camera at 1/``period`` Hz (KITTI image size, textured frames, KITTI 08 calibration) as a rosbag2
    written by scanssc-kitti2bag with no topic prefix: ``/camera_color_{left,right}/{image_raw,camera_info}``."""
    import cv2
    from fake_kitti import SEQ08_CALIB

    from scanssc_ros.bag.kitti2bag import convert_sequence

    seq = out.parent / f"{out.name}_sequence"
    w, h = size
    rng = np.random.default_rng(0)
    for cam in ("image_2", "image_3"):
        (seq / cam).mkdir(parents=True)
    for i in range(frames):
        # 4 px blocks: texture for the stereo matcher, still compressible PNGs
        blocks = rng.integers(0, 256, size=(h // 4 + 1, (w + 40) // 4 + 1, 3), dtype=np.uint8)
        wide = cv2.resize(blocks, (blocks.shape[1] * 4, blocks.shape[0] * 4), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(seq / "image_2" / f"{i:06d}.png"), wide[:h, 20:20 + w])
        cv2.imwrite(str(seq / "image_3" / f"{i:06d}.png"), wide[:h, :w])
    (seq / "calib.txt").write_text(SEQ08_CALIB)
    (seq / "times.txt").write_text("".join(f"{i * period:.6e}\n" for i in range(frames)))
    return convert_sequence(seq, out, prefix="").bag


def stamp(t: float):
    from builtin_interfaces.msg import Time

    sec = int(t)
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)))


def image_msg(arr: np.ndarray, t: float, frame: str = "camera_left", encoding: Optional[str] = None):
    from sensor_msgs.msg import Image

    if encoding is None:
        encoding = {np.dtype(np.uint8): "rgb8", np.dtype(np.float32): "32FC1", np.dtype(np.uint16): "16UC1"}[arr.dtype]
    h, w = arr.shape[:2]
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=arr.strides[0],
                data=np.ascontiguousarray(arr).tobytes())
    msg.header.stamp, msg.header.frame_id = stamp(t), frame
    return msg


def info_msg(P: List[float], t: float, frame: str = "camera_left", w: int = W, h: int = H, zero_k: bool = False):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5)
    msg.p = [float(v) for v in P]
    msg.k = [0.0] * 9 if zero_k else [P[0], P[1], P[2], P[4], P[5], P[6], 0.0, 0.0, 1.0]
    msg.r = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    msg.header.stamp, msg.header.frame_id = stamp(t), frame
    return msg


def textured_pair(seed: int, disparity: int = 20):
    """A random-texture left image and the right image seen ``disparity`` px to the left (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    wide = rng.integers(0, 256, size=(H, W + disparity, 3), dtype=np.uint8)
    return np.ascontiguousarray(wide[:, disparity:]), np.ascontiguousarray(wide[:, :W])


class FakePredictor:
    """Stands in for :class:`scanssc_ros.predictor.Predictor`: tiny-variant grid, a fixed scene, optional delay.
    It records the inputs of every call (the last ``keep_calls``); ``fail_next`` calls raise RuntimeError, as a
    model fault (e.g. out of memory) would."""

    def __init__(self, delay: float = 0.0, name: str = "tiny", keep_calls: int = 100) -> None:
        self.config = variant(name)
        self.delay = delay
        self.calls: Deque[dict] = deque(maxlen=keep_calls)
        self.fail_next = 0
        X, Y, Z = self.config.grid_dims
        labels = np.zeros((X, Y, Z), np.uint8)
        labels[:, :, 0] = 9  # road
        labels[10:20, 20:30, 1:3] = 1  # car
        labels[40:60, 50:64, 1:8] = 13  # building
        self.labels = labels
        self.confidence = np.full(labels.shape, 200, np.uint8)
        self.confidence[labels == 13] = 90

    def predict(self, image, K, T, stereo_depth=None, p_shift=None) -> Prediction:
        self.calls.append(dict(shape=image.shape, K=np.array(K), T=np.array(T), stereo=stereo_depth,
                               p_shift=None if p_shift is None else np.array(p_shift)))
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RuntimeError("injected model fault")
        if self.delay:
            time.sleep(self.delay)
        return Prediction(labels=self.labels.copy(), confidence=self.confidence.copy(), timings={"total": 1.0})


def make_node(ctx, predictor, **params):
    """An in-process ScanSSCNode with test-friendly defaults (no warm-up, every voxel drawn); the input QoS is the
    shipped default."""
    from rclpy.parameter import Parameter

    from scanssc_ros.ros.node import ScanSSCNode

    base = dict(allow_untrained=True, warmup=False, surface_only=False, max_voxels=0, publish_tf=False,
                diagnostics_period=0.2)
    base.update(params)
    return ScanSSCNode(predictor=predictor, context=ctx,
                       parameter_overrides=[Parameter(k, value=v) for k, v in base.items()])


class Probe:
    """Test-side node: publishes camera inputs into the node's namespace-relative topics, records outputs,
    /diagnostics and the node's /rosout lines."""

    def __init__(self, ctx, node_name: str = "scanssc_node") -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.msg import Log
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from scanssc_ros.msg import SemanticVoxelGrid
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from visualization_msgs.msg import MarkerArray

        self.node = Node("pipeline_probe", context=ctx)
        self.node_name = node_name
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        from nav_msgs.msg import OccupancyGrid

        self.got = {"grid": [], "markers": [], "cloud": [], "occupancy": [], "obstacles": [], "diag": []}
        self.logs: List = []
        for key, typ, topic in (("grid", SemanticVoxelGrid, "voxels"), ("markers", MarkerArray, "voxel_markers"),
                                ("cloud", PointCloud2, "voxel_cloud"), ("occupancy", OccupancyGrid, "occupancy"),
                                ("obstacles", PointCloud2, "obstacles")):
            self.node.create_subscription(typ, f"/{node_name}/{topic}", self.got[key].append, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.got["diag"].append, qos)
        self.node.create_subscription(Log, "/rosout", self._on_log, QoSProfile(depth=100))
        self.pub = {name: self.node.create_publisher(typ, name, qos) for name, typ in (
            ("left/image_rect", Image), ("left/camera_info", CameraInfo),
            ("right/image_rect", Image), ("right/camera_info", CameraInfo), ("depth/image", Image))}

    def _on_log(self, msg) -> None:
        if msg.name == self.node_name:
            self.logs.append(msg)

    def logged(self, text: str) -> bool:
        return any(text in m.msg for m in self.logs)

    def connected(self, names) -> bool:
        return all(self.pub[n].get_subscription_count() > 0 for n in names)

    def send_stereo(self, t: float, seed: int = 0, **left_kwargs) -> None:
        left, right = textured_pair(seed)
        self.pub["left/camera_info"].publish(info_msg(P_LEFT, t))
        self.pub["right/camera_info"].publish(info_msg(P_RIGHT, t, frame="camera_right"))
        self.pub["right/image_rect"].publish(image_msg(right, t, frame="camera_right"))
        self.pub["left/image_rect"].publish(image_msg(left, t, **left_kwargs))

    def stamps(self, key: str):
        headers = [m.markers[0].header if key == "markers" else m.header for m in self.got[key]]
        return [h.stamp.sec + 1e-9 * h.stamp.nanosec for h in headers]

    def diag_value(self, key: str) -> Optional[str]:
        """The newest /diagnostics value of ``key`` (None when not reported yet)."""
        for d in reversed(self.got["diag"]):
            for status in d.status:
                for kv in status.values:
                    if kv.key == key:
                        return kv.value
        return None


class Graph:
    """Nodes spun by one executor in a background thread."""

    def __init__(self, context, *nodes) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            self.executor.add_node(n)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def close_graphs(made) -> None:
    """Tear down (node, probe, graph) triples made by a test fixture: stop the worker, then the executor."""
    for node, probe, graph in made:
        node.close()
        graph.close()
        node.destroy_node()
        probe.node.destroy_node()


def wait_for(cond: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return cond()


def voxel_index(points_out: np.ndarray, grid_msg) -> np.ndarray:
    """Output-frame points -> (N, 3) voxel indices through the grid message's own origin pose; asserts that every
    point is a voxel centre."""
    from scanssc_ros.geometry import quaternion_to_rotation

    o = grid_msg.origin
    R = quaternion_to_rotation((o.orientation.x, o.orientation.y, o.orientation.z, o.orientation.w))
    t = np.array([o.position.x, o.position.y, o.position.z])
    g = (points_out - t) @ R / grid_msg.voxel_size - 0.5
    idx = np.rint(g)
    assert np.abs(g - idx).max() < 1e-3, "a point is not at a voxel centre"
    return idx.astype(np.int64)


def same_voxels(grid_msg, markers_msg, cloud_msg, label_names, expected=None):
    """Grid labels, marker cube centres and cloud points describe the same voxels with the same class: every
    occupied voxel of the grid, or the (X, Y, Z) bool mask ``expected`` of the voxels that should be drawn."""
    from scanssc_ros.geometry import quaternion_to_rotation
    from scanssc_ros.grid_codec import decode_grid

    labels = decode_grid(grid_msg)[0]
    mask = (labels != 0) & (labels != 255) if expected is None else expected
    occupied = {tuple(v) for v in np.argwhere(mask).tolist()}

    rec = np.frombuffer(bytes(cloud_msg.data), np.dtype({"names": ["x", "y", "z", "label"], "formats":
                        ["<f4", "<f4", "<f4", "u1"], "offsets": [0, 4, 8, 16], "itemsize": cloud_msg.point_step}))
    idx = voxel_index(np.stack([rec["x"], rec["y"], rec["z"]], 1).astype(np.float64), grid_msg)
    assert {tuple(v) for v in idx.tolist()} == occupied and len(idx) == len(occupied)
    assert np.array_equal(labels[idx[:, 0], idx[:, 1], idx[:, 2]], rec["label"])

    seen = set()
    for m in markers_msg.markers:
        if m.action != m.ADD:
            continue
        q = m.pose.orientation
        Rm = quaternion_to_rotation((q.x, q.y, q.z, q.w))
        tm = np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
        pts = np.array([[p.x, p.y, p.z] for p in m.points]) @ Rm.T + tm
        midx = voxel_index(pts, grid_msg)
        assert np.all(labels[midx[:, 0], midx[:, 1], midx[:, 2]] == label_names.index(m.ns)), m.ns
        seen |= {tuple(v) for v in midx.tolist()}
    assert seen == occupied
