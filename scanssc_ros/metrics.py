"""SSC evaluation: one confusion matrix over the split, plus the paper's distance analysis.

Conventions (the official ``tools/metric.py``, spec section 7):
- Voxels whose ground truth is 255 are excluded by setting both prediction and ground truth to 0 there. They
  land in confusion[0, 0]: a true "empty" that changes no reported number (class 0 is not in the mIoU).
- No FOV mask; everything is accumulated over the whole split before any ratio is taken.
- Completion: occupied = label > 0. IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall =
  TP / (TP + FN). Empty denominators follow semantic-kitti-api's ``evaluate_completion.py``, whose precision and
  recall carry a float32-epsilon guard and whose IoU does not: precision is 0 when nothing is predicted occupied,
  recall is 0 when nothing is occupied in the ground truth, and IoU is NaN (0 / 0) only when neither is.
- Per class: IoU = TP / (TP + FP + FN + 1e-5), so a class absent from both prediction and ground truth scores 0.
  mIoU averages classes 1..C-1.

Distance analysis (paper Table 1, spec 10.4-10.5): per axis, one confusion matrix per index along the axis. A
slab's scores come from the sum of its indices' matrices (the voxels inside the slab, accumulated over the split).
Axes: depth = x (index 0 next to the car), width = y (index 0 at y = -25.6 m, the car's right), height = z
(index 0 at the bottom). Parts (1)-(4) are the four equal slabs in index order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec
from scanssc_ros.labels import IGNORE

AXES: Tuple[Tuple[str, int], ...] = (("depth", 0), ("width", 1), ("height", 2))
_AXIS_NAMES = ("x", "y", "z")


def _safe_ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """num / den, ``empty`` where den is 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, empty)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_confusion(conf: np.ndarray) -> Dict[str, np.ndarray]:
    """(..., C, C) confusion matrices (rows = ground truth, columns = prediction) -> completion precision /
    recall / iou (...,), per-class ``class_iou`` (..., C) and ``miou`` (...,) over classes 1..C-1."""
    conf = np.asarray(conf, np.float64)
    tp_c = np.diagonal(conf, axis1=-2, axis2=-1)
    fp_c = conf.sum(-2) - tp_c
    fn_c = conf.sum(-1) - tp_c
    class_iou = tp_c / (tp_c + fp_c + fn_c + 1e-5)
    occ_tp = conf[..., 1:, 1:].sum((-2, -1))
    occ_fp = conf[..., 0, 1:].sum(-1)
    occ_fn = conf[..., 1:, 0].sum(-1)
    return {
        "precision": _safe_ratio(occ_tp, occ_tp + occ_fp, 0.0),
        "recall": _safe_ratio(occ_tp, occ_tp + occ_fn, 0.0),
        "iou": _safe_ratio(occ_tp, occ_tp + occ_fp + occ_fn, np.nan),
        "class_iou": class_iou,
        "miou": class_iou[..., 1:].mean(-1),
    }


