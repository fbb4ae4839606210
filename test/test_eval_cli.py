"""scanssc-eval: metrics tables and files from a checkpoint, .label export read back identically, and the
ground truth scored against itself."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fake_kitti import RAW_IDS, fake_kitti, tiny_checkpoint  # noqa: F401  (session fixtures)

from scanssc_ros.cli import evaluate as eval_cli

N_VOXELS = 256 * 256 * 32


def eval_args(root, out, *extra):
    return ["--data-root", str(root), "--split", "val", "--out", str(out), "--workers", "0", "--threads", "1",
            "--no-progress", *extra]


def comparable(results):
    return {k: results[k] for k in ("frames", "iou", "precision", "recall", "miou", "class_iou", "distance")}


def test_checkpoint_eval_export_and_read_back(fake_kitti, tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "model"
    assert eval_cli.main(eval_args(fake_kitti, out, "--checkpoint", str(tiny_checkpoint), "--export-labels")) == 0
    printed = capsys.readouterr().out
    assert "completion  IoU" in printed and "mIoU (classes 1..19)" in printed and "depth R" in printed
    assert "traffic-sign" in printed and "(4)" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["frames"] == 2 and results["variant"] == "tiny" and results["target_factor"] == 4
    assert results["depth_mode"] == "mono"  # from the checkpoint
    assert len(results["class_iou"]) == 20 and len(results["distance"]) == 12
    assert 0 <= results["miou"] <= 1 and 0 < results["iou"] <= 1
    assert (out / "metrics.txt").read_text().startswith("completion")
    assert (out / "distance.png").stat().st_size > 10_000
    labels = sorted((out / "predictions" / "sequences" / "08" / "predictions").glob("*.label"))
    assert [p.name for p in labels] == ["000000.label", "000001.label"]
    raw = np.fromfile(labels[0], dtype="<u2")
    assert raw.size == N_VOXELS and set(np.unique(raw)) <= set(RAW_IDS)

    # the exported files score exactly like the model run (export through learning_map_inv and back)
    back = tmp_path / "files"
    assert eval_cli.main(eval_args(fake_kitti, back, "--predictions", str(out / "predictions"))) == 0
    assert comparable(json.loads((back / "results.json").read_text())) == comparable(results)


def test_ground_truth_against_itself(fake_kitti, tmp_path):  # noqa: F811
    """The official voxel labels submitted as predictions: perfect completion and perfect IoU for every class
    present, 0 for the absent ones (the 1e-5 in the class IoU denominator)."""
    pred = tmp_path / "gt" / "sequences" / "08" / "predictions"
    pred.mkdir(parents=True)
    for f in ("000000", "000001"):
        shutil.copyfile(fake_kitti / "sequences" / "08" / "voxels" / f"{f}.label", pred / f"{f}.label")
    out = tmp_path / "out"
    assert eval_cli.main(eval_args(fake_kitti, out, "--predictions", str(tmp_path / "gt"))) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["iou"] == r["precision"] == r["recall"] == 1.0
    present = {"road", "sidewalk", "terrain", "building", "car", "trunk", "vegetation", "pole"}
    for name, v in r["class_iou"].items():
        if name in present:
            assert v == pytest.approx(1.0, abs=1e-6), name  # TP / (TP + 1e-5)
        elif name != "empty":
            assert v == 0.0, name
    assert all(row["iou"] in (1.0, None) for row in r["distance"])


def test_errors(fake_kitti, tmp_path, capsys):  # noqa: F811
    assert eval_cli.main(eval_args(fake_kitti, tmp_path, "--checkpoint", str(tmp_path / "none.pt"))) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert eval_cli.main(eval_args(fake_kitti, tmp_path, "--predictions", str(tmp_path))) == 2
    assert "missing prediction" in capsys.readouterr().err
