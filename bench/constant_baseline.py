"""Scores of the best constant predictors on a split: the floor a trained model must clear.

    python bench/constant_baseline.py --data-root /data/synth --split val [--target-source voxel_label]

A constant prediction is one class for every voxel. Completion IoU is best when that class is occupied (IoU =
occupied share of the valid voxels); mIoU is best for the most frequent occupied class (its share / (C - 1)).
Both are computed here with the same metrics code as scanssc-eval, for every class, and the best is printed.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from scanssc_ros.data.semantickitti import SemanticKittiDataset
from scanssc_ros.labels import SEMANTIC_KITTI
from scanssc_ros.metrics import SSCMetrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--target-source", default="voxel_label")
    args = p.parse_args()
    ds = SemanticKittiDataset(args.data_root, split=args.split, target_source=args.target_source,
                              with_lidar_depth=False)
    C = SEMANTIC_KITTI.num_classes
    metrics = [SSCMetrics(C, distance_analysis=False) for _ in range(C)]
    for seq, frame in ds.frames:
        target, _ = ds.load_target(seq, frame, args.target_source)
        for c in range(C):
            metrics[c].add_batch(np.full(target.shape, c, np.uint8), target)
    rows = {SEMANTIC_KITTI.classes[c]: {k: round(100 * float(v), 2) for k, v in m.summary().items()
                                        if k in ("iou", "miou")} for c, m in enumerate(metrics)}
    best_iou = max(rows.items(), key=lambda kv: kv[1]["iou"])
    best_miou = max(rows.items(), key=lambda kv: kv[1]["miou"])
    print(json.dumps({"frames": len(ds.frames), "best_iou": best_iou, "best_miou": best_miou}, indent=1))


if __name__ == "__main__":
    main()
