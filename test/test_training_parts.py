"""Pieces of the training plumbing that need no model: sampler order and resume skip, class weights, configs,
frame lists, seeded augmentation, RNG capture, the JSONL log."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from fake_kitti import UNLABELED_RAW, fake_kitti, make_fake_semantickitti  # noqa: F401  (session fixture)
from torch.utils.data import DistributedSampler

from scanssc_ros.data.depth import DBOUND
from scanssc_ros.data.label_scale import downsample_labels
from scanssc_ros.data.labels_io import load_label_config, read_voxel_labels, write_voxel_labels
from scanssc_ros.data.sample import collate
from scanssc_ros.data.semantickitti import SemanticKittiDataset
from scanssc_ros.labels import IGNORE, KITTI360, SEMANTIC_KITTI
from scanssc_ros.losses import LossWeights
from scanssc_ros.model.scanssc import ModelOutputs
from scanssc_ros.training.class_weights import count_target_classes, resolve_class_weights, weights_from_frequencies
from scanssc_ros.training.data import DataOptions, SeededAugmentation, build_dataset, load_target, parse_frames
from scanssc_ros.training.distributed import DistContext, ResumableDistributedSampler, shard_indices
from scanssc_ros.training.run_log import RunLog, read_jsonl
from scanssc_ros.training.state import capture_rng, restore_rng
from scanssc_ros.training.trainer import build_config, compute_losses


def test_sampler_matches_torch_and_skips():
    data = list(range(10))
    for rank in (0, 1):
        ours = ResumableDistributedSampler(data, 2, rank, shuffle=True, seed=7)
        ref = DistributedSampler(data, 2, rank, shuffle=True, seed=7)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref)
            ours.set_skip(3)
            assert list(ours) == list(ref)[3:] and len(ours) == 2
            ours.set_skip(0)
    # one replica visits the same permutation: its sample 2k + r is rank r's sample k
    single = ResumableDistributedSampler(data, 1, 0, shuffle=True, seed=7)
    single.set_epoch(3)
    order = list(single)
    for rank in (0, 1):
        s = ResumableDistributedSampler(data, 2, rank, shuffle=True, seed=7)
        s.set_epoch(3)
        assert list(s) == order[rank::2]
    with pytest.raises(ValueError):
        single.set_skip(11)


def test_shard_indices_cover_once():
    parts = [shard_indices(7, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7))
    assert shard_indices(7, DistContext(rank=1, world_size=3), limit=4) == [1]


def test_weights_from_frequencies():
    np.testing.assert_allclose(weights_from_frequencies(SEMANTIC_KITTI.frequencies), SEMANTIC_KITTI.class_weights(),
                               rtol=1e-6)
    w = weights_from_frequencies([1e9, 0, 1, 1e4])
    assert w[1] == 0.0  # absent class
    assert w[2] == pytest.approx(1 / np.log(np.e + 1e-3))  # one voxel: raised to e, weight ~1
    assert w[0] < w[3] < w[2]
    with pytest.raises(ValueError):
        weights_from_frequencies([1.0, -1.0])


def test_class_counts_from_targets(fake_kitti):  # noqa: F811
    ds = build_dataset(DataOptions("semantickitti", str(fake_kitti), depth_mode="mono", lidar_depth=False),
                       frames=[("00", "000000"), ("00", "000001")])
    counts = count_target_classes(ds, 20, 4, DistContext())
    expect = np.zeros(20, np.int64)
    for i in range(2):
        t = downsample_labels(load_target(ds, i), 4, 20)
        expect += np.bincount(t[t != IGNORE], minlength=20)
    np.testing.assert_array_equal(counts, expect)
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 0
    w = resolve_class_weights("targets", SEMANTIC_KITTI, ds, 4, DistContext())
    np.testing.assert_allclose(w, weights_from_frequencies(counts))
    assert resolve_class_weights("none", SEMANTIC_KITTI, ds, 4, DistContext()) is None
    given = resolve_class_weights(",".join(["0.5"] * 20), SEMANTIC_KITTI, ds, 4, DistContext())
    assert given.shape == (20,) and np.all(given == 0.5)
    with pytest.raises(ValueError, match="20 classes"):
        resolve_class_weights("1,2,3", SEMANTIC_KITTI, ds, 4, DistContext())


def test_unlabeled_raw_voxels_are_ignored_by_targets_and_loss(tmp_path):
    """Voxels labelled outlier / other-structure / other-object (learning_map -> 0) reach training as 255 through
    the real reader, so the loss leaves them alone; raw 0 stays a supervised empty voxel."""
    root = make_fake_semantickitti(tmp_path, {"08": 1})
    path = root / "sequences" / "08" / "voxels" / "000000.label"
    raw = read_voxel_labels(path)
    # 4^3 blocks aligned to the tiny model grid (factor 4), in free air above the road of the fake street
    corners = {1: (100, 120, 20), 52: (104, 120, 20), 99: (108, 120, 20), 0: (112, 120, 20)}
    blocks = {rid: tuple(slice(c, c + 4) for c in corner) for rid, corner in corners.items()}
    for rid, block in blocks.items():
        assert (raw[block] == 0).all()
        raw[block] = rid
    single = (60, 200, 12)
    raw[single] = 99
    write_voxel_labels(path, raw)

    ds = SemanticKittiDataset(root, frames=[("08", "000000")], target_source="voxel_label", with_lidar_depth=False)
    sample = ds[0]
    target = sample.target.numpy()
    assert sorted(UNLABELED_RAW) == [1, 52, 99] == ds.label_config.voxel_ignored_raw_ids()
    for rid, block in blocks.items():
        assert (target[block] == (0 if rid == 0 else IGNORE)).all(), rid
    assert target[single] == IGNORE
    # everything else keeps its learning_map class, and .invalid still wins
    cfg = load_label_config(root / "semantic-kitti.yaml")
    rest = ~np.isin(raw, list(UNLABELED_RAW)) & ~sample.invalid.numpy()
    assert np.array_equal(target[rest], cfg.to_train(raw)[rest])
    assert (target[rest] > 0).sum() > 1000

    batch = collate([sample])
    coarse = downsample_labels(batch.target, 4, 20)[0]
    cell = {rid: tuple(c // 4 for c in corner) for rid, corner in corners.items()}
    assert [int(coarse[cell[r]]) for r in (1, 52, 99, 0)] == [IGNORE, IGNORE, IGNORE, 0]
    torch.manual_seed(0)
    logits = torch.randn(1, 20, 64, 64, 8, requires_grad=True)
    out = ModelOutputs(logits=logits, depth=torch.zeros(1), mono_depth_logits=torch.zeros(1),
                       proposal=torch.zeros(1, dtype=torch.bool))
    # the per-voxel terms (CE, both SCALs); the Scan Loss averages logits over windows, ignored voxels included,
    # by design (spec section 4), so its gradient reaches them whatever their label
    terms = compute_losses(out, batch, 4, 20, None, LossWeights(scan=0.0, depth=0.0), DBOUND)
    assert set(terms) == {"ce", "sem_scal", "geo_scal", "total"}
    terms["total"].backward()
    grad = logits.grad[0].abs().sum(0)
    for rid in (1, 52, 99):
        assert grad[cell[rid]] == 0, rid
    assert grad[cell[0]] > 0


def test_build_config():
    cfg = build_config("tiny", {"dropout": 0.0}, SEMANTIC_KITTI, "semantickitti")
    assert cfg.variant == "tiny" and cfg.dropout == 0.0 and cfg.input_size == (96, 320)
    k360 = build_config("lite", {}, KITTI360, "kitti360")
    assert k360.num_classes == 19 and k360.input_size == (384, 1408)
    assert build_config("paper", {"variant": "tiny"}, SEMANTIC_KITTI, "semantickitti").variant == "tiny"
    with pytest.raises(ValueError, match="classes"):
        build_config("tiny", {"num_classes": 5}, SEMANTIC_KITTI, "semantickitti")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        build_config("tiny", {"no_such_field": 1}, SEMANTIC_KITTI, "semantickitti")


def test_parse_frames(tmp_path):
    assert parse_frames("08/000000, 08/000005") == [("08", "000000"), ("08", "000005")]
    f = tmp_path / "frames.txt"
    f.write_text("00/000001\n2013_05_28_drive_0000_sync/0000000010\n")
    assert parse_frames(str(f)) == [("00", "000001"), ("2013_05_28_drive_0000_sync", "0000000010")]
    assert parse_frames(None) is None
    with pytest.raises(ValueError, match="SEQUENCE/FRAME"):
        parse_frames("000000")


def test_seeded_augmentation_is_reproducible(fake_kitti):  # noqa: F811
    ds = build_dataset(DataOptions("semantickitti", str(fake_kitti), depth_mode="mono", lidar_depth=False),
                       frames=[("00", "000000")], training=True, out_hw=(96, 320))
    aug = SeededAugmentation(ds, seed=3)
    torch.manual_seed(0)
    a = aug[0].image
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)  # the caller's RNG stream was not consumed
    assert torch.equal(aug[0].image, a)
    aug.set_epoch(1)
    assert not torch.equal(aug[0].image, a)


def test_rng_capture_restore():
    state = capture_rng()
    x = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    y = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[2] == y[2]


def test_run_log(tmp_path):
    log = RunLog(tmp_path / "log.jsonl")
    log.write("train", step=1, loss=float("nan"), terms={"ce": 1.5})
    log.write("val", step=1, miou=0.25)
    log.close()
    RunLog(None).write("train", step=2)  # non-main ranks write nothing
    rows = read_jsonl(tmp_path / "log.jsonl")
    assert [r["type"] for r in rows] == ["train", "val"] and rows[0]["loss"] is None
    assert read_jsonl(tmp_path / "log.jsonl", "val")[0]["miou"] == 0.25
