"""Camera <-> grid geometry on the real SemanticKITTI calibration and LiDAR scan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scanssc_ros import geometry as g

IMAGE_WH = (1226, 370)


def _load(kitti_seq):
    K, T = g.kitti_camera(g.read_kitti_calib(kitti_seq / "calib.txt"))
    pts = np.fromfile(kitti_seq / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)[:, :3].astype(np.float64)
    return K, T, pts


def test_lidar_projection_round_trip_numpy(kitti_seq):
    K, T, pts = _load(kitti_seq)
    uv, d = g.project_points(pts, K, T)
    front = d > 0
    back = g.unproject_pixels(uv[front], d[front], K, T)
    assert np.abs(back - pts[front]).max() < 1e-4


def test_lidar_projection_round_trip_torch_batched(kitti_seq):
    K, T, pts = _load(kitti_seq)
    P = torch.from_numpy(pts[:5000])[None].repeat(2, 1, 1)
    Kt, Tt = torch.from_numpy(K)[None].repeat(2, 1, 1), torch.from_numpy(T)[None].repeat(2, 1, 1)
    aug = torch.from_numpy(g.input_transform(IMAGE_WH[1], IMAGE_WH[0])[0])[None].repeat(2, 1, 1)
    uv, d = g.project_points(P, Kt, Tt, aug)
    front = d[0] > 0
    back = g.unproject_pixels(uv[:, front], d[:, front], Kt, Tt, aug)
    assert back.dtype == torch.float64
    assert (back - P[:, front]).abs().max().item() < 1e-4


def test_projected_points_land_in_image(kitti_seq):
    K, T, pts = _load(kitti_seq)
    uv, d = g.project_points(pts, K, T)
    w, h = IMAGE_WH
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    front = d > 0
    # a 360 deg scanner: about half the points are in front, and the ~80 deg camera sees a third of those
    assert 0.4 < front.mean() < 0.6
    assert 0.2 < (inside & front).sum() / front.sum() < 0.5
    # within the camera's horizontal field of view most points must land in the image (the rest fall below it)
    yaw = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    cone = front & (np.abs(yaw) < 35) & (d > 1)
    assert (inside & cone).sum() / cone.sum() > 0.6
    # nothing behind the camera may be reported inside with positive depth
    assert not np.any(inside & (d <= 0) & (np.abs(yaw) < 35))


def test_input_transform_maps_bottom_crop(kitti_seq):
    aug, (rh, rw, top, left) = g.input_transform(IMAGE_WH[1], IMAGE_WH[0])
    assert (rh, rw, top, left) == (386, 1280, 2, 0)
    bottom_right = aug @ np.array([IMAGE_WH[0], IMAGE_WH[1], 1.0])
    assert abs(bottom_right[0] - 1280) < 1e-6
    assert 383.5 < bottom_right[1] < 385.0  # the original bottom edge stays the bottom edge of the crop


def test_input_transform_truncates_like_the_official_loader():
    """1241x376 (KITTI odometry 00-02): int(1241 * 1280/1241) is 1279 in floating point and int(376 * s) = 387,
    so the window starts at row 3 and its last column lies outside the resized image."""
    aug, (rh, rw, top, left) = g.input_transform(376, 1241)
    assert (rh, rw, top, left) == (387, 1279, 3, 0)
    assert aug[0, 0] == aug[1, 1] == 1280 / 1241 and aug[1, 2] == -3.0 and aug[0, 2] == 0.0
    # a wider-than-window resize is centred: 1408 px -> 1280 px wide window from column 64 at scale 1.0
    assert g.input_transform(376, 1408, (384, 1280))[1] == (341, 1280, -43, 0)
    assert g.input_transform(376, 1408, (384, 1408))[1] == (376, 1408, -8, 0)


def test_voxel_centres_in_a_frame_match_transforming_the_grid_centres():
    from scanssc_ros.geometry import (
        SEMANTIC_KITTI_GRID,
        quaternion_to_rotation,
        transform_points,
        voxel_center_of_flat,
        voxel_centers_in_frame,
    )

    rng = np.random.default_rng(0)
    flat = np.sort(rng.choice(SEMANTIC_KITTI_GRID.num_voxels, 5000, replace=False))
    q = rng.normal(size=4)
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(tuple(q / np.linalg.norm(q)))
    T[:3, 3] = (12.5, -3.0, 40.0)
    for pose in (None, T):
        expect = voxel_center_of_flat(flat, SEMANTIC_KITTI_GRID)
        if pose is not None:
            expect = transform_points(pose, expect)
        got = voxel_centers_in_frame(flat, SEMANTIC_KITTI_GRID, pose)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expect, atol=1e-5)  # float32 output of metre-scale coordinates


def test_unravel_flat_equals_numpy_on_power_of_two_and_other_dims():
    from scanssc_ros.geometry import unravel_flat

    rng = np.random.default_rng(1)
    for dims in ((256, 256, 32), (3, 4, 8), (7, 16), (256, 255, 32), (2, 2, 2, 2), (5,), (1, 1, 1)):
        n = int(np.prod(dims))
        flat = np.concatenate([[0, n - 1], rng.integers(0, n, 2000)])
        got, expect = unravel_flat(flat, dims), np.unravel_index(flat, dims)
        assert len(got) == len(dims)
        for axis, e in zip(got, expect):
            assert axis.dtype == np.int64
            np.testing.assert_array_equal(axis, e, err_msg=str(dims))
    assert [a.size for a in unravel_flat(np.zeros(0, np.int64), (256, 256, 32))] == [0, 0, 0]
    for dims in ((256, 256, 32), (3, 5, 7)):
        for bad in (-1, int(np.prod(dims))):
            with pytest.raises(ValueError):
                unravel_flat(np.array([3, bad]), dims)


def test_voxel_centres_written_into_a_record_view():
    from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, voxel_centers_in_frame

    flat = np.array([0, 7, 123_456, SEMANTIC_KITTI_GRID.num_voxels - 1])
    T = np.eye(4)
    T[:3, 3] = (1.0, 2.0, 3.0)
    records = np.zeros((flat.size, 5), np.float32)
    voxel_centers_in_frame(flat, SEMANTIC_KITTI_GRID, T, out=records[:, 1:4])
    np.testing.assert_array_equal(records[:, 1:4], voxel_centers_in_frame(flat, SEMANTIC_KITTI_GRID, T))
    assert not records[:, [0, 4]].any()
    with pytest.raises(ValueError, match="shape"):
        voxel_centers_in_frame(flat, SEMANTIC_KITTI_GRID, T, out=records[:2, 1:4])


def test_camera_geometry_stays_fp32_inside_autocast():
    """The model projects voxel centres and frustum points inside its bf16/fp16 autocast region. Before the
    geometry opted out, bf16 matrix products moved projected pixels by up to 145 px on CPU and the CUDA run
    died in linalg.inv (no half kernels)."""
    from scanssc_ros.model.depth_net import camera_vector
    from scanssc_ros.model.examples import KITTI_K, KITTI_T_CAM_GRID

    torch.manual_seed(0)
    K = torch.tensor(KITTI_K, dtype=torch.float32)[None]
    T = torch.tensor(KITTI_T_CAM_GRID, dtype=torch.float32)[None]
    aug = torch.tensor(g.input_transform(IMAGE_WH[1], IMAGE_WH[0])[0], dtype=torch.float32)[None]
    pts = torch.rand(1, 500, 3) * torch.tensor([51.2, 51.2, 6.4]) + torch.tensor([0.0, -25.6, -2.0])
    shift = torch.tensor([[44.9, 0.2, 0.003]])

    def run():
        uv, d = g.project_points(pts, K, T, aug)
        return uv, d, g.unproject_pixels(uv, d, K, T, aug), g.transform_points(T, pts), camera_vector(K, T, aug, shift)

    ref = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        got = run()
        assert torch.is_autocast_enabled("cpu")  # restored for the layers that follow
    for r, o in zip(ref, got):
        assert o.dtype == torch.float32
        assert torch.equal(r, o)
