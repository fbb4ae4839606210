"""Processing-grid logits -> label-grid class ids and confidences, without the full-resolution logits.

The reference (``labels_confidence_reference``) upsamples all classes trilinearly to the label grid, takes the
softmax over classes and its maximum. For the lite model that allocates and walks 20 x 2.1 M floats five
times, and both aten kernels involved (trilinear upsampling, max-with-index over the class dimension) run far
below memory speed on CPU. ``labels_confidence`` does the same work a few label-grid x-slices at a time, so each
slab is built, reduced and dropped while it is still in cache:

- trilinear upsampling by an integer factor is separable, and along one axis output ``s*i + r`` is a fixed
  blend of input ``i`` and one neighbour (phase ``r``): one ``lerp`` of two shifted views per phase and axis,
  no index tables. The values differ from ``F.interpolate`` only by float rounding (~1e-7 relative);
- the confidence of the arg-max class is ``1 / sum_c exp(l_c - max)``; no normalised probability is stored.
  The exponentials are taken as ``2 ** ((l_c - max) * log2(e))`` with the factor applied to the coarse logits
  (upsampling is linear, the maximum commutes with it): aten's exp2 takes half the time of exp on CPU, and exp
  was a third of the decode. Values differ by float rounding (~1e-6 relative for logit gaps ~20);
- the label is the first class whose ``exp(l_c - max) / sum`` equals that confidence, which keeps the
  reference's tie rule (first index among probabilities that round to the same float: it decides voxels whose
  logits are all ~0). For a float ``e <= 1`` and any float ``inv`` in [2^-12, 1], ``e * inv`` rounds to ``inv``
  only for ``e == 1`` (checked for every such ``inv``), so that is the test: one pass fewer over the slab.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .upsample import upsample_axis

_SLAB_BYTES = 8 << 20  # upsampled logits per slab: a few MiB stays in L2/L3 here
_LOG2E = 1.4426950408889634


def confidence_u8(p: torch.Tensor) -> torch.Tensor:
    return torch.round(p * 255.0).clamp_(0, 255).to(torch.uint8)


def labels_confidence_reference(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution logits (C, X, Y, Z) -> (labels uint8, confidence uint8), each (X, Y, Z)."""
    conf, labels = logits.float().softmax(dim=0).max(dim=0)
    return labels.to(torch.uint8), confidence_u8(conf)


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
    coarse = coarse.float().mul(_LOG2E)  # a new tensor: the caller's logits stay as they are
    if slab is None:
        slab = max(1, _SLAB_BYTES // (4 * C * sx * Y * Z))
    slab = min(slab, x)
    first = torch.arange(C, 0, -1, dtype=torch.float32, device=coarse.device).view(C, 1, 1, 1)
    labels = torch.empty(out_size, dtype=torch.uint8, device=coarse.device)
    conf = torch.empty(out_size, dtype=torch.uint8, device=coarse.device)
    zup = upsample_axis(coarse, 3, sz)  # (C, x, y, Z): 1/(sx*sy) of the final size
    # one buffer each for the y-upsampled slab (with its x neighbours) and the x-upsampled one, reused
    yz_buf = coarse.new_empty(C, min(x, slab + 2), y, sy, Z)
    up_buf = coarse.new_empty(C, slab, sx, Y, Z)
    for i0 in range(0, x, slab):
        i1 = min(x, i0 + slab)
        lo, hi = max(0, i0 - 1), min(x, i1 + 1)  # the x neighbours of the slab's outputs
        yz = upsample_axis(zup[:, lo:hi], 2, sy, out=yz_buf[:, :hi - lo])
        up = upsample_axis(yz, 1, sx, (i0 - lo, hi - i1), out=up_buf[:, :i1 - i0])
        m = up.amax(dim=0)
        e = up.sub_(m).exp2_()  # = exp(l - max) of the unscaled logits
        inv = e.sum(dim=0).reciprocal_()
        # 1 where a class's probability equals the maximum one (1 / sum), weighted so the first such class wins
        key = e.eq_(1.0).mul_(first).amax(dim=0)
        labels[i0 * sx:i1 * sx].copy_(key.neg_().add_(C))  # cast by copy_: exact, whole numbers in 0..C-1
        conf[i0 * sx:i1 * sx] = confidence_u8(inv)
    return labels, conf
