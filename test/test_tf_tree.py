"""TfTree: lookups along the frame tree, interpolation, and its errors (plain numpy, no ROS)."""
from __future__ import annotations

import numpy as np
import pytest

from scanssc_ros.geometry import rotation_to_quaternion
from scanssc_ros.tf_tree import TfError, TfTree, interpolate, make_transform


def _rot_z(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.deg2rad(deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    T[:3, 3] = t
    return T


def test_static_chain_and_inverse():
    tree = TfTree()
    base_cam = make_transform((1.5, 0.0, 1.2), (-0.5, 0.5, -0.5, 0.5))  # optical frame under base_link
    base_velo = _rot_z(2.0, (0.8, 0.0, 1.73))
    tree.set_transform("base_link", "camera_optical", base_cam, static=True)
    tree.set_transform("base_link", "velodyne", base_velo, static=True)
    got = tree.lookup("camera_optical", "velodyne", 123)
    assert np.allclose(got, np.linalg.inv(base_cam) @ base_velo)
    assert np.allclose(tree.lookup("velodyne", "camera_optical", 0), np.linalg.inv(got))
    assert np.allclose(tree.lookup("base_link", "base_link", 0), np.eye(4))


def test_dynamic_edge_is_interpolated_at_the_stamp():
    tree = TfTree()
    tree.set_transform("base_link", "camera", _rot_z(0, (0.5, 0, 1.0)), static=True)
    t0, t1 = 1_000_000_000, 1_100_000_000
    tree.set_transform("odom", "base_link", _rot_z(10, (2.0, 0.0, 0.0)), t0)
    tree.set_transform("odom", "base_link", _rot_z(20, (3.0, 1.0, 0.0)), t1)
    mid = tree.lookup("odom", "camera", (t0 + t1) // 2)
    expect = _rot_z(15, (2.5, 0.5, 0.0)) @ _rot_z(0, (0.5, 0, 1.0))
    assert np.allclose(mid, expect, atol=1e-9)
    # a quarter of the way: slerp of the rotation angle, lerp of the translation
    q = tree.lookup("odom", "base_link", t0 + (t1 - t0) // 4)
    assert np.allclose(q, _rot_z(12.5, (2.25, 0.25, 0.0)), atol=1e-9)


def test_interpolate_takes_the_short_way_round():
    a, b = _rot_z(170), _rot_z(-170)
    half = interpolate(a, b, 0.5)
    assert abs(abs(np.rad2deg(np.arctan2(half[1, 0], half[0, 0]))) - 180.0) < 1e-6
    q = rotation_to_quaternion(half)
    assert abs(np.linalg.norm(q) - 1.0) < 1e-12


def test_errors_name_the_cause():
    tree = TfTree(tolerance_ns=10_000_000)
    tree.set_transform("odom", "base_link", np.eye(4), 1_000_000_000)
    tree.set_transform("odom", "base_link", np.eye(4), 2_000_000_000)
    tree.set_transform("map2", "other", np.eye(4), static=True)
    with pytest.raises(TfError, match="would need extrapolation"):
        tree.lookup("odom", "base_link", 2_500_000_000)
    with pytest.raises(TfError, match="older than the oldest"):
        tree.lookup("odom", "base_link", 500_000_000)
    assert np.allclose(tree.lookup("odom", "base_link", 2_005_000_000), np.eye(4))  # within tolerance
    with pytest.raises(TfError, match="not in the TF tree"):
        tree.lookup("odom", "camera", 1_500_000_000)
    with pytest.raises(TfError, match="not connected"):
        tree.lookup("odom", "other", 1_500_000_000)
    with pytest.raises(ValueError):
        tree.set_transform("a", "a", np.eye(4))
    with pytest.raises(ValueError):
        tree.set_transform("a", "b", np.full((4, 4), np.nan))


def test_cache_keeps_a_bounded_window_and_reparenting_drops_the_old_edge():
    tree = TfTree(cache_ns=1_000_000_000)
    for i in range(50):
        tree.set_transform("odom", "base_link", _rot_z(0, (i, 0, 0)), i * 100_000_000)
    assert len(tree._edges[("odom", "base_link")].stamps) == 11
    tree.set_transform("map", "base_link", np.eye(4), static=True)
    assert ("odom", "base_link") not in tree._edges and tree.lookup("map", "base_link", 0)[0, 3] == 0.0
