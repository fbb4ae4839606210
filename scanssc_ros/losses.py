"""Training losses of ScanSSC: weighted CE, MonoScene's scene-class affinity terms, the Scan Loss, depth KL.

Shapes: ``logits`` (B, C, X, Y, Z) over the label grid (x forward, y left, z up), ``target`` (B, X, Y, Z) integer
class ids with 255 = ignore. Nothing here depends on the number of classes, the grid size or the device, and no
int64 one-hot tensor is ever built (targets are scattered into tensors of the logits' float dtype).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from scanssc_ros.data.depth import DBOUND, gaussian_depth_target, min_valid_depth_pool
from scanssc_ros.labels import IGNORE

SCAN_AXES = ("height", "depth", "width")


def _valid_and_index(target: torch.Tensor, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(valid mask, class index with ignore voxels sent to 0) for any integer target dtype."""
    t = target.long()
    valid = t != IGNORE
    if bool(((t < 0) | (t >= num_classes))[valid].any()):
        raise ValueError(f"target holds ids outside [0, {num_classes}) other than {IGNORE}")
    return valid, torch.where(valid, t, torch.zeros_like(t))


def _bce_to_one(x: torch.Tensor) -> torch.Tensor:
    """Element-wise BCE(x, 1) = -log(x) with torch's clamp at -100; x is clamped into [0, 1] first because the
    ratios below are sums of probabilities that rounding can push a hair past 1."""
    x = x.clamp(0.0, 1.0)
    return F.binary_cross_entropy(x, torch.ones_like(x), reduction="none")


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0  # keeps the graph connected when a batch has nothing to supervise


# ------------------------------------------------------------------------------------------ CE and SCAL
def ce_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Class-weighted cross-entropy, ignore 255, mean over valid voxels weighted by their class weight (torch's
    ``CrossEntropyLoss(weight, ignore_index=255)``). Weights: ``labels.LabelSet.class_weights()``."""
    valid, _ = _valid_and_index(target, logits.shape[1])
    if not bool(valid.any()):
        return _zero(logits)
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, target.long(), weight=w, ignore_index=IGNORE)


def sem_scal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MonoScene semantic scene-class affinity loss.

    Over the valid voxels of the whole batch, for every class c (empty included) present in the target:
    BCE(precision_c, 1) + BCE(recall_c, 1) + BCE(specificity_c, 1), where precision_c = sum(p_c * [y=c]) /
    sum(p_c), recall_c = sum(p_c * [y=c]) / #[y=c], specificity_c = sum((1 - p_c)(1 - [y=c])) / #[y!=c]; the
    precision (specificity) term is skipped when its denominator is 0. Averaged over the classes present.
    All per-class sums are reductions, so no (C, N) one-hot is built.
    """
    c = logits.shape[1]
    valid, t = _valid_and_index(target, c)
    p = F.softmax(logits, dim=1).flatten(2)  # (B, C, N)
    vf = valid.flatten(1).to(p.dtype)  # (B, N)
    t = t.flatten(1)
    sum_p = torch.einsum("bcn,bn->c", p, vf)
    hit = p.gather(1, t.unsqueeze(1)).squeeze(1) * vf  # p of the true class, 0 on ignore voxels
    nom = torch.zeros(c, dtype=p.dtype, device=p.device).scatter_add_(0, t.reshape(-1), hit.reshape(-1))
    count = torch.zeros(c, dtype=p.dtype, device=p.device).scatter_add_(0, t.reshape(-1), vf.reshape(-1))
    n_valid = vf.sum()
    present = count > 0
    if not bool(present.any()):
        return _zero(logits)
    one = torch.ones_like(sum_p)
    precision = nom / torch.where(sum_p > 0, sum_p, one)
    recall = nom / torch.where(present, count, one)
    neg = n_valid - count
    specificity = (neg - sum_p + nom) / torch.where(neg > 0, neg, one)  # sum over valid of (1 - p)(1 - y)
    per_class = (_bce_to_one(precision) * (sum_p > 0) + _bce_to_one(recall)
                 + _bce_to_one(specificity) * (neg > 0))
    return (per_class * present).sum() / present.sum()


