"""The numpy-spliced MarkerArray CDR against the object path (rclpy builds and serializes every Point)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")

from rclpy.serialization import deserialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec  # noqa: E402
from scanssc_ros.labels import SEMANTIC_KITTI  # noqa: E402
from scanssc_ros.ros.marker_cdr import cdr_self_check, marker_array_cdr, splice_points  # noqa: E402
from scanssc_ros.ros.voxel_encode import PointCache, to_marker_array  # noqa: E402

TINY = GridSpec((0.0, -25.6, -2.0), 0.8, (64, 64, 8))


def _scene(grid: GridSpec, n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.zeros(grid.dims, np.uint8)
    idx = np.sort(rng.choice(grid.num_voxels, n, replace=False))
    labels.reshape(-1)[idx] = rng.integers(1, 20, idx.size)
    return labels, idx


@pytest.mark.parametrize("frame", ["", "a", "cam", "abcdefg", "camera_color_left", "x" * 29])
@pytest.mark.parametrize("grid, n, prev, clear", [
    (SEMANTIC_KITTI_GRID, 5000, ("ghost", "road"), False),
    (SEMANTIC_KITTI_GRID, 37, (), True),
    (TINY, 1, ("car",), False),
])
def test_spliced_bytes_deserialize_to_the_object_message(frame, grid, n, prev, clear):
    labels, idx = _scene(grid, n, seed=len(frame) + n)
    header = Header(frame_id=frame)
    header.stamp.sec, header.stamp.nanosec = 1317384000, 999999999
    pose = np.eye(4)
    pose[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    pose[:3, 3] = [0.05, -0.07, -0.33]
    args = (idx, labels, grid, header, SEMANTIC_KITTI.classes, SEMANTIC_KITTI.color_table(), prev, 0.3, pose, clear)
    raw, present = marker_array_cdr(*args)
    ref, ref_present = to_marker_array(*args, point_cache=PointCache(grid))
    got = deserialize_message(raw, MarkerArray)
    assert present == ref_present
    assert got == ref
    assert sum(len(m.points) for m in got.markers) == idx.size


def test_reused_markers_give_each_frame_its_own_message():
    """The node keeps one marker per class across frames (``reuse``): a class that leaves and comes back, a new
    frame id, stamp, pose and lifetime must all show up as if every marker were new."""
    reuse: dict = {}
    prev: set = set()
    for k, (frame, n, keep) in enumerate([("cam", 3000, None), ("cam", 800, {1, 9}), ("camera_left", 2000, None),
                                          ("", 1, None)]):
        labels, idx = _scene(SEMANTIC_KITTI_GRID, n, seed=k)
        if keep is not None:
            labels.reshape(-1)[idx[~np.isin(labels.reshape(-1)[idx], list(keep))]] = 0
            idx = np.flatnonzero(labels)
        header = Header(frame_id=frame)
        header.stamp.sec = 100 + k
        pose = np.eye(4)
        pose[:3, 3] = [k, -k, 0.5 * k]
        args = (idx, labels, SEMANTIC_KITTI_GRID, header, SEMANTIC_KITTI.classes, SEMANTIC_KITTI.color_table(),
                prev, 0.1 * (k + 1), pose)
        raw, present = marker_array_cdr(*args, reuse=reuse)
        ref, _ = to_marker_array(*args, point_cache=PointCache(SEMANTIC_KITTI_GRID))
        assert deserialize_message(raw, MarkerArray) == ref, f"frame {k}"
        prev = present
    assert len(reuse) == 19  # one per class seen, reused rather than piling up


def test_no_voxels_gives_only_deletes():
    labels = np.zeros(TINY.dims, np.uint8)
    raw, present = marker_array_cdr(np.zeros(0, np.int64), labels, TINY, Header(), SEMANTIC_KITTI.classes,
                                    SEMANTIC_KITTI.color_table(), prev_namespaces={"car"})
    got = deserialize_message(raw, MarkerArray)
    assert present == set() and [(m.ns, m.action) for m in got.markers] == [("car", Marker.DELETE)]


def test_splice_refuses_an_empty_cube_list():
    with pytest.raises(ValueError, match="at least one point"):
        splice_points([Marker(action=Marker.ADD)], [np.zeros((0, 3))])
    with pytest.raises(ValueError, match="ADD markers"):
        splice_points([Marker(action=Marker.ADD)], [])


def test_self_check_passes_here():
    assert cdr_self_check(SEMANTIC_KITTI_GRID) and cdr_self_check(TINY)
