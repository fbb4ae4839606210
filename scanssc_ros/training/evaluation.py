"""Validation / evaluation over a dataset, shared by ``scanssc-train`` (per epoch) and ``scanssc-eval``.

Scoring follows the official protocol (spec section 7) on the *dataset* grid (256x256x32): a model with a coarser
grid (tiny) has its arg-max labels repeated over each block (``data.label_scale.upsample_labels``) before they are
compared with the full-resolution ground truth, so every model is scored against the same voxels. Under torchrun
each rank evaluates its own frames and the confusion matrices (overall and per-axis) are summed over ranks.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from scanssc_ros.data.label_scale import upsample_labels
from scanssc_ros.data.sample import TARGET_SOURCES, SscBatch
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec
from scanssc_ros.metrics import AXES, SSCMetrics, format_slab_rows
from scanssc_ros.model.scanssc import ModelInputs
from scanssc_ros.training.amp import autocast
from scanssc_ros.training.distributed import DistContext, all_reduce_array

# called with (sequence, frame id, (X, Y, Z) uint8 prediction on the dataset grid)
PredictionSink = Callable[[str, str, np.ndarray], None]


def model_inputs(batch: SscBatch, depth_mode: str) -> ModelInputs:
    """The network inputs of a batch; stereo depth only in stereo mode."""
    stereo = batch.stereo_depth if depth_mode == "stereo" else None
    if depth_mode == "stereo" and stereo is None:
        raise ValueError("stereo depth mode but the batch has no stereo depth")
    return ModelInputs(image=batch.image, K=batch.K, T_cam_grid=batch.T_cam_grid, img_aug=batch.img_aug,
                       stereo_depth=stereo, p_shift=batch.p_shift)


def reduce_metrics(metrics: SSCMetrics, ctx: DistContext) -> SSCMetrics:
    """Sum the confusion matrices of every rank into ``metrics`` (every rank ends with the totals). A rank that
    saw no frame contributes zeros of the right shape, so the collectives always match."""
    if not ctx.distributed:
        return metrics
    c = metrics.num_classes
    metrics.confusion = all_reduce_array(metrics.confusion, ctx)
    if metrics.distance_analysis:
        for name, dim in AXES:
            local = metrics.axis_confusion.get(name)
            if local is None:
                local = np.zeros((metrics.grid.dims[dim], c, c), np.int64)
            metrics.axis_confusion[name] = all_reduce_array(local, ctx)
    metrics.count = int(all_reduce_array(np.array([metrics.count], np.int64), ctx)[0])
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, ctx: DistContext, num_classes: int, factor: int,
             depth_mode: str, precision: str = "fp32", grid: GridSpec = SEMANTIC_KITTI_GRID,
             on_prediction: Optional[PredictionSink] = None, progress: bool = False,
             desc: str = "eval") -> SSCMetrics:
    """Run ``model`` (not its DDP wrapper: no collective inside) over this rank's ``loader`` and return the
    metrics summed over ranks. The model is left in eval mode."""
    model.eval()
    metrics = SSCMetrics(num_classes, distance_analysis=True, grid=grid)
    # "auto" resolves per frame (voxel labels, preprocessed, sparse): the report says what was actually scored
    sources = np.zeros(len(TARGET_SOURCES), np.int64)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        for src in batch.target_source:
            sources[TARGET_SOURCES.index(src)] += 1
        if batch.target is None:
            raise ValueError(f"frame {batch.sequence[0]}/{batch.frame_id[0]} has no ground truth to evaluate")
        batch = batch.to(ctx.device)
        with autocast(ctx.device, precision):
            logits = model(model_inputs(batch, depth_mode)).logits
        pred = upsample_labels(logits.argmax(dim=1).to(torch.uint8), factor)
        metrics.add_batch(pred, batch.target)
        if on_prediction is not None:
            pred_np = pred.cpu().numpy()
            for i in range(pred_np.shape[0]):
                on_prediction(batch.sequence[i], batch.frame_id[i], pred_np[i])
    metrics = reduce_metrics(metrics, ctx)
    sources = all_reduce_array(sources, ctx)
    metrics.target_sources = {name: int(n) for name, n in zip(TARGET_SOURCES, sources) if n}
    return metrics


def metrics_report(metrics: SSCMetrics, class_names: Sequence[str]) -> Dict[str, Any]:
    """JSON-ready scores: completion IoU / precision / recall, mIoU, per-class IoU, distance slabs."""
    s = metrics.scores()

    def num(v: float) -> Optional[float]:
        return None if not np.isfinite(v) else float(v)

    report: Dict[str, Any] = {
        "frames": int(metrics.count),
        "iou": num(s["iou"]), "precision": num(s["precision"]), "recall": num(s["recall"]),
        "miou": num(s["miou"]),
        "class_iou": {name: float(v) for name, v in zip(class_names, s["class_iou"])},
    }
    if getattr(metrics, "target_sources", None):
        report["target_sources"] = dict(metrics.target_sources)  # frames scored per ground-truth source
    if metrics.axis_confusion:
        slabs: List[Dict[str, Any]] = format_slab_rows(metrics)
        report["distance"] = [{k: (num(v) if isinstance(v, float) else v) for k, v in row.items()} for row in slabs]
    return report
