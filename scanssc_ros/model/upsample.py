"""Trilinear upsampling by integer factors as separable per-axis blends (align_corners=False, edges clamped:
``F.interpolate``'s values up to float rounding, ~1e-7 relative).

Along one axis, output ``s*i + r`` is a fixed blend of input ``i`` and one neighbour (phase ``r``): one ``lerp``
of two shifted views per phase, no index tables. aten's trilinear kernel computes source indices and weights per
output element; on CPU this is 1.8-5x faster (the mixers' FPN: 255 -> 142 ms for 128 x 64 x 64 x 8 -> x2), and
the label decoding (``decode``) builds on ``upsample_axis`` slab by slab.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import buffer_pool, fastpath


def _phases(s: int) -> List[Tuple[int, float]]:
    """For each output phase r of an align_corners=False x``s`` upsampling: (neighbour offset, weight on it)."""
    out = []
    for r in range(s):
        t = (r + 0.5) / s - 0.5  # source coordinate relative to input i
        out.append((-1, -t) if t < 0 else (1, t))
    return out


def upsample_axis(x: torch.Tensor, dim: int, s: int, halo: Tuple[int, int] = (0, 0),
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Linear x``s`` upsampling along ``dim`` (align_corners=False, edge-clamped like F.interpolate).
    ``halo``: how many of ``x``'s first/last slices along ``dim`` (0 or 1) are only neighbours, not upsampled;
    where there is none the edge is clamped, as at the border of the whole volume. ``out``: a buffer of shape
    ``x.shape[:dim] + (n, s) + x.shape[dim + 1:]`` to write into (n = slices upsampled), so a caller that goes
    slab by slab reuses one buffer instead of faulting in fresh pages for every slab."""
    h0, h1 = halo
    n = x.shape[dim] - h0 - h1
    shape = (*x.shape[:dim], n, s, *x.shape[dim + 1:])
    if out is None:
        # the result is allocated whole and split by a view: a flatten of the split one could give a size-1 batch
        # any stride, and aten guesses the memory format of oneDNN's output from every stride
        merged = _empty_like_layout(x, (*x.shape[:dim], n * s, *x.shape[dim + 1:]), dim)
        out = merged.unflatten(dim, (n, s))
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    else:
        merged = out.flatten(dim, dim + 1)
    ctr = x.narrow(dim, h0, n)
    if s == 1:
        out.select(dim + 1, 0).copy_(ctr)  # a copy: the caller reduces slabs in place
        return merged
    for r, (off, w) in enumerate(_phases(s)):
        dst = out.select(dim + 1, r)
        has_halo = h0 if off < 0 else h1
        if has_halo:
            torch.lerp(ctr, x.narrow(dim, h0 + off, n), w, out=dst)
            continue
        # no neighbour beyond the edge: the edge slice is clamped, and lerp(a, a, w) is exactly a
        inner, edge = (1, 0) if off < 0 else (0, n - 1)
        if n > 1:
            torch.lerp(ctr.narrow(dim, inner, n - 1), ctr.narrow(dim, inner + off, n - 1), w,
                       out=dst.narrow(dim, inner, n - 1))
        dst.narrow(dim, edge, 1).copy_(ctr.narrow(dim, edge, 1))
    return merged


def _empty_like_layout(x: torch.Tensor, size: Sequence[int], dim: int) -> torch.Tensor:
    """An uninitialised tensor of ``size`` (x's with ``dim`` longer), channels-last when x is a channels-last volume
    upsampled along a spatial axis, so the result stays channels-last; contiguous otherwise."""
    fmt = torch.channels_last_3d if dim >= 2 and fastpath.is_channels_last_volume(x) else torch.contiguous_format
    return torch.empty(size, dtype=x.dtype, device=x.device, memory_format=fmt)


def integer_scales(src: Sequence[int], dst: Sequence[int]) -> Optional[Tuple[int, ...]]:
    """dst / src per axis when every one is a whole number >= 1, else None."""
    if len(src) != len(dst) or any(s <= 0 or d % s for s, d in zip(src, dst)):
        return None
    return tuple(d // s for s, d in zip(src, dst))


def trilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear", align_corners=False)`` for (N, C, D, H, W); the separable blends
    on the CPU inference fast path when ``size`` is a whole multiple of the input, aten otherwise."""
    scales = integer_scales(x.shape[2:], size)
    if scales is None or not fastpath.cpu_fp32_inference(x):
        return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)
    dims = [d for d in (4, 3, 2) if scales[d - 2] > 1]  # last axis first: the largest blends on the smallest tensors
    for dim in dims:
        s = scales[dim - 2]
        if dim != dims[-1]:
            x = upsample_axis(x, dim, s)
            continue
        # the full-size result from the buffer pool where one is active; returned as allocated, not as the flatten
        # of the split view upsample_axis writes to (see there)
        fmt = torch.channels_last_3d if fastpath.is_channels_last_volume(x) else torch.contiguous_format
        full = buffer_pool.empty((*x.shape[:dim], x.shape[dim] * s, *x.shape[dim + 1:]), x.dtype, x.device, fmt)
        upsample_axis(x, dim, s, out=full.unflatten(dim, (x.shape[dim], s)))
        x = full
    return x
