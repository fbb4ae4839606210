"""The spliced SemanticVoxelGrid CDR (``grid_cdr``) against the message rclpy builds and serializes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from scanssc_ros.msg import SemanticVoxelGrid  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec  # noqa: E402
from scanssc_ros.grid_codec import ENCODINGS, decode_grid  # noqa: E402
from scanssc_ros.labels import SEMANTIC_KITTI  # noqa: E402
from scanssc_ros.ros.grid_cdr import grid_cdr_self_check, grid_message_cdr  # noqa: E402
from scanssc_ros.ros.grid_message import to_grid_message  # noqa: E402
from scanssc_ros.ros.outputs import OutputBuilder, OutputOptions  # noqa: E402

ODD = GridSpec((0.0, -2.0, -1.0), 0.4, (7, 5, 3))  # 105 voxels: payload lengths of every residue


def _scene(grid: GridSpec, seed: int, occupied: float):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(grid.dims) < occupied, rng.integers(1, 20, grid.dims), 0).astype(np.uint8)
    labels[rng.random(grid.dims) < 0.05] = 255
    return labels, rng.integers(0, 256, grid.dims, dtype=np.uint8)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("grid, occupied", [(SEMANTIC_KITTI_GRID, 0.03), (ODD, 0.3), (ODD, 0.0)])
def test_spliced_grid_deserializes_to_the_object_message(encoding, grid, occupied):
    labels, conf = _scene(grid, 1, occupied)
    pose = np.eye(4)
    pose[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    pose[:3, 3] = [0.05, -0.07, -0.33]
    for frame in ("", "cam", "camera_color_left", "x" * 13):
        header = Header(frame_id=frame)
        header.stamp.sec, header.stamp.nanosec = 1317384000, 5
        for c in (conf, None):
            args = (labels, grid, header, SEMANTIC_KITTI, pose, c, None, encoding)
            got = deserialize_message(grid_message_cdr(*args), SemanticVoxelGrid)
            # through rclpy as well: float32 fields (voxel_size 0.2) come back rounded either way
            ref = deserialize_message(serialize_message(to_grid_message(*args)), SemanticVoxelGrid)
            assert got == ref, (frame, c is None)
            lab, back = decode_grid(got)
            assert np.array_equal(lab, labels)


def test_self_check_passes_and_the_builder_sends_bytes():
    assert grid_cdr_self_check()
    labels, conf = _scene(SEMANTIC_KITTI_GRID, 2, 0.02)
    builder = OutputBuilder(SEMANTIC_KITTI_GRID, SEMANTIC_KITTI, np.eye(4))
    assert builder.serialized_grid
    stamp = Header().stamp
    for encoding in ENCODINGS:
        msgs, _ = builder.build(labels, conf, stamp, "cam", OutputOptions(grid_encoding=encoding,
                                                                          publish_markers=False, publish_cloud=False))
        assert isinstance(msgs["grid"], bytes)
        lab, c = decode_grid(deserialize_message(msgs["grid"], SemanticVoxelGrid))
        assert np.array_equal(lab, labels)
        assert np.array_equal(c[labels != 0], conf[labels != 0]) if encoding == "sparse" else np.array_equal(c, conf)
    objects = OutputBuilder(SEMANTIC_KITTI_GRID, SEMANTIC_KITTI, np.eye(4), serialized=False)
    msgs, _ = objects.build(labels, conf, stamp, "cam", OutputOptions(publish_markers=False, publish_cloud=False))
    assert isinstance(msgs["grid"], SemanticVoxelGrid)
