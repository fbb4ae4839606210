"""The 33-d camera vector on the real SemanticKITTI sequence-08 calibration, against the official formula.

Official (CGFormer ``get_mlp_input`` with KITTI's 4x4 P2 and a 4x4 identity BDA), number by number:
fx, fy, cx, cy of P2; P2[0,3], P2[1,3], P2[2,3]; post_rot[0,0], post_rot[0,1], post_tran[0], post_rot[1,0],
post_rot[1,1], post_tran[1]; bda[0,0], bda[0,1], bda[1,0], bda[1,1], bda[2,2]; bda[:3,3]; then the 3x4
sensor->ego matrix [rot | tran] = inv(Tr) row by row (camera 0 -> velodyne). The resize/crop is the official
loader's: s = 1280 / 1226, window from row int(370 s) - 384 = 2.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scanssc_ros import geometry as g
from scanssc_ros.config import ModelConfig, variant
from scanssc_ros.data.semantickitti import SemanticKittiDataset
from scanssc_ros.model.depth_net import camera_vector
from scanssc_ros.predictor import Predictor
from scanssc_ros.ros.image_decode import camera_info_to_intrinsics
from scanssc_ros.ros.params import KITTI_CAM_FROM_GRID
from scanssc_ros.training.evaluation import model_inputs


def official_vector(calib_path) -> np.ndarray:
    rows = {}
    for line in open(calib_path).read().splitlines():
        key, vals = line.split(":", 1)
        rows[key] = np.array([float(v) for v in vals.split()])
    P2 = rows["P2"].reshape(3, 4)
    Tr = np.eye(4)
    Tr[:3] = rows["Tr"].reshape(3, 4)
    s = 1280 / 1226
    top = int(370 * s) - 384
    vec = [P2[0, 0], P2[1, 1], P2[0, 2], P2[1, 2], P2[0, 3], P2[1, 3], P2[2, 3],
           s, 0.0, 0.0, 0.0, s, -top,
           1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    return np.concatenate([vec, np.linalg.inv(Tr)[:3, :4].reshape(-1)])


def _check(got: torch.Tensor, want: np.ndarray) -> None:
    got = got.double().numpy().reshape(-1)
    assert got.shape == (33,)
    for i, (a, b) in enumerate(zip(got, want)):
        # float32 arithmetic: 1e-6 relative, and 2e-6 absolute for the entries that are ~0
        assert a == pytest.approx(b, rel=1e-6, abs=2e-6), f"entry {i}: {a} vs official {b}"


def test_official_shift_entries_are_the_kitti_p2_column(kitti_seq):
    want = official_vector(kitti_seq / "calib.txt")
    assert want[4:7] == pytest.approx([46.88783, 0.1178601, 0.006203223])
    assert want[12] == -2.0


def test_dataset_path_builds_the_official_vector(kitti_seq):
    ds = SemanticKittiDataset(kitti_seq.parents[1], frames=[("08", "000000")], target_source="none",
                              with_lidar_depth=False)
    from scanssc_ros.data.sample import collate

    batch = collate([ds[0]])
    x = model_inputs(batch, "mono")
    _check(camera_vector(x.K, x.T_cam_grid, x.img_aug, x.p_shift, "official")[0], official_vector(
        kitti_seq / "calib.txt"))


def test_node_path_builds_the_official_vector_from_camera_info(kitti_seq):
    """What the node does with a KITTI camera_info (P = P2, K = its 3x3) and the shipped cam_from_grid."""
    calib = g.read_kitti_calib(kitti_seq / "calib.txt")
    P2 = calib["P2"]
    info = SimpleNamespace(width=1226, height=370, k=P2[:, :3].reshape(-1).tolist(), p=P2.reshape(-1).tolist(),
                           d=[0.0] * 5, header=SimpleNamespace(frame_id="camera_color_left"))
    cam = camera_info_to_intrinsics(info)
    T = np.asarray(KITTI_CAM_FROM_GRID, np.float64).reshape(4, 4)
    predictor = Predictor.from_config(variant("lite"))
    image = np.zeros((370, 1226, 3), np.uint8)
    x = predictor.preprocess(image, cam.K, T, None, cam.p_shift)
    _check(camera_vector(x.K, x.T_cam_grid, x.img_aug, x.p_shift, predictor.config.input_convention)[0],
           official_vector(kitti_seq / "calib.txt"))


def test_rectified_camera_info_uses_p_not_k(kitti_seq):
    P = np.array([[700.0, 0, 600, 0], [0, 705.0, 180, 0], [0, 0, 1, 0]])
    K_raw = [690.0, 0, 610, 0, 695.0, 170, 0, 0, 1]  # the raw (distorted) camera: not what image_rect shows
    info = SimpleNamespace(width=1226, height=370, k=K_raw, p=P.reshape(-1).tolist(), d=[-0.3, 0.1, 0, 0, 0],
                           header=SimpleNamespace(frame_id="cam"))
    cam = camera_info_to_intrinsics(info)
    assert np.array_equal(cam.K, P[:, :3]) and np.array_equal(cam.p_shift, np.zeros(3))
    zero_p = SimpleNamespace(**{**vars(info), "p": [0.0] * 12})
    assert np.array_equal(camera_info_to_intrinsics(zero_p).K, np.asarray(K_raw).reshape(3, 3))


def test_shift_folded_convention_is_what_older_checkpoints_were_trained_with(kitti_seq):
    K, T = g.kitti_camera(g.read_kitti_calib(kitti_seq / "calib.txt"))
    shift = g.read_kitti_calib(kitti_seq / "calib.txt")["P2"][:, 3]
    aug, _ = g.input_transform(370, 1226)
    args = [torch.as_tensor(a, dtype=torch.float32)[None] for a in (K, T, aug, shift)]
    old = camera_vector(*args, convention="shift_folded")[0]
    new = camera_vector(*args, convention="official")[0]
    assert torch.equal(old[4:7], torch.zeros(3))
    assert torch.allclose(old[21:], torch.as_tensor(np.linalg.inv(T)[:3].reshape(-1), dtype=torch.float32))
    assert torch.equal(old[:4], new[:4]) and torch.equal(old[7:21], new[7:21])
    # camera 2 sits ~6 cm left of camera 0: the two sensor->ego translations differ by that offset
    assert 0.05 < float((old[21:] - new[21:]).reshape(3, 4)[:, 3].norm()) < 0.07


def test_config_without_new_fields_loads_as_the_legacy_network():
    old = variant("lite").to_dict()
    for name in ("input_convention", "se_divisor", "num_level_embeds"):
        del old[name]
    cfg = ModelConfig.from_dict(old)
    assert (cfg.input_convention, cfg.se_divisor, cfg.num_level_embeds) == ("shift_folded", 8, 1)
    assert (variant("lite").input_convention, variant("paper").se_divisor) == ("official", 1)


def test_bundled_checkpoint_predates_the_tag_and_still_loads():
    from pathlib import Path

    from scanssc_ros import checkpoint

    path = Path(__file__).resolve().parents[1] / "models" / "scanssc_lite_synth.pt"
    assert "input_convention" not in checkpoint.read(path)["config"]
    _, cfg, _ = checkpoint.load(path)
    assert cfg.input_convention == "shift_folded" and cfg.se_divisor == 8
