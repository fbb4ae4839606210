"""scanssc-infer: predictions (.npy / .label) and PNG renders from a sequence or an image folder, through the
Predictor."""
from __future__ import annotations

import cv2
import numpy as np
from fake_kitti import RAW_IDS, fake_kitti, tiny_checkpoint  # noqa: F401  (session fixtures)

from scanssc_ros.cli import infer as infer_cli
from scanssc_ros.data.depth import stereo_depth
from scanssc_ros.data.image import load_rgb
from scanssc_ros.geometry import kitti_camera, read_kitti_calib, stereo_baseline
from scanssc_ros.predictor import Predictor


def test_sequence_mono_npy_label_and_render(fake_kitti, tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    seq = fake_kitti / "sequences" / "08"
    rc = infer_cli.main(["--checkpoint", str(tiny_checkpoint), "--sequence", str(seq), "--frames", "000001",
                         "--format", "both", "--out", str(tmp_path), "--threads", "1", "--no-progress"])
    assert rc == 0
    assert "1 frame(s), mono mode" in capsys.readouterr().err  # auto -> the checkpoint's mode
    labels = np.load(tmp_path / "predictions" / "000001.npy")
    assert labels.shape == (64, 64, 8) and labels.dtype == np.uint8 and labels.max() < 20
    raw = np.fromfile(tmp_path / "predictions" / "000001.label", dtype="<u2").reshape(256, 256, 32)
    lut = np.asarray(RAW_IDS, np.uint16)
    assert np.array_equal(raw[::4, ::4, ::4], lut[labels]) and np.array_equal(raw[3::4, 1::4, 2::4], lut[labels])
    png = cv2.imread(str(tmp_path / "renders" / "000001.png"))
    assert png is not None and png.shape[0] > 300 and png.std() > 10


def test_image_folder_stereo_matches_predictor(fake_kitti, tiny_checkpoint, tmp_path):  # noqa: F811
    seq = fake_kitti / "sequences" / "08"
    rc = infer_cli.main(["--checkpoint", str(tiny_checkpoint), "--images", str(seq / "image_2"),
                         "--right-images", str(seq / "image_3"), "--calib", str(seq / "calib.txt"),
                         "--depth-mode", "stereo", "--limit", "1", "--no-render", "--out", str(tmp_path),
                         "--threads", "1", "--no-progress"])
    assert rc == 0
    assert not (tmp_path / "renders").exists()
    got = np.load(tmp_path / "predictions" / "000000.npy")
    calib = read_kitti_calib(seq / "calib.txt")
    K, T = kitti_camera(calib, "P2")
    left, right = load_rgb(seq / "image_2" / "000000.png"), load_rgb(seq / "image_3" / "000000.png")
    depth = stereo_depth(left, right, float(calib["P2"][0, 0]), stereo_baseline(calib["P2"], calib["P3"]))
    expect = Predictor(tiny_checkpoint).predict(left, K, T, stereo_depth=depth, p_shift=calib["P2"][:, 3])
    assert np.array_equal(got, expect.labels)


def test_errors(fake_kitti, tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    seq = fake_kitti / "sequences" / "08"
    args = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--no-progress"]
    assert infer_cli.main(args + ["--images", str(seq / "image_2")]) == 2
    assert "--images needs --calib" in capsys.readouterr().err
    assert infer_cli.main(args + ["--images", str(seq / "image_2"), "--calib", str(seq / "calib.txt"),
                                  "--depth-mode", "stereo"]) == 2
    assert "stereo mode needs right images" in capsys.readouterr().err
    assert infer_cli.main(args + ["--sequence", str(seq), "--frames", "999999"]) == 2
    assert "999999" in capsys.readouterr().err


def test_sequence_ply_export_and_ground_truth_panel(fake_kitti, tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    from scanssc_ros.ply_export import points_to_grid, read_ply

    seq = fake_kitti / "sequences" / "08"
    rc = infer_cli.main(["--checkpoint", str(tiny_checkpoint), "--sequence", str(seq), "--frames", "000001",
                         "--export", "ply", "--out", str(tmp_path), "--threads", "1", "--no-progress"])
    assert rc == 0
    assert "3D views:" in capsys.readouterr().err  # which renderer drew the pictures, said once
    labels = np.load(tmp_path / "predictions" / "000001.npy")
    pred = read_ply(tmp_path / "ply" / "000001.ply")
    assert np.array_equal(points_to_grid(pred), np.where((labels == 0) | (labels == 255), 0, labels))
    truth = read_ply(tmp_path / "ply" / "000001_gt.ply")  # the fake sequence has voxel labels: on the model grid
    assert truth.grid == pred.grid and len(truth.labels) > 0
