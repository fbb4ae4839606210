"""The parameter table (ROS-free) and the node's runtime validation (rclpy)."""
from __future__ import annotations

import pytest

from scanssc_ros.ros.params import KITTI_CAM_FROM_GRID, PARAMS, PARAMS_BY_NAME, validate_values


@pytest.mark.parametrize("name, value, ok", [
    ("device", "cpu", True), ("device", "cuda", True), ("device", "cuda:3", True),
    ("device", "gpu", False), ("device", "cuda:x", False),
    ("precision", "bf16", True), ("precision", "fp8", False),
    ("sync_tolerance", 0.5, True), ("sync_tolerance", 1, True), ("sync_tolerance", -0.1, False),
    ("sync_tolerance", "0.1", False),
    ("max_voxels", 0, True), ("max_voxels", -1, False), ("max_voxels", 1.5, False), ("max_voxels", True, False),
    ("cam_from_grid", KITTI_CAM_FROM_GRID, True), ("cam_from_grid", KITTI_CAM_FROM_GRID[:12], False),
    ("cam_from_grid", KITTI_CAM_FROM_GRID[:15] + [2.0], False),
    ("cam_from_grid", [float("nan")] * 12 + [0.0, 0.0, 0.0, 1.0], False),
    ("publish_cloud", False, True), ("publish_cloud", 0, False),
    ("image_transport", "compressed", True), ("image_transport", "raw", True), ("image_transport", "jpeg", False),
])
def test_validate(name, value, ok):
    problem = PARAMS_BY_NAME[name].validate(value)
    assert (problem is None) == ok, problem
    if not ok:
        assert name in problem


def test_defaults_are_valid_and_unknown_names_reported():
    assert validate_values({p.name: p.default for p in PARAMS}) == []
    assert validate_values({"no_such_param": 1}) == ["unknown parameter 'no_such_param'"]


@pytest.mark.ros
def test_runtime_updates_are_validated(ros_context):
    pytest.importorskip("rclpy")
    from nodeutil import FakePredictor
    from rclpy.parameter import Parameter

    from scanssc_ros.ros.node import ScanSSCNode

    node = ScanSSCNode(predictor=FakePredictor(), context=ros_context,
                       parameter_overrides=[Parameter("warmup", value=False)])
    try:
        bad = node.set_parameters([Parameter("sync_tolerance", value=5.0)])[0]
        assert not bad.successful and "sync_tolerance" in bad.reason
        bad = node.set_parameters([Parameter("class_filter", value=3)])[0]
        assert not bad.successful
        frozen = node.set_parameters([Parameter("device", value="cpu")])[0]
        assert not frozen.successful and "read-only" in frozen.reason
        good = node.set_parameters([Parameter("confidence_threshold", value=0.4)])[0]
        assert good.successful and node.params["confidence_threshold"] == pytest.approx(0.4)
    finally:
        node.close()
        node.destroy_node()
