"""scanssc-record: message definitions from the installed packages, and the CLI as a user runs it: our outputs
and /tf_static recorded from live publishers, stopped by SIGINT right after a burst, read back with rosbags."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")
pytest.importorskip("rosbags")

from scanssc_ros.bag.record import RecordError, build_typestore  # noqa: E402


def test_definitions_come_from_installed_msg_files(tmp_path):
    share = tmp_path / "share" / "my_pkg" / "msg"
    share.mkdir(parents=True)
    (share / "Inner.msg").write_text("float64 value\n")
    (share / "Outer.msg").write_text("std_msgs/Header header\nmy_pkg/Inner[] items\nuint8 KIND=3\n")
    prefixes = [str(tmp_path), sys.prefix]
    store = build_typestore(["my_pkg/msg/Outer"], prefixes)
    assert {"my_pkg/msg/Outer", "my_pkg/msg/Inner", "std_msgs/msg/Header"} <= set(store.types)
    Outer, Inner = store.types["my_pkg/msg/Outer"], store.types["my_pkg/msg/Inner"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    msg = Outer(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="f"), items=[Inner(value=2.5)])
    back = store.deserialize_cdr(store.serialize_cdr(msg, "my_pkg/msg/Outer"), "my_pkg/msg/Outer")
    assert back.items[0].value == 2.5 and back.header.frame_id == "f"
    with pytest.raises(RecordError, match="no definition of nope_pkg/msg/Thing"):
        build_typestore(["nope_pkg/msg/Thing"], prefixes)


def _grid_message(i: int, encoding: str):
    from std_msgs.msg import Header

    from scanssc_ros.geometry import GridSpec
    from scanssc_ros.labels import SEMANTIC_KITTI
    from scanssc_ros.ros.grid_message import to_grid_message

    labels = np.zeros((16, 16, 4), np.uint8)
    labels[:, :, 0] = 9
    labels[i % 16, :, 1:3] = 1
    grid = GridSpec((0.0, -1.6, -0.4), 0.2, labels.shape)
    header = Header(frame_id="scanssc_grid")
    header.stamp.sec = 100 + i
    return to_grid_message(labels, grid, header, SEMANTIC_KITTI, encoding=encoding), labels


def test_cli_records_outputs_and_keeps_the_burst_before_sigint(ros_context, tmp_path):
    from nav_msgs.msg import OccupancyGrid
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import QosDurability
    from scanssc_ros.msg import SemanticVoxelGrid
    from tf2_msgs.msg import TFMessage

    from scanssc_ros.grid_codec import decode_grid

    node = rclpy.create_node("record_test_pub", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)  # the node's shipped output QoS
    pubs = {"/scanssc/voxels": node.create_publisher(SemanticVoxelGrid, "/scanssc/voxels", reliable),
            "/scanssc/occupancy": node.create_publisher(OccupancyGrid, "/scanssc/occupancy", reliable),
            "/tf_static": node.create_publisher(TFMessage, "/tf_static", QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))}
    from geometry_msgs.msg import TransformStamped

    tf = TransformStamped()
    tf.header.frame_id, tf.child_frame_id = "camera", "scanssc_grid"
    pubs["/tf_static"].publish(TFMessage(transforms=[tf]))  # before the recorder starts: latched
    bag = tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "scanssc_ros.bag.record", "/scanssc/voxels", "/scanssc/occupancy",
                             "/tf_static", "/not/published", "-o", str(bag), "--quiet"],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                p.get_subscription_count() for k, p in pubs.items() if k != "/tf_static"):
            executor.spin_once(timeout_sec=0.05)
        assert proc.poll() is None, proc.communicate()
        # a burst as fast as we can publish (reliable, depth 2: the writer blocks nothing), then SIGINT at once
        for i in range(40):
            msg, labels = _grid_message(i, "sparse" if i % 2 else "dense")
            pubs["/scanssc/voxels"].publish(msg)
            occ = OccupancyGrid()
            occ.header.stamp.sec = 100 + i
            occ.info.width = occ.info.height = 2
            occ.data = [0, 100, -1, i]
            pubs["/scanssc/occupancy"].publish(occ)
            sent.append(labels)
            time.sleep(0.01)  # the shipped depth-2 publishers would otherwise overwrite before sending
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        executor.remove_node(node)
        node.destroy_node()
    assert proc.returncode == 0, err
    assert "stopped by SIGINT" in out, out

    with AnyReader([bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {"/scanssc/voxels": 40, "/scanssc/occupancy": 40, "/tf_static": 1}, (counts, out, err)
        tf_conn = next(c for c in reader.connections if c.topic == "/tf_static")
        assert tf_conn.ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL
        grids = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                 if c.topic == "/scanssc/voxels"]
        occs = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                if c.topic == "/scanssc/occupancy"]
    # the definitions written into the bag decode our message, dense and sparse alike
    assert [g.header.stamp.sec for g in grids] == list(range(100, 140))
    for g, labels in zip(grids, sent):
        np.testing.assert_array_equal(decode_grid(g)[0], labels)
    assert [int(o.data[3]) for o in occs] == list(range(40))


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "exists").mkdir()
    for args, text in ((["/a", "-o", str(tmp_path / "exists")], "exists already"),
                       ([], "nothing to record")):
        proc = subprocess.run([sys.executable, "-m", "scanssc_ros.bag.record", *args, "--quiet"],
                              capture_output=True, text=True, timeout=120, env=dict(os.environ), cwd=tmp_path)
        assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
