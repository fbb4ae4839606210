"""The generated scanssc_ros messages import and survive a real publish/subscribe round trip."""
from __future__ import annotations

import array

import numpy as np
import pytest

pytestmark = pytest.mark.ros


def _msg_module():
    pytest.importorskip("rclpy", reason="rclpy not installed")
    try:
        from scanssc_ros.msg import SemanticVoxelGrid
    except ImportError as exc:  # the source tree alone has no generated messages
        pytest.skip(f"generated messages not built ({exc}); run `make test`")
    return SemanticVoxelGrid


def test_message_fields_and_constants():
    SemanticVoxelGrid = _msg_module()
    msg = SemanticVoxelGrid()
    assert SemanticVoxelGrid.EMPTY == 0 and SemanticVoxelGrid.UNKNOWN == 255
    for field in ("header", "origin", "voxel_size", "size_x", "size_y", "size_z", "labels", "confidence",
                  "label_set", "class_names", "class_colors"):
        assert hasattr(msg, field), field


def test_full_grid_round_trip_is_byte_identical(ros_context):
    SemanticVoxelGrid = _msg_module()
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosutil import spin_until
    from std_msgs.msg import ColorRGBA

    from scanssc_ros.labels import SEMANTIC_KITTI

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 256, size=256 * 256 * 32, dtype=np.uint8)
    conf = rng.integers(0, 256, size=labels.size, dtype=np.uint8)
    msg = SemanticVoxelGrid()
    msg.header.frame_id = "scanssc_grid"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1318000000, 123456789
    msg.origin.position.y, msg.origin.position.z, msg.origin.orientation.w = -25.6, -2.0, 1.0
    msg.voxel_size = 0.2
    msg.size_x, msg.size_y, msg.size_z = 256, 256, 32
    msg.labels = array.array("B", labels.tobytes())
    msg.confidence = array.array("B", conf.tobytes())
    msg.label_set = SEMANTIC_KITTI.name
    msg.class_names = list(SEMANTIC_KITTI.classes)
    msg.class_colors = [ColorRGBA(r=r / 255, g=g / 255, b=b / 255, a=1.0) for r, g, b in SEMANTIC_KITTI.colors_rgb]

    node = Node("grid_roundtrip", context=ros_context)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    received = []
    node.create_subscription(SemanticVoxelGrid, "grid_roundtrip", received.append, qos)
    pub = node.create_publisher(SemanticVoxelGrid, "grid_roundtrip", qos)
    assert spin_until(node, lambda: pub.get_subscription_count() > 0, 10.0)
    pub.publish(msg)
    assert spin_until(node, lambda: len(received) > 0, 10.0), "grid not received"
    got = received[0]
    assert bytes(got.labels) == labels.tobytes()
    assert bytes(got.confidence) == conf.tobytes()
    assert (got.size_x, got.size_y, got.size_z) == (256, 256, 32)
    assert got.header.stamp.sec == 1318000000 and got.header.stamp.nanosec == 123456789
    assert got.header.frame_id == "scanssc_grid" and got.label_set == "semantickitti"
    assert list(got.class_names) == list(SEMANTIC_KITTI.classes)
    assert got.origin.position.y == pytest.approx(-25.6)
    node.destroy_node()
