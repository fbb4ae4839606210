"""scanssc-eval: metrics tables and files from a checkpoint, .label export read back identically, and the
ground truth scored against itself."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fake_kitti import RAW_IDS, fake_kitti, make_fake_semantickitti, tiny_checkpoint  # noqa: F401

from scanssc_ros.cli import evaluate as eval_cli
from scanssc_ros.data.labels_io import load_label_config, write_packed_voxels, write_voxel_labels

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
    mapping = results["label_mapping"]
    assert mapping["voxel"] == "completion" and mapping["ignored_raw_ids"] == [1, 52, 99]
    assert mapping["target_source"] == "auto" and mapping["label_config"].endswith("semantic-kitti.yaml")
    assert results["target_sources"] == {"voxel_label": 2}  # what "auto" resolved to, frame by frame
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


# ------------------------------------------------------------------------------ benchmark label mapping
# Train id, raw id and voxel count of the 13 classes of the crafted frame (building: 200 voxels).
CRAFTED = {"car": (10, 150), "bicycle": (11, 160), "person": (30, 170), "road": (40, 180), "parking": (44, 185),
           "sidewalk": (48, 190), "other-ground": (49, 195), "building": (50, 200), "fence": (51, 200),
           "vegetation": (70, 200), "trunk": (71, 205), "terrain": (72, 215), "pole": (80, 200)}
OTHER_OBJECT = 99
N_OTHER_OBJECT = 100


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """One val frame whose ground truth holds 13 classes (2450 voxels) and 100 other-object voxels, plus a
    prediction equal to it except that the other-object voxels are predicted as building."""
    root = make_fake_semantickitti(tmp_path_factory.mktemp("crafted"), {"08": 1})
    vox = root / "sequences" / "08" / "voxels"
    invalid = np.zeros((256, 256, 32), bool)
    invalid[250:] = True
    rng = np.random.default_rng(11)
    cells = rng.permutation(np.flatnonzero(~invalid.reshape(-1)))
    gt = np.zeros(N_VOXELS, np.uint16)
    start = 0
    for raw, n in list(CRAFTED.values()) + [(OTHER_OBJECT, N_OTHER_OBJECT)]:
        gt[cells[start:start + n]] = raw
        start += n
    gt[np.flatnonzero(invalid.reshape(-1))[:500]] = 10  # labels under .invalid never count
    write_voxel_labels(vox / "000000.label", gt.reshape(256, 256, 32))
    write_packed_voxels(vox / "000000.invalid", invalid)
    pred = np.where(gt == OTHER_OBJECT, 50, gt)
    pred[invalid.reshape(-1)] = 50
    pred_dir = root / "pred" / "sequences" / "08" / "predictions"
    pred_dir.mkdir(parents=True)
    write_voxel_labels(pred_dir / "000000.label", pred.reshape(256, 256, 32))
    return root, gt, pred


def test_other_object_as_building_scores_like_the_official_evaluator(crafted, tmp_path):
    """The issue's example. semantic-kitti-api maps raw 99 to 255 in the ground truth, so those voxels are left
    out: every scored voxel is right, IoU = 2450 / 2450 = 1.000 and mIoU = 13 / 19 = 0.684 (six classes absent).
    Scoring raw 99 as empty instead would give IoU 2450 / 2550 = 0.961 and mIoU (12 + 200 / 300) / 19 = 0.667."""
    root, gt, pred = crafted
    out = tmp_path / "out"
    assert eval_cli.main(eval_args(root, out, "--predictions", str(root / "pred"))) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["iou"] == r["precision"] == r["recall"] == 1.0
    assert round(r["miou"], 3) == 0.684 and r["miou"] == pytest.approx(13 / 19, abs=1e-6)
    for name, v in r["class_iou"].items():
        if name != "empty":
            assert v == pytest.approx(1.0 if name in CRAFTED else 0.0, abs=1e-6), name
    assert r["label_mapping"]["ignored_raw_ids"] == [1, 52, 99]

    # the crafted frame does separate the two mappings: learning_map as written gives the numbers above
    from scanssc_ros.metrics import SSCMetrics

    cfg = load_label_config(root / "semantic-kitti.yaml")
    valid = np.ones(N_VOXELS, bool)
    valid[250 * 256 * 32:] = False
    plain = SSCMetrics(20, distance_analysis=False)
    plain.add_batch(cfg.to_train(pred)[valid], cfg.to_train(gt)[valid])
    s = plain.scores()
    assert round(float(s["iou"]), 3) == 0.961 and round(float(s["miou"]), 3) == 0.667


def test_empty_prediction_has_precision_zero(crafted, tmp_path):
    """Nothing predicted occupied: the official precision TP / (TP + FP + eps) is 0, not NaN."""
    root, gt, _ = crafted
    empty = tmp_path / "empty" / "sequences" / "08" / "predictions"
    empty.mkdir(parents=True)
    write_voxel_labels(empty / "000000.label", np.zeros((256, 256, 32), np.uint16))
    out = tmp_path / "out"
    assert eval_cli.main(eval_args(root, out, "--predictions", str(tmp_path / "empty"))) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["iou"] == 0.0 and r["miou"] == 0.0
    assert "precision   0.00" in (out / "metrics.txt").read_text()


def test_prediction_with_an_ignored_raw_id_is_rejected(crafted, tmp_path, capsys):
    """A raw id with no class under the voxel mapping cannot be scored (the official evaluator fails as well)."""
    root, gt, pred = crafted
    bad = tmp_path / "bad" / "sequences" / "08" / "predictions"
    bad.mkdir(parents=True)
    wrong = pred.copy()
    wrong[np.flatnonzero(gt == 10)[:3]] = 52
    write_voxel_labels(bad / "000000.label", wrong.reshape(256, 256, 32))
    assert eval_cli.main(eval_args(root, tmp_path / "out", "--predictions", str(tmp_path / "bad"))) == 2
    err = capsys.readouterr().err
    assert "3 scored voxels hold raw ids [52]" in err