class SSCMetrics:
    """Accumulates predictions against ground truth over a split. ``add_batch`` takes (B, X, Y, Z) or (X, Y, Z)
    integer arrays (numpy or torch, any device); counting runs with torch.bincount on the inputs' device."""

    def __init__(self, num_classes: int, distance_analysis: bool = True, grid: GridSpec = SEMANTIC_KITTI_GRID):
        self.num_classes = num_classes
        self.distance_analysis = distance_analysis
        self.grid = grid
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.confusion = np.zeros((c, c), np.int64)
        self.axis_confusion: Dict[str, np.ndarray] = {}
        self.count = 0

    # ------------------------------------------------------------------------------------ accumulation
    def add_batch(self, pred: Union[np.ndarray, torch.Tensor], target: Union[np.ndarray, torch.Tensor]) -> None:
        pred_t = torch.as_tensor(pred).long()
        gt_t = torch.as_tensor(target, device=pred_t.device).long()
        if pred_t.shape != gt_t.shape:
            raise ValueError(f"prediction {tuple(pred_t.shape)} and target {tuple(gt_t.shape)} differ")
        if pred_t.dim() == 3:
            pred_t, gt_t = pred_t[None], gt_t[None]
        c = self.num_classes
        invalid = gt_t == IGNORE
        pred_t = pred_t.masked_fill(invalid, 0)
        gt_t = gt_t.masked_fill(invalid, 0)
        if bool(((pred_t < 0) | (pred_t >= c) | (gt_t < 0) | (gt_t >= c)).any()):
            raise ValueError(f"labels must be in [0, {c}) (ground truth may also be {IGNORE})")
        key = gt_t * c + pred_t
        self.confusion += torch.bincount(key.reshape(-1), minlength=c * c).cpu().numpy().reshape(c, c)
        if self.distance_analysis:
            for name, dim in AXES:
                length = key.shape[dim + 1]
                shape = [1, 1, 1, 1]
                shape[dim + 1] = length
                pos = torch.arange(length, device=key.device).view(shape)
                counts = torch.bincount((pos * (c * c) + key).reshape(-1), minlength=length * c * c)
                counts = counts.cpu().numpy().reshape(length, c, c)
                if name in self.axis_confusion:
                    self.axis_confusion[name] += counts
                else:
                    self.axis_confusion[name] = counts
        self.count += key.shape[0]

    # ------------------------------------------------------------------------------------------ scores
    def scores(self) -> Dict[str, np.ndarray]:
        return scores_from_confusion(self.confusion)

    def summary(self) -> Dict[str, float]:
        s = self.scores()
        out = {k: float(s[k]) for k in ("precision", "recall", "iou", "miou")}
        out.update({f"iou_class_{i}": float(v) for i, v in enumerate(s["class_iou"])})
        return out

    def slab_scores(self, axis: str, parts: int = 4) -> Dict[str, np.ndarray]:
        """Scores of ``parts`` equal slabs along ``axis`` (each entry has a leading ``parts`` dimension)."""
        per_index = self._axis(axis)
        length = per_index.shape[0]
        if length % parts:
            raise ValueError(f"{axis} axis of length {length} does not split into {parts} equal parts")
        return scores_from_confusion(per_index.reshape(parts, length // parts, *per_index.shape[1:]).sum(1))

    def bin_scores(self, axis: str) -> Dict[str, np.ndarray]:
        """Scores of every index along ``axis`` (each entry has a leading axis-length dimension)."""
        return scores_from_confusion(self._axis(axis))

    def _axis(self, axis: str) -> np.ndarray:
        if axis not in self.axis_confusion:
            known = [a for a, _ in AXES]
            if axis not in known:
                raise ValueError(f"unknown axis {axis!r}; expected one of {known}")
            raise RuntimeError("no distance analysis accumulated (distance_analysis=False or no batch yet)")
        return self.axis_confusion[axis]

    def _axis_centres(self, axis: str) -> np.ndarray:
        """Metric coordinate of every index along ``axis`` (bin centres)."""
        dim = dict(AXES)[axis]
        length = self._axis(axis).shape[0]
        extent = self.grid.dims[dim] * self.grid.voxel_size
        return self.grid.origin[dim] + extent * (np.arange(length) + 0.5) / length

    def _slab_edges(self, axis: str, parts: int) -> np.ndarray:
        dim = dict(AXES)[axis]
        extent = self.grid.dims[dim] * self.grid.voxel_size
        return self.grid.origin[dim] + extent * np.arange(parts + 1) / parts

    # ------------------------------------------------------------------------------------------ reports
    def class_table(self, class_names: Optional[Sequence[str]] = None) -> str:
        s = self.scores()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        lines = [f"completion  IoU {100 * s['iou']:6.2f}  precision {100 * s['precision']:6.2f}  "
                 f"recall {100 * s['recall']:6.2f}", f"mIoU (classes 1..{self.num_classes - 1}) {100 * s['miou']:6.2f}"]
        lines += [f"  {i:2d} {names[i]:<16s} {100 * v:6.2f}" for i, v in enumerate(s["class_iou"])]
        return "\n".join(lines)

    def distance_table(self, parts: int = 4) -> str:
        """Paper Table 1 layout: recall / IoU / mIoU (in %) per slab of each axis."""
        header = f"{'part':<6s}" + "".join(f"{a + ' ' + m:>12s}" for a, _ in AXES for m in ("R", "IoU", "mIoU"))
        rows, ranges = [header], []
        per_axis = {a: self.slab_scores(a, parts) for a, _ in AXES}
        for p in range(parts):
            cells = "".join(f"{100 * per_axis[a][m][p]:12.2f}" for a, _ in AXES for m in ("recall", "iou", "miou"))
            rows.append(f"({p + 1}){'':<3s}" + cells)
        for a, dim in AXES:
            e = self._slab_edges(a, parts)
            ranges.append(f"{a} ({_AXIS_NAMES[dim]}): " + ", ".join(
                f"({p + 1}) {e[p]:.1f}..{e[p + 1]:.1f} m" for p in range(parts)))
        return "\n".join(rows + ranges)

    def bin_table(self, axis: str) -> str:
        """Per-index curve along ``axis`` as text: index, metric coordinate, recall / IoU / mIoU in %."""
        s = self.bin_scores(axis)
        rows = [f"{axis:>6s} {'m':>6s} {'R':>7s} {'IoU':>7s} {'mIoU':>7s}"]
        for i, x in enumerate(self._axis_centres(axis)):
            rows.append(f"{i:6d} {x:6.1f} {100 * s['recall'][i]:7.2f} {100 * s['iou'][i]:7.2f} "
                        f"{100 * s['miou'][i]:7.2f}")
        return "\n".join(rows)

    def plot_distance(self, path: Union[str, Path], title: str = "") -> Path:
        """PNG of recall / IoU / mIoU per index along each axis (Agg backend, no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(AXES), figsize=(15, 4), constrained_layout=True)
        for ax, (name, dim) in zip(axes, AXES):
            s = self.bin_scores(name)
            x = self._axis_centres(name)
            for key, label in (("recall", "recall"), ("iou", "IoU"), ("miou", "mIoU")):
                ax.plot(x, 100 * s[key], label=label)
            for edge in self._slab_edges(name, 4)[1:-1]:
                ax.axvline(edge, color="grey", lw=0.5, ls="--")
            ax.set_xlabel(f"{name}: {_AXIS_NAMES[dim]} (m)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("%")
        axes[0].legend()
        if title:
            fig.suptitle(title)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def format_slab_rows(metrics: SSCMetrics, parts: int = 4) -> List[Dict[str, float]]:
    """The distance table as records (axis, part, recall, iou, miou), for JSON reports."""
    rows = []
    for a, _ in AXES:
        s = metrics.slab_scores(a, parts)
        for p in range(parts):
            rows.append({"axis": a, "part": p + 1, "recall": float(s["recall"][p]), "iou": float(s["iou"][p]),
                         "miou": float(s["miou"][p])})
    return rows