def geo_scal_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MonoScene geometric scene-class affinity loss (ScanSSC variant with ``eps`` in the denominators).

    Non-empty probability 1 - p(empty); BCE(., 1) on the completion precision, recall and specificity over the
    valid voxels of the whole batch.
    """
    valid, t = _valid_and_index(target, logits.shape[1])
    p_empty = torch.exp(logits[:, 0] - torch.logsumexp(logits, dim=1))  # avoids a full (B, C, ...) softmax
    vf = valid.to(logits.dtype)
    occ_t = (t != 0).to(logits.dtype) * vf
    free_t = vf - occ_t
    p_occ = 1.0 - p_empty
    inter = (occ_t * p_occ).sum()
    precision = inter / ((p_occ * vf).sum() + eps)
    recall = inter / (occ_t.sum() + eps)
    specificity = (free_t * p_empty).sum() / (free_t.sum() + eps)
    return (_bce_to_one(precision) + _bce_to_one(recall) + _bce_to_one(specificity)).sum()


# ------------------------------------------------------------------------------------------- Scan Loss
def _one_hot_float(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, X, Y, Z) ids -> (B, C, X, Y, Z) float one-hot with all-zero columns at ignore voxels. This equals the
    official one-hot over C + 1 classes (255 -> C) with the extra channel dropped."""
    valid, t = _valid_and_index(target, num_classes)
    oh = torch.zeros((t.shape[0], num_classes) + tuple(t.shape[1:]), dtype=dtype, device=target.device)
    return oh.scatter_(1, t.unsqueeze(1), valid.unsqueeze(1).to(dtype))


def _running_mean(x: torch.Tensor, dim: int, from_end: bool) -> torch.Tensor:
    """Means over growing windows along ``dim``: [0, p] (from_end=False) or [p, L-1] (from_end=True).

    For from_end the result is returned in *flipped* order (position L-1-p holds window [p, L-1]); callers apply
    the same function to logits and targets and average over all positions, so the order does not matter and
    the flip back (a full copy) is saved.
    """
    if from_end:
        x = x.flip(dim)
    length = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = length
    count = torch.arange(1, length + 1, dtype=x.dtype, device=x.device).view(shape)
    return x.cumsum(dim).div_(count)  # in place: cumsum's backward does not need its output


def _soft_ce_sum(zbar: torch.Tensor, tbar: torch.Tensor) -> torch.Tensor:
    return -(tbar * F.log_softmax(zbar, dim=1)).sum()


