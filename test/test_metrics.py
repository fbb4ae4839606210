"""SSCMetrics: hand-computed confusion examples, the invalid-voxel convention, the distance analysis."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scanssc_ros.geometry import GridSpec
from scanssc_ros.metrics import SSCMetrics, format_slab_rows, scores_from_confusion

SMALL = GridSpec(origin=(0.0, -1.6, -0.8), voxel_size=0.4, dims=(8, 8, 4))


def test_hand_computed_example():
    # 6 voxels, 3 classes; the last voxel is invalid and must vanish whatever is predicted there
    gt = np.array([0, 1, 1, 2, 2, 255]).reshape(1, 6, 1, 1)
    pred = np.array([1, 1, 0, 2, 1, 2]).reshape(1, 6, 1, 1)
    m = SSCMetrics(3, distance_analysis=False)
    m.add_batch(pred, gt)
    conf = np.zeros((3, 3), np.int64)
    for g, p in [(0, 1), (1, 1), (1, 0), (2, 2), (2, 1), (0, 0)]:  # the last pair is the invalid voxel
        conf[g, p] += 1
    assert np.array_equal(m.confusion, conf)
    s = m.scores()
    # completion: TP = gt>0 & pred>0 = 3 (1->1, 2->2, 2->1); FP = gt0 pred>0 = 1; FN = 1 (1->0)
    assert s["iou"] == pytest.approx(3 / 5)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    # class 1: TP 1, FP 2 (gt0->1, gt2->1), FN 1; class 2: TP 1, FP 0, FN 1
    assert s["class_iou"][1] == pytest.approx(1 / (4 + 1e-5))
    assert s["class_iou"][2] == pytest.approx(1 / (2 + 1e-5))
    assert s["miou"] == pytest.approx((1 / (4 + 1e-5) + 1 / (2 + 1e-5)) / 2)


def test_invalid_voxels_are_set_to_zero_in_both():
    gt = np.full((1, 2, 2, 2), 255)
    gt[0, 0, 0, 0] = 1
    pred = np.full_like(gt, 2)
    m = SSCMetrics(3, distance_analysis=False)
    m.add_batch(pred, gt)
    assert m.confusion[0, 0] == 7 and m.confusion[1, 2] == 1 and m.confusion.sum() == 8


def test_accumulates_over_split_not_per_frame():
    m = SSCMetrics(2, distance_analysis=False)
    m.add_batch(np.array([1, 1, 1, 1]).reshape(1, 4, 1, 1), np.array([1, 0, 0, 0]).reshape(1, 4, 1, 1))
    m.add_batch(np.array([1, 1, 1, 1]).reshape(1, 4, 1, 1), np.array([1, 1, 1, 1]).reshape(1, 4, 1, 1))
    # split-wide TP 5 / (5 + 3); the mean of per-frame IoUs would be (0.25 + 1) / 2
    assert m.scores()["iou"] == pytest.approx(5 / 8)


def test_ground_truth_against_itself_scores_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 20, size=(2,) + SMALL.dims)
    gt[rng.random(gt.shape) < 0.1] = 255
    m = SSCMetrics(20, grid=SMALL)
    pred = np.where(gt == 255, rng.integers(0, 20, size=gt.shape), gt)
    m.add_batch(torch.as_tensor(pred), torch.as_tensor(gt))
    s = m.scores()
    assert s["iou"] == pytest.approx(1.0) and s["precision"] == 1.0 and s["recall"] == 1.0
    assert np.allclose(s["class_iou"][1:], 1.0, atol=1e-5)
    assert s["miou"] == pytest.approx(1.0, abs=1e-5)


def test_bad_predictions_rejected():
    m = SSCMetrics(3)
    with pytest.raises(ValueError):
        m.add_batch(np.full((1, 8, 8, 4), 3), np.zeros((1, 8, 8, 4)))


def _slab_example():
    """Ground truth all class 1; the prediction recovers a known fraction of each depth slab:
    slab k (x indices 2k, 2k+1) predicts class 1 on (4 - k) of its 4 z-layers, 0 elsewhere."""
    gt = np.ones((1,) + SMALL.dims, np.int64)
    pred = np.zeros_like(gt)
    for k in range(4):
        pred[0, 2 * k: 2 * k + 2, :, : 4 - k] = 1
    return pred, gt


def test_distance_slabs_known_values():
    pred, gt = _slab_example()
    m = SSCMetrics(2, grid=SMALL)
    m.add_batch(pred, gt)
    depth = m.slab_scores("depth")
    assert np.allclose(depth["recall"], [1.0, 0.75, 0.5, 0.25])
    assert np.allclose(depth["iou"], [1.0, 0.75, 0.5, 0.25])  # no false positives: IoU = recall
    assert np.allclose(depth["miou"], depth["class_iou"][:, 1])
    # along height, layer z is predicted in depth slabs k < 4 - z: recall per z-layer = (4 - z) / 4
    height = m.slab_scores("height")
    assert np.allclose(height["recall"], [1.0, 0.75, 0.5, 0.25])
    width = m.slab_scores("width")
    assert np.allclose(width["recall"], 10 / 16)  # every y slab sees the same mix
    assert np.allclose(m.bin_scores("depth")["recall"], np.repeat([1.0, 0.75, 0.5, 0.25], 2))
    # the slabs sum back to the split-wide matrix
    assert np.array_equal(m.axis_confusion["depth"].sum(0), m.confusion)
    rows = format_slab_rows(m)
    assert rows[1] == {"axis": "depth", "part": 2, "recall": 0.75, "iou": 0.75, "miou": pytest.approx(0.75)}


def test_distance_table_and_plot(tmp_path):
    pred, gt = _slab_example()
    m = SSCMetrics(2, grid=SMALL)
    m.add_batch(pred, gt)
    table = m.distance_table()
    assert "75.00" in table and "(4)" in table and "depth (x): (1) 0.0..0.8 m" in table
    assert "car" in m.class_table(["empty", "car"])
    lines = m.bin_table("height").splitlines()
    assert len(lines) == 5 and lines[2].split()[:4] == ["1", "-0.2", "75.00", "75.00"]
    png = m.plot_distance(tmp_path / "plots" / "distance.png", title="slab example")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_scores_from_confusion_batched():
    conf = np.stack([np.eye(3, dtype=np.int64) * 5, np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])])
    s = scores_from_confusion(conf)
    assert s["iou"][0] == 1.0 and s["iou"][1] == 0.0
    assert s["recall"][1] == 0.0  # no occupied ground truth: 0, as the official evaluator


@pytest.mark.parametrize("gt_occupied, pred_occupied, expect", [
    # (precision, recall, iou) of semantic-kitti-api evaluate_completion.py: precision TP / (TP + FP + eps),
    # recall TP / (TP + FN + eps), IoU TP / (TP + FP + FN) with no guard
    (True, False, (0.0, 0.0, 0.0)),  # nothing predicted occupied: precision 0, not NaN
    (False, True, (0.0, 0.0, 0.0)),  # nothing occupied in the ground truth: recall 0
    (False, False, (0.0, 0.0, np.nan)),  # neither: the official IoU is 0 / 0
])
def test_completion_edge_cases_match_official(gt_occupied, pred_occupied, expect):
    gt = np.zeros((1,) + SMALL.dims, np.int64)
    pred = np.zeros_like(gt)
    gt[0, :2] = 3 if gt_occupied else 0
    pred[0, 4:] = 5 if pred_occupied else 0
    gt[0, 7, 7] = 255  # an ignored voxel changes nothing
    m = SSCMetrics(20, grid=SMALL)
    m.add_batch(pred, gt)
    s = m.scores()
    got = (float(s["precision"]), float(s["recall"]), float(s["iou"]))
    np.testing.assert_array_equal(got, expect)
    summary = m.summary()
    assert summary["precision"] == 0.0 and summary["recall"] == 0.0
    # per-index scores follow the same rule: slabs with no predicted occupancy have precision 0
    assert not np.isnan(m.slab_scores("depth")["precision"]).any()
