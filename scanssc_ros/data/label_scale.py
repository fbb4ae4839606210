"""Moving semantic labels between the dataset grid (256x256x32) and a coarser model grid (e.g. tiny: 64x64x8).

Downsampling follows the rule the SSC preprocessing scripts (SSCNet -> LMSCNet -> MonoScene, whose SemanticKITTI
script writes the ``_1_2`` / ``_1_4`` / ``_1_8`` label files) apply to every f x f x f block of fine voxels:

- Count the empty voxels (id 0) and the unknown voxels (id 255) of the block.
- If together they are *more than* 95 % of the block (``n0 + n255 > 0.95 f^3``), the coarse voxel is empty (0)
  when ``n0 > n255`` and unknown (255) otherwise (a tie goes to 255).
- Otherwise it takes the most frequent semantic id among the block's non-empty, known voxels (1..254); a tie goes
  to the smallest id (``argmax`` of a ``bincount``).

So a block with even a few occupied voxels (6 % of the block for f = 4) becomes occupied: thin structures survive
the coarsening. Factor 1 is the identity. Upsampling (model grid -> dataset grid, for evaluation and ``.label``
export) repeats each coarse voxel over its f x f x f block (nearest neighbour).
"""
from __future__ import annotations

from typing import Optional, TypeVar

import numpy as np
import torch

from scanssc_ros.geometry import GridSpec
from scanssc_ros.labels import EMPTY, IGNORE

LabelArray = TypeVar("LabelArray", np.ndarray, torch.Tensor)
EMPTY_FRACTION = 0.95


def grid_factor(fine: GridSpec, coarse: GridSpec) -> int:
    """The integer f with ``coarse`` = ``fine`` coarsened f times along every axis (same origin and extent);
    ValueError otherwise."""
    ratios = {d_f / d_c if d_c else 0.0 for d_f, d_c in zip(fine.dims, coarse.dims)}
    f = int(round(next(iter(ratios)))) if len(ratios) == 1 else 0
    if (f < 1 or any(d_c * f != d_f for d_f, d_c in zip(fine.dims, coarse.dims))
            or not np.isclose(coarse.voxel_size, fine.voxel_size * f)
            or not np.allclose(coarse.origin, fine.origin)):
        raise ValueError(f"model grid {coarse} is not the dataset grid {fine} coarsened by one integer factor")
    return f


def downsample_labels(labels: LabelArray, factor: int, num_classes: Optional[int] = None) -> LabelArray:
    """(..., X, Y, Z) integer labels (0 empty, 1..C-1 classes, 255 unknown) -> (..., X/f, Y/f, Z/f) uint8 by the
    SSC block rule of the module docstring. numpy in -> numpy out; torch in -> torch out on the same device.

    ``num_classes`` bounds the ids (inferred from the data when None); an id in [C, 255) raises ValueError.
    """
    is_numpy = isinstance(labels, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(labels)) if is_numpy else labels
    f = int(factor)
    *lead, X, Y, Z = t.shape
    if f < 1 or X % f or Y % f or Z % f:
        raise ValueError(f"grid {(X, Y, Z)} is not divisible by factor {factor}")
    ids = t.long()
    known = ids != IGNORE
    c = int(ids[known].max()) + 1 if num_classes is None and bool(known.any()) else int(num_classes or 1)
    if bool(((ids < 0) | (ids >= c))[known].any()):
        raise ValueError(f"labels must be in [0, {c}) or {IGNORE}")
    if f == 1:
        out = ids.to(torch.uint8)
        return out.numpy() if is_numpy else out
    # (..., X/f, f, Y/f, f, Z/f, f) -> (M, f^3) blocks; 255 becomes bin c
    blocks = torch.where(known, ids, torch.full_like(ids, c))
    blocks = blocks.reshape(*lead, X // f, f, Y // f, f, Z // f, f)
    n_lead = len(lead)
    perm = list(range(n_lead)) + [n_lead + i for i in (0, 2, 4, 1, 3, 5)]
    blocks = blocks.permute(perm).reshape(-1, f ** 3)
    counts = torch.zeros(blocks.shape[0], c + 1, dtype=torch.int32, device=blocks.device)
    counts.scatter_add_(1, blocks, torch.ones_like(blocks, dtype=torch.int32))
    n_empty, n_unknown = counts[:, EMPTY], counts[:, c]
    mostly_empty = (n_empty + n_unknown).double() > EMPTY_FRACTION * f ** 3
    fill = torch.where(n_empty > n_unknown, torch.full_like(n_empty, EMPTY), torch.full_like(n_empty, IGNORE))
    if c > 1:
        majority = counts[:, 1:c].argmax(dim=1).to(torch.int32) + 1  # first maximum = smallest id
    else:
        majority = torch.full_like(n_empty, EMPTY)
    out = torch.where(mostly_empty, fill, majority).to(torch.uint8).reshape(*lead, X // f, Y // f, Z // f)
    return out.numpy() if is_numpy else out


def upsample_labels(labels: LabelArray, factor: int) -> LabelArray:
    """(..., x, y, z) -> (..., f x, f y, f z): every coarse voxel repeated over its block (same array kind)."""
    f = int(factor)
    if f == 1:
        return labels
    if isinstance(labels, np.ndarray):
        for axis in (-3, -2, -1):
            labels = np.repeat(labels, f, axis=axis)
        return labels
    for dim in (-3, -2, -1):
        labels = labels.repeat_interleave(f, dim=dim)
    return labels

