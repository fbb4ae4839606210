"""Dataset readers and the image pipeline: real SemanticKITTI sample, synthetic layouts in tmp_path."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from scanssc_ros.data import image as im
from scanssc_ros.data import kitti360
from scanssc_ros.data.labels_io import write_packed_voxels, write_voxel_labels
from scanssc_ros.data.sample import cached_array, collate
from scanssc_ros.data.semantickitti import SemanticKittiDataset, split_frames
from scanssc_ros.geometry import input_transform, kitti_camera, read_kitti_calib, stereo_baseline


# ------------------------------------------------------------------------------------------- image pipeline
def _rgb(h=370, w=1226, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_prepare_image_without_jitter_is_resize_crop_normalise():
    rgb = _rgb()
    x, aug = im.prepare_image(rgb)
    exp_aug, (rh, rw, top, left) = input_transform(370, 1226)
    assert x.shape == (3, 384, 1280) and x.dtype == torch.float32 and np.allclose(aug, exp_aug)
    # the official loader: PIL resize (default filter: bicubic), then PIL crop
    resized = np.asarray(Image.fromarray(rgb).resize((rw, rh)).crop((left, top, left + 1280, top + 384)))
    mean, std = np.array(im.IMAGENET_MEAN), np.array(im.IMAGENET_STD)
    expected = ((resized / 255.0 - mean) / std).transpose(2, 0, 1)
    assert np.allclose(x.numpy(), expected, atol=1e-5)


def test_top_padding_for_short_images():
    x, aug = im.prepare_image(np.full((376, 1408, 3), 255, np.uint8), out_hw=(384, 1408))
    black = -np.array(im.IMAGENET_MEAN) / np.array(im.IMAGENET_STD)
    assert np.allclose(x[:, :8].mean((1, 2)).numpy(), black, atol=1e-5)
    assert aug[1, 2] == pytest.approx(8.0)


def _jitter_only(img, b=0.0, c=0.0, s=0.0, seed=0):
    return im.color_jitter(img, b, c, s, generator=torch.Generator().manual_seed(seed))


def test_color_jitter_components():
    img = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    gray = lambda t: (t * torch.tensor(im._GRAY_WEIGHTS).view(3, 1, 1)).sum(0)  # noqa: E731
    for seed in range(5):
        out = _jitter_only(img, b=0.4, seed=seed)  # brightness: a single scale factor in [0.6, 1.4]
        ratio = out / img
        unclipped = out < 1.0
        f = ratio[unclipped].mean()
        assert 0.6 <= f <= 1.4 and torch.allclose(ratio[unclipped], f.expand_as(ratio[unclipped]), atol=1e-5)
        out = _jitter_only(img, s=0.4, seed=seed)  # saturation: blending with grey keeps the grey level
        inside = ((out > 0) & (out < 1)).all(0)
        assert torch.allclose(gray(out)[inside], gray(img)[inside], atol=1e-5)
        out = _jitter_only(img, c=0.4, seed=seed)  # contrast: an affine map around the mean grey level
        a = torch.linalg.lstsq(torch.stack([img.flatten(), torch.ones(img.numel())], 1), out.flatten()[:, None])
        fit = a.solution[0] * img + a.solution[1]
        assert torch.allclose(fit, out, atol=1e-4)
    assert torch.equal(_jitter_only(img, 0.4, 0.4, 0.4, seed=3), _jitter_only(img, 0.4, 0.4, 0.4, seed=3))
    assert not torch.equal(_jitter_only(img, 0.4, 0.4, 0.4, seed=3), _jitter_only(img, 0.4, 0.4, 0.4, seed=4))


def test_cached_array_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    path = tmp_path / "c" / "08" / "000000.npy"
    a = cached_array(path, compute)
    b = cached_array(path, compute)
    assert np.array_equal(a, b) and len(calls) == 1 and list(path.parent.iterdir()) == [path]


# --------------------------------------------------------------------------------------- real SemanticKITTI
def test_real_calib(kitti_seq):
    calib = read_kitti_calib(kitti_seq / "calib.txt")
    assert calib["P2"].shape == (3, 4) and calib["Tr"].shape == (4, 4)
    assert calib["P2"][0, 0] == pytest.approx(707.0912)
    assert stereo_baseline(calib["P2"], calib["P3"]) == pytest.approx(0.5379, abs=1e-3)
    K, T = kitti_camera(calib)
    assert np.allclose(K, calib["P2"][:, :3])
    # projecting with (K, T) equals projecting with P2 @ Tr
    p = np.array([10.0, 2.0, -0.5, 1.0])
    a = calib["P2"] @ calib["Tr"] @ p
    b = K @ (T @ p)[:3]
    assert np.allclose(a[:2] / a[2], b[:2] / b[2])


@pytest.fixture(scope="module")
def mini_root(shared_data):
    return shared_data / "semantickitti-mini"


def test_real_split_and_item(mini_root, kitti_seq):
    assert split_frames(mini_root, "val") == [("08", "000000"), ("08", "000005")]
    ds = SemanticKittiDataset(mini_root, split="val", target_source="auto", v1_z_shift=True, with_stereo=True)
    s = ds[0]
    assert s.target_source == "sparse"  # no voxel .label and no _1_1.npy in the sample data
    assert s.image.shape == (3, 384, 1280) and s.image.dtype == torch.float32
    assert s.K.shape == (3, 3) and s.T_cam_grid.shape == (4, 4) and s.img_aug.shape == (3, 3)
    assert s.target.shape == (256, 256, 32) and s.target.dtype == torch.uint8
    assert s.invalid.dtype == torch.bool and bool((s.target[s.invalid] == 255).all())
    assert s.lidar_depth.shape == (1, 384, 1280) and s.stereo_depth.shape == (1, 384, 1280)
    assert (s.lidar_depth > 0).sum() > 10000 and (s.stereo_depth > 0).float().mean() > 0.5
    both = (s.lidar_depth > 0) & (s.stereo_depth > 0)
    rel = ((s.stereo_depth - s.lidar_depth).abs() / s.lidar_depth)[both]
    assert rel.median() < 0.1  # stereo and LiDAR maps went through the same resize/crop
    batch = collate([s, ds[1]])
    assert batch.image.shape == (2, 3, 384, 1280) and batch.target.shape == (2, 256, 256, 32)
    assert batch.frame_id == ["000000", "000005"] and batch.lidar_depth.shape == (2, 1, 384, 1280)
    assert batch.to("cpu").image.shape == batch.image.shape


def test_real_jitter_only_in_training(mini_root):
    frames = [("08", "000003")]
    ev = SemanticKittiDataset(mini_root, frames=frames, target_source="none", with_lidar_depth=False)
    tr = SemanticKittiDataset(mini_root, frames=frames, target_source="none", with_lidar_depth=False,
                              training=True)
    assert torch.equal(ev[0].image, ev[0].image) and ev[0].target is None
    torch.manual_seed(0)
    assert not torch.equal(tr[0].image, ev[0].image)
    with pytest.raises(ValueError):
        collate([ev[0], SemanticKittiDataset(mini_root, frames=frames, target_source="sparse",
                                             with_lidar_depth=False)[0]])


# ---------------------------------------------------------------------------------- synthetic layouts
def _fake_kitti(tmp_path, mini_root):
    seq = tmp_path / "sequences" / "03"
    (seq / "image_2").mkdir(parents=True)
    (seq / "voxels").mkdir()
    (seq / "calib.txt").write_text((mini_root / "sequences" / "08" / "calib.txt").read_text())
    (tmp_path / "semantic-kitti.yaml").write_text((mini_root / "semantic-kitti.yaml").read_text())
    for f in ("000000", "000005"):
        cv2.imwrite(str(seq / "image_2" / f"{f}.png"), np.full((370, 1226, 3), 90, np.uint8))
    raw = np.zeros((256, 256, 32), np.uint16)
    raw[10, 20, 5] = 10  # car
    raw[11, 20, 5] = 40  # road
    write_voxel_labels(seq / "voxels" / "000000.label", raw)
    inv = np.zeros((256, 256, 32), bool)
    inv[11, 20, 5] = True
    write_packed_voxels(seq / "voxels" / "000000.invalid", inv)
    npy = np.zeros((256, 256, 32), np.uint8)
    npy[0, 0, 0] = 7
    npy[1, 1, 1] = 255
    (tmp_path / "labels" / "03").mkdir(parents=True)
    np.save(tmp_path / "labels" / "03" / "000005_1_1.npy", npy)
    return seq


def test_synthetic_target_sources(tmp_path, mini_root):
    _fake_kitti(tmp_path, mini_root)
    ds = SemanticKittiDataset(tmp_path, frames=[("03", "000000"), ("03", "000005")], with_lidar_depth=False)
    a, b = ds[0], ds[1]
    assert a.target_source == "voxel_label" and b.target_source == "preprocessed"
    assert a.target[10, 20, 5] == 1 and a.target[11, 20, 5] == 255 and int((a.target > 0).sum()) == 2
    assert b.target[0, 0, 0] == 7 and b.target[1, 1, 1] == 255 and bool(b.invalid[1, 1, 1])
    shifted = SemanticKittiDataset(tmp_path, frames=[("03", "000000")], with_lidar_depth=False, v1_z_shift=True)
    assert shifted[0].target[10, 20, 4] == 1 and shifted[0].target[10, 20, 5] == 0
    assert (shifted[0].target[..., 31] == 255).all()  # the v1.0 top layer was never stored
    none = SemanticKittiDataset(tmp_path, frames=[("03", "000005")], target_source="none", with_lidar_depth=False)
    assert none[0].target is None and none[0].invalid is None
    with pytest.raises(FileNotFoundError):
        SemanticKittiDataset(tmp_path, frames=[("03", "000005")], target_source="sparse",
                             with_lidar_depth=False)[0]
    assert split_frames(tmp_path, "train") == [("03", "000000"), ("03", "000005")]
    # a depth map in the stereo cache (the official precomputed layout) is used instead of running SGBM
    cache = tmp_path / "stereo"
    (cache / "sequences" / "03").mkdir(parents=True)
    np.save(cache / "sequences" / "03" / "000005.npy", np.full((370, 1226), 7.0, np.float32))
    st = SemanticKittiDataset(tmp_path, frames=[("03", "000005")], with_lidar_depth=False, with_stereo=True,
                              stereo_cache_dir=cache)[0]
    assert st.stereo_depth.shape == (1, 384, 1280) and bool((st.stereo_depth == 7.0).all())


def _fake_kitti360(tmp_path):
    drive = kitti360.SPLITS["val"][0]
    img_dir = tmp_path / "data_2d_raw" / drive / "image_00" / "data_rect"
    img_dir.mkdir(parents=True)
    cv2.imwrite(str(img_dir / "000042.png"), np.full((376, 1408, 3), 200, np.uint8))
    (tmp_path / "labels" / drive).mkdir(parents=True)
    target = np.zeros((256, 256, 32), np.uint8)
    target[5, 128, 10] = 18
    target[6, 128, 10] = 255
    np.save(tmp_path / "labels" / drive / "000042_1_1.npy", target)
    lidar_dir = tmp_path / "data_3d_raw" / drive / "velodyne_points" / "data"
    lidar_dir.mkdir(parents=True)
    pts = np.array([[10.0, 0.0, 0.0, 0.5], [20.0, 3.0, -1.0, 0.5], [-5.0, 0.0, 0.0, 0.5]], np.float32)
    pts.tofile(lidar_dir / "000042.bin")
    return drive, pts


def test_kitti360_calibration_constants():
    calib = kitti360.default_calib()
    assert np.allclose(calib["Tr"] @ kitti360.CAM_TO_VELO, np.eye(4))
    assert stereo_baseline(calib["P2"], calib["P3"]) == pytest.approx(328.318735 / 552.554261)
    assert np.allclose(np.linalg.det(kitti360.CAM_TO_VELO[:3, :3]), 1.0, atol=1e-6)
    # the LiDAR's forward axis (x) is the camera's optical axis (z), roughly
    assert (calib["Tr"][:3, :3] @ [1.0, 0.0, 0.0])[2] > 0.99


def test_kitti360_synthetic_directory(tmp_path):
    drive, pts = _fake_kitti360(tmp_path)
    assert kitti360.split_frames(tmp_path, "val") == [(drive, "000042")]
    ds = kitti360.Kitti360Dataset(tmp_path, split="val", with_lidar_depth=True)
    s = ds[0]
    assert s.image.shape == (3, 384, 1408) and s.target_source == "preprocessed"
    assert s.target[5, 128, 10] == 18 and bool(s.invalid[6, 128, 10]) and s.invalid.sum() == 1
    assert s.img_aug[1, 2] == pytest.approx(8.0)  # 8 rows padded on top
    d = s.lidar_depth[0]
    assert int((d > 0).sum()) == 2  # the point behind the car is dropped
    K, T = kitti_camera(kitti360.default_calib())
    cam = T[:3, :3] @ pts[0, :3] + T[:3, 3]
    uv = (s.img_aug.double().numpy() @ K @ cam)[:2] / cam[2]
    assert d[int(np.rint(uv[1])), int(np.rint(uv[0]))] == pytest.approx(cam[2], rel=1e-5)
    with pytest.raises(ValueError):
        kitti360.Kitti360Dataset(tmp_path, split="val", target_source="sparse")