def scan_loss_axis(logits: torch.Tensor, target: torch.Tensor, axis: str,
                   one_hot: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One axis of the Scan Loss: mean over all B*X*Y*Z positions of -sum_c Tbar_c log softmax(Zbar)_c, where
    Zbar / Tbar are the means of the raw logits / one-hot labels over the position's window.

    Windows (spec section 4, "Direction (resolved)"): each is anchored at the end of the axis that the Scan
    Module treats as *far* and grows toward the near end, so a voxel's window covers the voxels beyond it:
    - ``height`` (z): [0, p], from the bottom (z = -2 m) up to p; divisor p + 1.
    - ``depth`` (x): [p, X-1], from the far edge (x = 51.2 m) back to p; divisor X - p.
    - ``width`` (y): [0, p] for p < Y/2 and [p, Y-1] for p >= Y/2, from each lateral edge toward the centre.
    This is what the official code computes (cumsum from the bottom; flip-then-cumsum for depth and for the
    right half of width) and what the paper's introduction describes (running averages "spreading from distant
    voxels to close ones", so distant logits enter the most windows). Ignore voxels (255) contribute no class
    mass but count in every divisor, and their logits enter the running means, as in the official code.
    No class weights.
    """
    c = logits.shape[1]
    oh = _one_hot_float(target, c, logits.dtype) if one_hot is None else one_hot
    n_pos = logits.numel() // c
    if axis == "height":
        total = _soft_ce_sum(_running_mean(logits, 4, False), _running_mean(oh, 4, False))
    elif axis == "depth":
        total = _soft_ce_sum(_running_mean(logits, 2, True), _running_mean(oh, 2, True))
    elif axis == "width":
        half = logits.shape[3] // 2
        total = (_soft_ce_sum(_running_mean(logits[:, :, :, :half], 3, False),
                              _running_mean(oh[:, :, :, :half], 3, False))
                 + _soft_ce_sum(_running_mean(logits[:, :, :, half:], 3, True),
                                _running_mean(oh[:, :, :, half:], 3, True)))
    else:
        raise ValueError(f"unknown scan axis {axis!r}; expected one of {SCAN_AXES}")
    return total / n_pos


def scan_loss(logits: torch.Tensor, target: torch.Tensor, axes: Sequence[str] = SCAN_AXES) -> torch.Tensor:
    """L_scan = L_height + L_depth + L_width (weight 1 each), sharing one float one-hot of the target."""
    oh = _one_hot_float(target, logits.shape[1], logits.dtype)
    return sum(scan_loss_axis(logits, target, a, one_hot=oh) for a in axes)


# -------------------------------------------------------------------------------------------- depth KL
def depth_kl_loss(depth_prob: torch.Tensor, lidar_depth: torch.Tensor,
                  dbound: Tuple[float, float, float] = DBOUND, official_quirk: bool = False) -> torch.Tensor:
    """KL(target || pred) of the depth net's bin distribution, averaged over supervised patches.

    ``depth_prob`` (B, D, h, w) probabilities (after softmax); ``lidar_depth`` (B, [1,] H, W) sparse LiDAR depth
    of the network input, H / h = W / w = the feature stride. A patch is supervised when the minimum valid LiDAR
    depth inside it lies in [lo, hi - step] (2 m to 57.5 m); its target is ``data.depth.gaussian_depth_target``
    (sigma 0.5 m; the Gaussian is in metres unless ``official_quirk``). KL uses log(pred + 1e-4) and divides by
    the number of supervised patches (torch ``kl_div(..., 'batchmean')`` on the patch rows), as CGFormer does.
    The 1e-4 loss weight is applied by the caller (LossWeights.depth).
    """
    b, d_bins, h, w = depth_prob.shape
    depth = lidar_depth.reshape(b, lidar_depth.shape[-2], lidar_depth.shape[-1]).to(depth_prob.dtype)
    stride = depth.shape[-1] // w
    if depth.shape[-2] != h * stride or depth.shape[-1] != w * stride:
        raise ValueError(f"LiDAR depth {tuple(depth.shape[-2:])} is not a multiple of the {h}x{w} depth grid")
    lo, hi, step = dbound
    dmin = min_valid_depth_pool(depth, stride).reshape(-1)
    fg = (dmin >= lo) & (dmin <= hi - step)
    n_fg = int(fg.sum())
    if n_fg == 0:
        return _zero(depth_prob)
    target = gaussian_depth_target(dmin[fg], dbound, official_quirk=official_quirk)
    if target.shape[1] != d_bins:
        raise ValueError(f"dbound gives {target.shape[1]} bins but depth_prob has {d_bins}")
    pred = depth_prob.permute(0, 2, 3, 1).reshape(-1, d_bins)[fg]
    kl = torch.xlogy(target, target) - target * torch.log(pred + 1e-4)
    return kl.sum() / n_fg


# -------------------------------------------------------------------------------------------------- total
@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    sem_scal: float = 1.0
    geo_scal: float = 1.0
    scan: float = 1.0
    depth: float = 1e-4


def ssc_losses(logits: torch.Tensor, target: torch.Tensor, class_weights: Optional[torch.Tensor] = None,
               weights: LossWeights = LossWeights(), depth_prob: Optional[torch.Tensor] = None,
               lidar_depth: Optional[torch.Tensor] = None, dbound: Tuple[float, float, float] = DBOUND
               ) -> Dict[str, torch.Tensor]:
    """All ScanSSC training terms (already weighted) and their sum under ``"total"``. Terms with weight 0 are
    skipped; the depth term needs both ``depth_prob`` and ``lidar_depth`` (bins of ``dbound``, the model's)."""
    terms: Dict[str, torch.Tensor] = {}
    if weights.ce:
        terms["ce"] = weights.ce * ce_loss(logits, target, class_weights)
    if weights.sem_scal:
        terms["sem_scal"] = weights.sem_scal * sem_scal_loss(logits, target)
    if weights.geo_scal:
        terms["geo_scal"] = weights.geo_scal * geo_scal_loss(logits, target)
    if weights.scan:
        terms["scan"] = weights.scan * scan_loss(logits, target)
    if weights.depth and depth_prob is not None and lidar_depth is not None:
        terms["depth"] = weights.depth * depth_kl_loss(depth_prob, lidar_depth, dbound)
    terms["total"] = sum(terms.values())
    return terms
