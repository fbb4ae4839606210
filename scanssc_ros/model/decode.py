"""Processing-grid logits -> label-grid class ids and confidences, without the full-resolution logits.

The reference (``labels_confidence_reference``) upsamples all classes trilinearly to the label grid, takes the
softmax over classes and its maximum. For the lite model that allocates and walks 20 x 2.1 M floats five
times, and both aten kernels involved (trilinear upsampling, max-with-index over the class dimension) run far
below memory speed on CPU. ``labels_confidence`` does the same work a few label-grid x-slices at a time, so each
slab is built, reduced and dropped while it is still in cache:

- trilinear upsampling by an integer factor is separable, and along one axis output ``s*i + r`` is a fixed
  blend of input ``i`` and one neighbour (phase ``r``): one ``lerp`` of two shifted views per phase and axis,
  no index tables. The values differ from ``F.interpolate`` only by float rounding (~1e-7 relative);
- the confidence of the arg-max class is ``1 / sum_c exp(l_c - max)``; no normalised probability is stored;
- the label is the first class whose ``exp(l_c - max) / sum`` equals that confidence, which keeps the
  reference's tie rule (first index among probabilities that round to the same float: it decides voxels whose
  logits are all ~0).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

_SLAB_BYTES = 8 << 20  # upsampled logits per slab: a few MiB stays in L2/L3 here


def confidence_u8(p: torch.Tensor) -> torch.Tensor:
    return torch.round(p * 255.0).clamp_(0, 255).to(torch.uint8)


def labels_confidence_reference(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution logits (C, X, Y, Z) -> (labels uint8, confidence uint8), each (X, Y, Z)."""
    conf, labels = logits.float().softmax(dim=0).max(dim=0)
    return labels.to(torch.uint8), confidence_u8(conf)


def _phases(s: int) -> List[Tuple[int, float]]:
    """For each output phase r of an align_corners=False x``s`` upsampling: (neighbour offset, weight on it)."""
    out = []
    for r in range(s):
        t = (r + 0.5) / s - 0.5  # source coordinate relative to input i
        out.append((-1, -t) if t < 0 else (1, t))
    return out


def upsample_axis(x: torch.Tensor, dim: int, s: int, halo: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Linear x``s`` upsampling along ``dim`` (align_corners=False, edge-clamped like F.interpolate).
    ``halo``: how many of ``x``'s first/last slices along ``dim`` (0 or 1) are only neighbours, not upsampled;
    where there is none the edge is clamped, as at the border of the whole volume."""
    h0, h1 = halo
    n = x.shape[dim] - h0 - h1
    if s == 1:
        return x.narrow(dim, h0, n).clone()  # a copy: the caller reduces slabs in place
    ctr = x.narrow(dim, h0, n)
    if h0:
        left = x.narrow(dim, 0, n)
    else:
        left = torch.cat([ctr.narrow(dim, 0, 1), ctr.narrow(dim, 0, n - 1)], dim)
    if h1:
        right = x.narrow(dim, h0 + 1, n)
    else:
        right = torch.cat([ctr.narrow(dim, 1, n - 1), ctr.narrow(dim, n - 1, 1)], dim)
    out = x.new_empty(*x.shape[:dim], n, s, *x.shape[dim + 1:])
    for r, (off, w) in enumerate(_phases(s)):
        torch.lerp(ctr, left if off < 0 else right, w, out=out.select(dim + 1, r))
    return out.flatten(dim, dim + 1)


def _scale(n_in: int, n_out: int) -> int:
    if n_out % n_in:
        raise ValueError(f"label grid size {n_out} is not an integer multiple of the processing grid {n_in}")
    return n_out // n_in


def labels_confidence(coarse: torch.Tensor, out_size: Tuple[int, int, int], slab: Optional[int] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Processing-grid logits (C, x, y, z) -> the reference's (labels, confidence) on ``out_size`` (X, Y, Z).
    ``slab``: processing-grid x-slices per step (default: about ``_SLAB_BYTES`` of upsampled logits)."""
    C, x, y, z = coarse.shape
    X, Y, Z = out_size
    sx, sy, sz = _scale(x, X), _scale(y, Y), _scale(z, Z)
    coarse = coarse.float()
    if slab is None:
        slab = max(1, _SLAB_BYTES // (4 * C * sx * Y * Z))
    first = torch.arange(C, 0, -1, dtype=torch.float32, device=coarse.device).view(C, 1, 1, 1)
    labels = torch.empty(out_size, dtype=torch.uint8, device=coarse.device)
    conf = torch.empty(out_size, dtype=torch.uint8, device=coarse.device)
    yz = upsample_axis(upsample_axis(coarse, 3, sz), 2, sy)  # a quarter (lite) of the final size, made once
    for i0 in range(0, x, slab):
        i1 = min(x, i0 + slab)
        lo, hi = max(0, i0 - 1), min(x, i1 + 1)  # the x neighbours of the slab's outputs
        up = upsample_axis(yz[:, lo:hi], 1, sx, (i0 - lo, hi - i1))
        m = up.amax(dim=0)
        e = up.sub_(m).exp_()
        inv = e.sum(dim=0).reciprocal_()
        # 1 where a class's probability equals the maximum one (1 / sum), weighted so the first such class wins
        key = e.mul_(inv).eq_(inv).mul_(first).amax(dim=0)
        labels[i0 * sx:i1 * sx] = (C - key).to(torch.uint8)
        conf[i0 * sx:i1 * sx] = confidence_u8(inv)
    return labels, conf
