"""scanssc-eval: score a checkpoint (or exported ``.label`` predictions) on a dataset split.

    scanssc-eval --checkpoint runs/lite/best.pt --data-root /data/semantickitti --split val --out eval/lite
    scanssc-eval --predictions eval/lite/predictions --data-root /data/semantickitti --split val --out eval/files

Official protocol (spec section 7): every voxel of the 256x256x32 grid except ground-truth 255, completion
IoU / precision / recall and per-class IoU accumulated over the split, mIoU over classes 1..C-1. A coarser model
grid (tiny) is repeated up to the dataset grid first. Prints the class table and the distance table (paper
Table 1 layout) and writes to --out: ``results.json`` (scores and the label mapping used), ``metrics.txt``,
``distance.png`` (per-index curves), and with --export-labels the predictions as official uint16 ``.label`` files
(learning_map_inv) under
``predictions/sequences/<seq>/predictions/<frame>.label`` (the benchmark submission layout, which --predictions
reads back). Runs under torchrun too: each rank scores its share of the frames and writes its own label files.

Voxel ``.label`` files (ground truth and --predictions) go through the benchmark's completion mapping
(``LabelConfig.voxel_to_train``): raw ids other than 0 that learning_map sends to 0 (outlier, other-structure,
other-object) are ignored like ``.invalid`` voxels, not scored as empty.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from scanssc_ros import checkpoint
from scanssc_ros.cli.common import add_data_args, data_options, run_main
from scanssc_ros.data.label_scale import grid_factor
from scanssc_ros.data.labels_io import (
    VOXEL_MAPPING,
    VOXEL_MAPPING_RULE,
    LabelConfig,
    export_prediction,
    read_voxel_labels,
)
from scanssc_ros.data.sample import collate
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID
from scanssc_ros.labels import IGNORE
from scanssc_ros.metrics import SSCMetrics
from scanssc_ros.training.amp import PRECISIONS
from scanssc_ros.training.data import (
    DataOptions,
    build_dataset,
    label_config_for,
    label_set_for,
    load_target,
    parse_frames,
)
from scanssc_ros.training.distributed import DistContext, init_distributed, shard_indices, shutdown
from scanssc_ros.training.evaluation import evaluate, metrics_report, reduce_metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanssc-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="scanssc_ros checkpoint to evaluate")
    src.add_argument("--predictions", help="directory of exported predictions "
                                           "(sequences/<seq>/predictions/<frame>.label) to evaluate instead")
    add_data_args(p, depth_default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--frames", help="SEQ/FRAME,... or a file of them, instead of --split")
    p.add_argument("--limit", type=int, help="evaluate only the first N frames")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--export-labels", action="store_true", help="write predictions as official .label files")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    return p


def prediction_path(root: Path, seq: str, frame: str) -> Path:
    return root / "sequences" / seq / "predictions" / f"{frame}.label"


def _subset(dataset: Dataset, ctx: DistContext, limit: Optional[int]) -> List[int]:
    return shard_indices(len(dataset), ctx, limit)


def score_files(dataset: Dataset, pred_root: Path, cfg: LabelConfig, ctx: DistContext, limit: Optional[int],
                progress: bool) -> SSCMetrics:
    """Metrics of exported ``.label`` predictions (raw ids, through the completion mapping) against the targets."""
    metrics = SSCMetrics(cfg.num_classes, distance_analysis=True, grid=SEMANTIC_KITTI_GRID)
    for i in tqdm(_subset(dataset, ctx, limit), desc="eval", disable=not progress, dynamic_ncols=True):
        seq, frame = dataset.frames[i]
        target = load_target(dataset, i)
        if target is None:
            raise ValueError(f"frame {seq}/{frame} has no ground truth to evaluate")
        path = prediction_path(pred_root, seq, frame)
        if not path.is_file():
            raise FileNotFoundError(f"missing prediction {path}")
        raw = read_voxel_labels(path, SEMANTIC_KITTI_GRID.dims)
        pred = cfg.voxel_to_train(raw)
        # A prediction must name a class or empty wherever the ground truth is scored; the official evaluator
        # fails on such a voxel too (its lookup gives 255, outside the confusion matrix).
        unscorable = (pred == IGNORE) & (np.asarray(target) != IGNORE)
        if unscorable.any():
            ids = sorted(set(np.unique(raw[unscorable]).tolist()))
            raise ValueError(f"{path}: {int(unscorable.sum())} scored voxels hold raw ids {ids[:10]} that are not a "
                             f"class or empty under the {VOXEL_MAPPING} mapping")
        metrics.add_batch(pred, target)
    return reduce_metrics(metrics, ctx)


def label_mapping_record(cfg: Optional[LabelConfig], data: DataOptions) -> Dict[str, Any]:
    """How voxel labels were mapped in this run, for ``results.json``. ``cfg`` is the yaml the ``.label`` files
    went through; without one (KITTI-360, preprocessed targets) the targets are scored as stored."""
    record: Dict[str, Any] = {"voxel": VOXEL_MAPPING, "rule": VOXEL_MAPPING_RULE, "target_source": data.target_source}
    if cfg is not None:
        record["label_config"] = data.label_config or str(Path(data.root) / "semantic-kitti.yaml")
        record["ignored_raw_ids"] = cfg.voxel_ignored_raw_ids()
    return record


def write_results(out: Path, metrics: SSCMetrics, class_names, meta: Dict[str, Any]) -> Dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    tables = metrics.class_table(class_names) + "\n\n" + metrics.distance_table()
    print(tables)
    (out / "metrics.txt").write_text(tables + "\n")
    metrics.plot_distance(out / "distance.png", title=meta.get("source", ""))
    report = {**meta, **metrics_report(metrics, class_names)}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def body() -> int:
        ctx = init_distributed(args.device if args.checkpoint else "cpu")
        try:
            return _run(args, ctx)
        finally:
            shutdown(ctx)

    return run_main("scanssc-eval", body)


def _run(args: argparse.Namespace, ctx: DistContext) -> int:
    label_set = label_set_for(args.dataset)
    frames = parse_frames(args.frames)
    split = None if frames is not None else args.split
    out = Path(args.out)
    progress = ctx.is_main and not args.no_progress
    meta: Dict[str, Any] = {"dataset": args.dataset, "split": split, "data_root": args.data_root}
    if args.predictions:
        data = replace(data_options(args), depth_mode=args.depth_mode or "mono", lidar_depth=False)
        dataset = build_dataset(data, split, frames)
        cfg = label_config_for(dataset, args.label_config)
        if cfg is None:
            raise ValueError("reading .label predictions needs a label yaml (--label-config)")
        metrics = score_files(dataset, Path(args.predictions), cfg, ctx, args.limit, progress)
        meta["source"] = f"predictions {args.predictions}"
        meta["label_mapping"] = label_mapping_record(cfg, data)
    else:
        model, config, extra = checkpoint.load(args.checkpoint, map_location="cpu")
        if config.num_classes != label_set.num_classes:
            raise ValueError(f"{args.checkpoint} predicts {config.num_classes} classes; {args.dataset} has "
                             f"{label_set.num_classes}")
        depth_mode = args.depth_mode or extra.get("depth_mode", "stereo")
        data = replace(data_options(args), depth_mode=depth_mode, lidar_depth=False)
        dataset = build_dataset(data, split, frames, out_hw=config.input_size)
        factor = grid_factor(SEMANTIC_KITTI_GRID, config.grid)
        sink = None
        if args.export_labels:
            cfg = label_config_for(dataset, args.label_config)
            if cfg is None:
                raise ValueError("--export-labels needs a label yaml (--label-config)")
            pred_root = out / "predictions"

            def sink(seq: str, frame: str, pred: np.ndarray) -> None:
                path = prediction_path(pred_root, seq, frame)
                path.parent.mkdir(parents=True, exist_ok=True)
                export_prediction(path, pred, cfg)

        loader = DataLoader(Subset(dataset, _subset(dataset, ctx, args.limit)), batch_size=1,
                            num_workers=args.workers, collate_fn=collate)
        metrics = evaluate(model.to(ctx.device), loader, ctx, config.num_classes, factor, depth_mode,
                           args.precision, on_prediction=sink, progress=progress)
        meta.update(source=f"checkpoint {args.checkpoint}", variant=config.variant, depth_mode=depth_mode,
                    precision=args.precision, model_grid=list(config.grid_dims), target_factor=factor,
                    label_mapping=label_mapping_record(getattr(dataset, "label_config", None), data))
    if ctx.is_main:
        write_results(out, metrics, label_set.classes, meta)
        print(f"scanssc-eval: results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
