"""Cross-entropy class weights w_c = 1 / ln(f_c + 0.001) (spec section 1/5) from class frequencies.

The frequencies are either the ones of the official configs (``labels.LabelSet.frequencies``, the default), or
counted over the training targets exactly as the loss sees them (after downsampling to the model grid), or
given. The formula expects voxel counts in the millions; two guards keep it meaningful for small counts:
a class that never occurs gets weight 0 (it never enters the loss anyway), and counts below e are raised to e,
so a class with a single voxel gets weight ~1 instead of 1 / ln(1.001) = 1000.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from torch.utils.data import Dataset

from scanssc_ros.data.label_scale import downsample_labels
from scanssc_ros.labels import IGNORE, LabelSet
from scanssc_ros.training.data import load_target
from scanssc_ros.training.distributed import DistContext, all_reduce_array, shard_indices

CHOICES = ("paper", "targets", "none")


def weights_from_frequencies(freq) -> np.ndarray:
    f = np.asarray(freq, np.float64)
    if f.ndim != 1 or np.any(f < 0) or not np.all(np.isfinite(f)):
        raise ValueError("class frequencies must be a 1-D list of non-negative numbers")
    w = 1.0 / np.log(np.maximum(f, np.e) + 1e-3)
    return np.where(f > 0, w, 0.0).astype(np.float32)


def count_target_classes(dataset: Dataset, num_classes: int, factor: int, ctx: DistContext) -> np.ndarray:
    """Voxels per class over every target of ``dataset`` (unknown voxels excluded), on the model grid. Each rank
    counts its share of the frames; the counts are summed over ranks."""
    counts = np.zeros(num_classes, np.int64)
    for i in shard_indices(len(dataset), ctx):
        target = load_target(dataset, i)
        if target is None:
            continue
        t = downsample_labels(target, factor, num_classes).reshape(-1)
        counts += np.bincount(t[t != IGNORE], minlength=num_classes)[:num_classes]
    return all_reduce_array(counts, ctx)


def _read_given(text: str, num_classes: int) -> np.ndarray:
    """A file (JSON/YAML: a list of weights, or {"weights": [...]} / {"frequencies": [...]}) or a comma list of
    weights."""
    path = Path(text)
    if path.is_file():
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        if isinstance(data, dict):
            if "frequencies" in data:
                w = weights_from_frequencies(data["frequencies"])
            elif "weights" in data:
                w = np.asarray(data["weights"], np.float32)
            else:
                raise ValueError(f"{path}: expected a 'weights' or 'frequencies' key")
        else:
            w = np.asarray(data, np.float32)
    else:
        try:
            w = np.asarray([float(v) for v in text.split(",")], np.float32)
        except ValueError:
            raise ValueError(f"class weights {text!r}: not one of {CHOICES}, a file, or a comma list") from None
    if w.shape != (num_classes,):
        raise ValueError(f"class weights {text!r} give {w.size} values for {num_classes} classes")
    return w


def resolve_class_weights(spec: str, label_set: LabelSet, dataset: Dataset, factor: int,
                          ctx: DistContext) -> Optional[np.ndarray]:
    """``paper`` | ``targets`` | ``none`` | a file | a comma list -> (C,) float32 weights, or None (unweighted)."""
    c = label_set.num_classes
    if spec == "none":
        return None
    if spec == "paper":
        return label_set.class_weights()
    if spec == "targets":
        return weights_from_frequencies(count_target_classes(dataset, c, factor, ctx))
    return _read_given(spec, c)
