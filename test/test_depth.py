"""Depth maps: LiDAR projection vs a loop reference, SGBM on synthetic and real pairs, depth-loss targets."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from scanssc_ros.data import depth
from scanssc_ros.data.image import load_rgb, resize_crop_depth
from scanssc_ros.data.labels_io import read_scan
from scanssc_ros.geometry import input_transform, kitti_camera, read_kitti_calib, stereo_baseline

# Measured on 08/000000 with the default SgbmParams (bench/real_sample_checks.py): median abs-rel 0.019.
REAL_MEDIAN_ABS_REL_MAX = 0.05


def _camera():
    K = np.array([[50.0, 0.0, 30.0], [0.0, 50.0, 20.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]])  # x forward, y left, z up -> camera axes
    return K, T


def ref_lidar_depth(points, K, T, hw, img_aug=None):
    KA = K if img_aug is None else img_aug @ K
    best = {}
    for p in points[:, :3]:
        c = T[:3, :3] @ p + T[:3, 3]
        if c[2] <= 1e-3:
            continue
        u, v, w = KA @ c
        ui, vi = int(np.rint(u / w)), int(np.rint(v / w))
        if 0 <= ui < hw[1] and 0 <= vi < hw[0]:
            best[(vi, ui)] = min(best.get((vi, ui), np.inf), c[2])
    out = np.zeros(hw, np.float32)
    for (vi, ui), d in best.items():
        out[vi, ui] = d
    return out


def test_lidar_depth_map_matches_loop_reference():
    rng = np.random.default_rng(0)
    K, T = _camera()
    pts = np.c_[rng.uniform(-2, 20, 4000), rng.uniform(-8, 8, 4000), rng.uniform(-3, 3, 4000), np.zeros(4000)]
    hw = (40, 60)
    got = depth.lidar_depth_map(pts, K, T, hw)
    assert np.allclose(got, ref_lidar_depth(pts, K, T, hw), rtol=1e-6)
    assert (got > 0).sum() > 500  # collisions happened and many pixels are filled
    aug = np.array([[0.5, 0.0, -2.0], [0.0, 0.5, 3.0], [0.0, 0.0, 1.0]])
    assert np.allclose(depth.lidar_depth_map(pts, K, T, (24, 20), aug),
                       ref_lidar_depth(pts, K, T, (24, 20), aug), rtol=1e-6)


def test_disparity_to_depth():
    disp = np.array([[0.0, 10.0, 50.0]], np.float32)
    assert np.allclose(depth.disparity_to_depth(disp, 700.0, 0.5), [[0.0, 35.0, 7.0]])
    with pytest.raises(ValueError):
        depth.disparity_to_depth(disp, 700.0, -0.5)


def test_sgbm_recovers_synthetic_shift():
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.integers(0, 256, (80, 260)).astype(np.uint8), (3, 3), 0)
    d_true = 12
    left = tex[:, :200].copy()
    right = tex[:, d_true:200 + d_true].copy()  # right[x - d] = left[x]: the right camera sees points at x - d
    params = depth.SgbmParams(num_disparities=32, speckle_window_size=0)
    disp = depth.sgbm_disparity(left, right, params)
    interior = disp[10:-10, 40:-10]
    assert np.median(interior[interior > 0]) == pytest.approx(d_true, abs=0.25)
    assert (interior > 0).mean() > 0.9
    z = depth.stereo_depth(left, right, fx=100.0, baseline=0.6, params=params)[10:-10, 40:-10]
    assert np.median(z[z > 0]) == pytest.approx(100.0 * 0.6 / d_true, rel=0.03)


@pytest.mark.parametrize("width", [40, 191, 192])
def test_sgbm_refuses_images_not_wider_than_the_disparity_range(width):
    # OpenCV raises for these, and 191 (num_disparities - 1) crashed the process (SIGSEGV/SIGFPE, opencv 5.0.0)
    img = np.random.default_rng(0).integers(0, 256, (12, width, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="SGBM needs more than num_disparities = 192 px"):
        depth.sgbm_disparity(img, img)
    assert depth.sgbm_disparity(img[:, :1].repeat(193, axis=1), img[:, :1].repeat(193, axis=1)).shape == (12, 193)


def test_min_valid_depth_pool_matches_loops():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(2, 1, 16, 24, generator=g) * 50
    d[torch.rand(d.shape, generator=g) < 0.8] = 0
    d[0, 0, :8, :8] = 0  # an empty patch
    got = depth.min_valid_depth_pool(d, 8)
    assert got.shape == (2, 1, 2, 3) and got[0, 0, 0, 0] == 0
    for b in range(2):
        for i in range(2):
            for j in range(3):
                patch = d[b, 0, 8 * i:8 * i + 8, 8 * j:8 * j + 8]
                vals = patch[patch > 0]
                assert got[b, 0, i, j] == (vals.min() if vals.numel() else 0)


def test_gaussian_target_fixed_and_official_quirk():
    centres = torch.arange(2.0, 58.0, 0.5, dtype=torch.float64)
    d = torch.tensor([2.0, 10.0, 10.2, 35.0, 57.5], dtype=torch.float64)
    t = depth.gaussian_depth_target(d)
    assert t.shape == (5, 112) and torch.allclose(t.sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose((t * centres).sum(1)[1:4], d[1:4], atol=1e-6)  # unbiased away from the ends
    # bin 16 is centred at 10 m: it holds the integral of N(0, 0.5) over [-0.25, 0.25]
    assert t[1, 16].item() == pytest.approx(math.erf(0.25 / (0.5 * math.sqrt(2))), rel=1e-9)
    q = depth.gaussian_depth_target(d, official_quirk=True)
    assert centres[q[1].argmax()].item() == pytest.approx(20.0)  # mass lands at "2 d"
    assert q[3].sum().item() < 1e-6  # and vanishes beyond ~29 m
    assert q[1].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_resize_crop_depth_nearest_and_consistent_with_img_aug():
    h, w = 370, 1226
    vv, uu = np.mgrid[0:h, 0:w]
    code = (vv * w + uu + 1).astype(np.float32)  # every source pixel has a unique non-zero value
    code[100:120, 300:400] = 0  # an invalid hole
    out = resize_crop_depth(code, (384, 1280))
    img_aug, _ = input_transform(h, w, (384, 1280))
    assert out.shape == (384, 1280)
    assert np.isin(out[out > 0], code).all()  # no blended values
    for vo, uo in [(0, 0), (200, 640), (383, 1279), (50, 17)]:
        src = np.linalg.solve(img_aug, [uo, vo, 1.0])
        us, vs = int(np.rint(src[0])), int(np.rint(src[1]))
        assert out[vo, uo] == code[vs, us]
    assert (out == 0).sum() == pytest.approx(20 * 100 * (1280 / 1226) ** 2, rel=0.15)
    padded = resize_crop_depth(np.ones((376, 1408), np.float32), (384, 1408))
    assert (padded[:8] == 0).all() and (padded[8:] == 1).all()


def test_real_sgbm_depth_against_lidar(kitti_seq):
    calib = read_kitti_calib(kitti_seq / "calib.txt")
    left, right = load_rgb(kitti_seq / "image_2" / "000000.png"), load_rgb(kitti_seq / "image_3" / "000000.png")
    baseline = stereo_baseline(calib["P2"], calib["P3"])
    assert baseline == pytest.approx(0.537, abs=0.005)
    stereo = depth.stereo_depth(left, right, float(calib["P2"][0, 0]), baseline)
    K, T = kitti_camera(calib)
    lidar = depth.lidar_depth_map(read_scan(kitti_seq / "velodyne" / "000000.bin"), K, T, left.shape[:2])
    both = (stereo > 0) & (lidar > 0)
    assert both.sum() > 5000
    abs_rel = np.abs(stereo[both] - lidar[both]) / lidar[both]
    assert np.median(abs_rel) < REAL_MEDIAN_ABS_REL_MAX
