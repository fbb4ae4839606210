"""Label downsampling (SSC block rule) against a slow per-block reference, upsampling, grid factors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scanssc_ros.data.label_scale import downsample_labels, grid_factor, upsample_labels
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec


def reference_downsample(labels: np.ndarray, f: int) -> np.ndarray:
    """One block at a time, written straight from the rule: >95 % empty-or-unknown -> whichever of 0/255 is more
    frequent (tie: 255), else the most frequent known non-empty id (tie: the smallest)."""
    X, Y, Z = labels.shape
    out = np.zeros((X // f, Y // f, Z // f), np.uint8)
    for i in range(X // f):
        for j in range(Y // f):
            for k in range(Z // f):
                block = labels[i * f:(i + 1) * f, j * f:(j + 1) * f, k * f:(k + 1) * f].ravel().tolist()
                n0, n255 = block.count(0), block.count(255)
                if n0 + n255 > 0.95 * f ** 3:
                    out[i, j, k] = 0 if n0 > n255 else 255
                else:
                    ids = [v for v in block if 0 < v < 255]
                    best = max(ids.count(v) for v in set(ids))
                    out[i, j, k] = min(v for v in set(ids) if ids.count(v) == best)
    return out


def random_labels(rng: np.random.Generator, shape, num_classes: int = 20) -> np.ndarray:
    """Mostly empty, some unknown, sparse classes, plus blocks that sit on the 95 % threshold and on ties."""
    x = np.zeros(shape, np.uint8)
    x[rng.random(shape) < 0.15] = 255
    occ = rng.random(shape) < 0.08
    x[occ] = rng.integers(1, num_classes, occ.sum())
    x[:4, :4, :4] = 0  # a fully empty block (factor 4 at the origin)
    x[4:8, :4, :4] = 255  # fully unknown
    x[8:12, :4, :4] = 0
    x[8:10, :4, :4] = 255  # 32 / 32 tie between 0 and 255 -> 255
    x[12:16, :4, :8] = 0
    x[12, 0, :2] = 7
    x[12, 1, :2] = 5  # 4 of 64 occupied: 60 empty, not > 60.8 -> majority; 5 and 7 tie -> 5
    x[12, 0, 4:7] = 7  # 3 of 64 occupied: 61 empty > 60.8 -> empty
    return x


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_matches_reference(factor):
    rng = np.random.default_rng(factor)
    labels = random_labels(rng, (16, 12, 8))
    got = downsample_labels(labels, factor, num_classes=20)
    assert got.dtype == np.uint8 and got.shape == (16 // factor, 12 // factor, 8 // factor)
    np.testing.assert_array_equal(got, reference_downsample(labels, factor))


def test_threshold_and_ties():
    labels = random_labels(np.random.default_rng(0), (16, 12, 8))
    got = downsample_labels(labels, 4, num_classes=20)
    assert got[0, 0, 0] == 0 and got[1, 0, 0] == 255 and got[2, 0, 0] == 255
    assert got[3, 0, 0] == 5 and got[3, 0, 1] == 0
    tie = np.zeros((4, 4, 4), np.uint8)
    tie[0, 0, :2] = 9
    tie[0, 1, :2] = 3
    tie[0, 2, :2] = 11  # 6 occupied, three ids tied -> the smallest
    assert downsample_labels(tie, 4)[0, 0, 0] == 3


def test_torch_batched_matches_numpy():
    rng = np.random.default_rng(3)
    labels = np.stack([random_labels(rng, (16, 12, 8)) for _ in range(2)])
    got = downsample_labels(torch.from_numpy(labels), 2, num_classes=20)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.shape == (2, 8, 6, 4)
    for b in range(2):
        np.testing.assert_array_equal(got[b].numpy(), reference_downsample(labels[b], 2))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        downsample_labels(np.zeros((6, 4, 4), np.uint8), 4)
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        downsample_labels(np.full((4, 4, 4), 30, np.uint8), 2, num_classes=20)


def test_upsample_repeats_blocks_and_round_trips():
    rng = np.random.default_rng(4)
    coarse = rng.integers(0, 20, (3, 2, 2)).astype(np.uint8)
    fine = upsample_labels(coarse, 4)
    assert fine.shape == (12, 8, 8)
    assert np.all(fine[4:8, 0:4, 4:8] == coarse[1, 0, 1])
    np.testing.assert_array_equal(downsample_labels(fine, 4, 20), coarse)
    t = upsample_labels(torch.from_numpy(coarse)[None], 2)
    np.testing.assert_array_equal(t[0].numpy(), upsample_labels(coarse, 2))


def test_grid_factor():
    tiny = GridSpec((0.0, -25.6, -2.0), 0.8, (64, 64, 8))
    assert grid_factor(SEMANTIC_KITTI_GRID, tiny) == 4
    assert grid_factor(SEMANTIC_KITTI_GRID, SEMANTIC_KITTI_GRID) == 1
    with pytest.raises(ValueError):
        grid_factor(SEMANTIC_KITTI_GRID, GridSpec((0.0, -25.6, -2.0), 0.8, (64, 64, 16)))
    with pytest.raises(ValueError):
        grid_factor(SEMANTIC_KITTI_GRID, GridSpec((0.0, -25.0, -2.0), 0.8, (64, 64, 8)))
