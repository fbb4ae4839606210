"""scanssc-play into real rclpy subscribers: in-process (content, remap, /clock, transient-local) and as a CLI.

Every rclpy context here lives on loopback only, in a domain of its own (see the ``ros_env`` fixture).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from scanssc_ros.bag.play import open_bag, play_bag  # noqa: E402
from scanssc_ros.ros.image_decode import image_to_rgb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEFT = "/kitti/camera_color_left"


@pytest.fixture
def ros_env(monkeypatch):
    """Loopback-only discovery and a per-process domain, set before any context is created."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_LOCALHOST_ONLY", "1")  # the pre-Jazzy spelling, for older rclpy
    monkeypatch.setenv("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    return dict(os.environ)


@pytest.fixture
def context(ros_env):
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


N_FRAMES = 3
T0_NS = 1_317_384_000 * 10**9


def frame_rgb(i: int) -> np.ndarray:
    return (np.arange(24 * 32 * 3, dtype=np.int64).reshape(24, 32, 3) * (i + 3) % 251).astype(np.uint8)


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """A small synthetic bag: 32x24 rgb8 images + CameraInfo at 10 Hz, and a transient-local String."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    zero = QosTime(sec=0, nsec=0)
    latched = Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                  durability=QosDurability.TRANSIENT_LOCAL, deadline=zero, lifespan=zero,
                  liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
                  avoid_ros_namespace_conventions=False)
    out = tmp_path_factory.mktemp("play") / "bag"
    with Writer(out, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        c_img = w.add_connection(f"{LEFT}/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection(f"{LEFT}/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_str = w.add_connection("/latched", "std_msgs/msg/String", typestore=ts, offered_qos_profiles=[latched])
        w.write(c_str, T0_NS, ts.serialize_cdr(T["std_msgs/msg/String"](data="hello"), "std_msgs/msg/String"))
        for i in range(N_FRAMES):
            t_ns = T0_NS + i * 100_000_000
            header = T["std_msgs/msg/Header"](
                stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id="cam")
            img = T["sensor_msgs/msg/Image"](header=header, height=24, width=32, encoding="rgb8", is_bigendian=0,
                                             step=96, data=frame_rgb(i).reshape(-1))
            p = np.array([[50.0, 0, 16, i], [0, 50, 12, 0], [0, 0, 1, 0]])
            info = T["sensor_msgs/msg/CameraInfo"](
                header=header, height=24, width=32, distortion_model="plumb_bob", d=np.zeros(5),
                k=p[:, :3].reshape(-1).copy(), r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0,
                roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                          do_rectify=False))
            w.write(c_img, t_ns, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
            w.write(c_info, t_ns, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
    return out


class Collector:
    def __init__(self, ctx, subscriptions):
        self.node = rclpy.create_node("collector", context=ctx)
        self.received = {topic: [] for topic, _, _ in subscriptions}
        for topic, cls, qos in subscriptions:
            self.node.create_subscription(cls, topic, lambda m, t=topic: self.received[t].append((time.monotonic(), m)),
                                          qos)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for(self, counts: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(len(self.received[t]) < n for t, n in counts.items()):
            time.sleep(0.05)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()


def reliable(depth: int = 10) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def test_play_in_process(context, bag: Path) -> None:
    collector = Collector(context, [
        ("/image", Image, reliable()),
        (f"{LEFT}/camera_info", CameraInfo, reliable()),
        ("/clock", Clock, reliable(100)),
    ])
    player = rclpy.create_node("player", context=context)
    late: list = []
    try:
        stats = play_bag(player, open_bag(bag), rate=0.5, remap={f"{LEFT}/image_raw": "/image"}, clock_hz=20.0,
                         start_delay=0.2, wait_subscribers=60.0)
        collector.wait_for({"/image": N_FRAMES, f"{LEFT}/camera_info": N_FRAMES}, timeout=30)
        # /latched was recorded transient-local: a subscriber that joins after playback still gets it
        collector.node.create_subscription(
            String, "/latched", late.append,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        deadline = time.monotonic() + 30
        while not late and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        collector.close()
        player.destroy_node()

    assert stats.published == {f"{LEFT}/image_raw": N_FRAMES, f"{LEFT}/camera_info": N_FRAMES, "/latched": 1}
    images = [m for _, m in collector.received["/image"]]
    assert len(images) == N_FRAMES
    for i, msg in enumerate(images):  # reliable + one publisher: in order, bytes intact
        np.testing.assert_array_equal(image_to_rgb(msg), frame_rgb(i))
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == T0_NS + i * 100_000_000
    infos = [m for _, m in collector.received[f"{LEFT}/camera_info"]]
    assert [float(m.p[3]) for m in infos] == [float(i) for i in range(N_FRAMES)]
    assert [m.data for m in late] == ["hello"]
    # /clock carries bag time, never runs backwards and stays within the bag (wall-clock spacing is checked with a
    # fake clock in test_bag_tools; on a shared CPU it is not)
    clock_ns = [c.clock.sec * 10**9 + c.clock.nanosec for _, c in collector.received["/clock"]]
    assert clock_ns and clock_ns == sorted(clock_ns)
    assert T0_NS <= clock_ns[0] and clock_ns[-1] <= T0_NS + (N_FRAMES - 1) * 100_000_000


def test_play_compressed_kitti2bag_bag(context, tmp_path: Path) -> None:
    """A kitti2bag bag with PNG CompressedImages and /tf_static: the images arrive as CompressedImage on
    <image topic>/compressed with the pixels intact; /tf_static is skipped when tf2_msgs is not installed."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    from scanssc_ros.bag.kitti2bag import convert_sequence
    from scanssc_ros.ros.compressed_decode import compressed_to_rgb

    seq = tmp_path / "08"
    for folder in ("image_2", "image_3"):
        (seq / folder).mkdir(parents=True)
        for i in range(N_FRAMES):
            cv2.imwrite(str(seq / folder / f"{i:06d}.png"), cv2.cvtColor(frame_rgb(i), cv2.COLOR_RGB2BGR))
    (seq / "calib.txt").write_text("".join(f"{k}: 500 0 16 {-500 * x} 0 500 12 0 0 0 1 0\n" for k, x in
                                           (("P0", 0), ("P1", 0.5), ("P2", 0), ("P3", 0.5)))
                                   + "Tr: 0 -1 0 0 0 0 -1 0 1 0 0 0\n")
    (seq / "times.txt").write_text("\n".join(f"{0.1 * i:.6e}" for i in range(N_FRAMES)) + "\n")
    out = convert_sequence(seq, tmp_path / "bag", image_format="png").bag
    topic = f"{LEFT}/image_raw/compressed"
    collector = Collector(context, [(topic, CompressedImage, reliable())])
    player = rclpy.create_node("player", context=context)
    skipped = []
    try:
        stats = play_bag(player, open_bag(out), rate=5.0, start_delay=0.2, wait_subscribers=60.0, log=skipped.append)
        collector.wait_for({topic: N_FRAMES}, timeout=30)
    finally:
        collector.close()
        player.destroy_node()
    tf2_installed = importlib.util.find_spec("tf2_msgs") is not None
    assert stats.published[topic] == N_FRAMES and ("/tf_static" in stats.published) == tf2_installed
    assert tf2_installed or any("/tf_static" in line for line in skipped), skipped
    images = [m for _, m in collector.received[topic]]
    assert [m.format for m in images] == ["rgb8; png compressed bgr8"] * N_FRAMES
    for i, msg in enumerate(images):
        np.testing.assert_array_equal(compressed_to_rgb(msg), frame_rgb(i))


def test_play_cli_process(context, ros_env, bag: Path) -> None:
    collector = Collector(context, [("/kitti/image", Image, reliable())])
    try:
        env = dict(ros_env, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [sys.executable, "-m", "scanssc_ros.bag.play", str(bag), "--topics", f"{LEFT}/image_raw",
             "--remap", f"{LEFT}/image_raw:=/kitti/image", "--rate", "5", "--start-delay", "0.5",
             "--wait-subscribers", "60"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        collector.wait_for({"/kitti/image": N_FRAMES}, timeout=30)
    finally:
        collector.close()
    assert proc.returncode == 0, err
    assert f"published {N_FRAMES} messages on 1 topics" in out
    images = [m for _, m in collector.received["/kitti/image"]]
    assert [image_to_rgb(m).tobytes() for m in images] == [frame_rgb(i).tobytes() for i in range(N_FRAMES)]
