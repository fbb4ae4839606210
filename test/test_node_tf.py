"""TF placement: the camera pose from /tf_static + /tf, the grid fixed to base_frame, outputs in base_link and
odom at the image stamp, the cam_from_grid fallback and the camera-height warning. Needs tf2_msgs (`make setup`
generates it for the wheel-only install)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built (run `make setup`)")

from nodeutil import (  # noqa: E402, I001
    P_LEFT, FakePredictor, Graph, Probe, close_graphs, image_msg, info_msg, make_node, textured_pair, wait_for)

from scanssc_ros.geometry import quaternion_to_rotation, rotation_to_quaternion  # noqa: E402

# camera optical frame (z forward, x right, y down) in base_link (x forward, y left, z up): 1.2 m ahead, 1.65 m up
R_BASE_CAM = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
T_BASE_CAM = np.eye(4)
T_BASE_CAM[:3, :3], T_BASE_CAM[:3, 3] = R_BASE_CAM, (1.2, 0.0, 1.65)
# the grid's frame in base_link: the SemanticKITTI grid frame is the LiDAR, 0.27 m behind the camera, 1.73 m up
GRID_IN_BASE = np.eye(4)
GRID_IN_BASE[:3, 3] = (0.93, 0.0, 1.73)
GRID_ORIGIN = np.array([0.0, -25.6, -2.0])


def _yaw(deg: float, xyz) -> np.ndarray:
    a = np.deg2rad(deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    T[:3, 3] = xyz
    return T


def _tf(parent: str, child: str, T: np.ndarray, t: float):
    from geometry_msgs.msg import TransformStamped
    from nodeutil import stamp

    msg = TransformStamped()
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp(t), parent, child
    tr, r = msg.transform.translation, msg.transform.rotation
    tr.x, tr.y, tr.z = (float(v) for v in T[:3, 3])
    r.x, r.y, r.z, r.w = rotation_to_quaternion(T[:3, :3])
    return msg


def _grid_pose(grid_msg) -> np.ndarray:
    """Pose of the grid frame in the message's frame, from its origin (the pose of the grid's min corner)."""
    o = grid_msg.origin
    R = quaternion_to_rotation((o.orientation.x, o.orientation.y, o.orientation.z, o.orientation.w))
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.array([o.position.x, o.position.y, o.position.z]) - R @ GRID_ORIGIN
    return T


@pytest.fixture()
def tf_graph(ros_context):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    made = []

    def make(**params):
        params = {"depth_mode": "mono", "base_frame": "base_link", "grid_in_base": GRID_IN_BASE.reshape(-1).tolist(),
                  **params}
        node = make_node(ros_context, FakePredictor(), **params)
        probe = Probe(ros_context)
        static_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        pubs = {"static": probe.node.create_publisher(TFMessage, "/tf_static", static_qos),
                "tf": probe.node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))}
        graph = Graph(ros_context, node, probe.node)
        made.append((node, probe, graph))
        return node, probe, pubs, TFMessage

    yield make
    close_graphs(made)


def _send(probe, t: float) -> None:
    left, _ = textured_pair(0)
    probe.pub["left/camera_info"].publish(info_msg(P_LEFT, t))
    probe.pub["left/image_rect"].publish(image_msg(left, t))


def _connected(node, probe) -> bool:
    return probe.connected(["left/image_rect"]) and node.count_publishers("/tf_static") >= 1


def test_grid_in_base_link_from_tf_static(tf_graph):
    node, probe, pubs, TFMessage = tf_graph(output_frame="base_link")
    assert wait_for(lambda: _connected(node, probe), 10.0)
    pubs["static"].publish(TFMessage(transforms=[_tf("base_link", "camera_left", T_BASE_CAM, 0.0)]))
    assert wait_for(lambda: "camera_left" in node.placement.tree.frames(), 10.0)
    _send(probe, 10.0)
    assert wait_for(lambda: probe.got["grid"], 30.0), node.drops.snapshot()
    grid = probe.got["grid"][0]
    assert grid.header.frame_id == "base_link"
    assert np.allclose(_grid_pose(grid), GRID_IN_BASE, atol=1e-6)
    # the model was given the camera -> grid transform that TF implies, not the cam_from_grid parameter
    expect = np.linalg.inv(T_BASE_CAM) @ GRID_IN_BASE
    assert np.allclose(node.predictor.calls[-1]["T"], expect, atol=1e-9)
    assert not probe.logged("grid placed by the cam_from_grid parameter")


def test_grid_in_odom_through_moving_tf(tf_graph):
    node, probe, pubs, TFMessage = tf_graph(output_frame="odom")
    assert wait_for(lambda: _connected(node, probe), 10.0)
    pubs["static"].publish(TFMessage(transforms=[_tf("base_link", "camera_left", T_BASE_CAM, 0.0)]))
    pubs["tf"].publish(TFMessage(transforms=[_tf("odom", "base_link", _yaw(0.0, (10.0, 5.0, 0.0)), 19.9)]))
    pubs["tf"].publish(TFMessage(transforms=[_tf("odom", "base_link", _yaw(20.0, (12.0, 5.0, 0.0)), 20.1)]))
    assert wait_for(lambda: "odom" in node.placement.tree.frames(), 10.0)
    _send(probe, 20.0)
    assert wait_for(lambda: probe.got["grid"], 30.0), node.drops.snapshot()
    grid = probe.got["grid"][0]
    assert grid.header.frame_id == "odom"
    odom_base = _yaw(10.0, (11.0, 5.0, 0.0))  # interpolated half way at the image stamp
    assert np.allclose(_grid_pose(grid), odom_base @ GRID_IN_BASE, atol=1e-6)
    # an image newer than any /tf sample: the node waits briefly, then drops it as no_transform with the reason
    _send(probe, 30.0)
    assert wait_for(lambda: node.drops.snapshot().get("no_transform") == 1, 10.0), node.drops.snapshot()
    assert wait_for(lambda: probe.logged("would need extrapolation"), 5.0)


def test_without_tf_the_parameter_places_the_grid_and_the_node_says_so(tf_graph):
    node, probe, pubs, TFMessage = tf_graph(output_frame="base_link")
    assert wait_for(lambda: _connected(node, probe), 10.0)
    _send(probe, 10.0)
    assert wait_for(lambda: probe.got["grid"], 30.0), node.drops.snapshot()
    param = np.asarray(node.params["cam_from_grid"]).reshape(4, 4)
    assert np.allclose(node.predictor.calls[-1]["T"], param)
    assert wait_for(lambda: probe.logged("grid placed by the cam_from_grid parameter"), 5.0)


def test_camera_far_from_the_training_height_is_reported_once(tf_graph):
    node, probe, pubs, TFMessage = tf_graph(output_frame="base_link")
    assert wait_for(lambda: _connected(node, probe), 10.0)
    low = T_BASE_CAM.copy()
    low[2, 3] = 0.4  # a small robot: camera 0.4 m up, grid still at 1.73 m
    pubs["static"].publish(TFMessage(transforms=[_tf("base_link", "camera_left", low, 0.0)]))
    assert wait_for(lambda: "camera_left" in node.placement.tree.frames(), 10.0)
    for t in (10.0, 10.1):
        _send(probe, t)
        assert wait_for(lambda n=int(t * 10) - 99: len(probe.got["grid"]) >= n, 30.0)
    assert wait_for(lambda: probe.logged("out of their training distribution"), 5.0)
    assert sum("out of their training distribution" in m.msg for m in probe.logs) == 1


def test_bag_tf_static_of_another_sequence_places_the_grid(tf_graph, tmp_path):
    """scanssc-kitti2bag writes the sequence's camera <-> velodyne transform to /tf_static; with
    base_frame=velo_link the node uses it instead of the sequence-08 default of cam_from_grid."""
    from fake_kitti import make_fake_semantickitti
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from scanssc_ros.bag.kitti2bag import convert_sequence
    from scanssc_ros.geometry import kitti_camera, read_kitti_calib

    seq = make_fake_semantickitti(tmp_path / "kitti", {"00": 1}) / "sequences" / "00"
    calib_text = (seq / "calib.txt").read_text().splitlines()
    other = _yaw(3.0, (0.1, -0.2, 0.05)) @ np.vstack([read_kitti_calib(seq / "calib.txt")["Tr"][:3], [0, 0, 0, 1]])
    calib_text = [ln for ln in calib_text if not ln.startswith("Tr:")]
    calib_text.append("Tr: " + " ".join(f"{v:.12e}" for v in other[:3].reshape(-1)))
    (seq / "calib.txt").write_text("\n".join(calib_text) + "\n")
    (seq / "times.txt").write_text("0.000000e+00\n")
    convert_sequence(seq, tmp_path / "bag", frames=[0])
    with AnyReader([tmp_path / "bag"], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        raw = [r for c, _, r in reader.messages() if c.topic == "/tf_static"]
    assert len(raw) == 1

    node, probe, pubs, TFMessage = tf_graph(output_frame="", base_frame="velo_link",  # the KITTI grid frame
                                            grid_in_base=np.eye(4).reshape(-1).tolist())
    assert wait_for(lambda: _connected(node, probe), 10.0)
    pubs["static"].publish(deserialize_message(bytes(raw[0]), TFMessage))
    assert wait_for(lambda: "velo_link" in node.placement.tree.frames(), 10.0)
    left, _ = textured_pair(0)
    probe.pub["left/camera_info"].publish(info_msg(P_LEFT, 10.0, frame="camera_color_left"))
    probe.pub["left/image_rect"].publish(image_msg(left, 10.0, frame="camera_color_left"))
    assert wait_for(lambda: probe.got["grid"], 30.0), node.drops.snapshot()
    _, expect = kitti_camera(read_kitti_calib(seq / "calib.txt"), "P2")
    got = node.predictor.calls[-1]["T"]
    assert np.allclose(got, expect, atol=1e-5)
    assert not np.allclose(got, np.asarray(node.params["cam_from_grid"]).reshape(4, 4), atol=1e-2)
