"""Multi-scale deformable attention sampling (2D), the ``grid_sample`` formulation of mmcv's
``multi_scale_deformable_attn_pytorch``: bilinear, zero padding, align_corners=False, grid = 2 * loc - 1.

Sampling always runs in float32: the official code forces fp32 here because fp16 accumulation over many points
is unstable. Queries are processed in chunks so the (heads, dims, queries, points) sample tensor stays bounded.

CPU float32 inference takes ``gather_sum`` instead: the same bilinear sums as one weighted row gather
(``F.embedding_bag``) over a channels-last copy of the value map. grid_sample reads the channels of a corner one map
apart (a cache line each); a channels-last row holds them together. The paper's 512 x 512 x (8 x 16) self-attention
sampling took 2.5-3.0 s with grid_sample and 0.7 s this way.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import buffer_pool, fastpath

_MAX_SAMPLES = 1 << 24  # elements of one chunk's sample tensor (64 MB in fp32)
# On CPU, small chunks stay in cache: the lite self-attention's sampling took 46 instead of 60 ms in 4 MB chunks
# (min of 12, bitwise the same result). But each grid_sample call also costs in proportion to the value map, so
# chunks never hold fewer samples than half the map: the paper's 512 x 512 x 128 map took 11.3 s in 4 MB chunks
# and 3.5-3.9 s in 64 MB ones.
_CPU_MIN_SAMPLES = 1 << 20
# (query, head, level, corner, point) entries per chunk of the gather path: 8 MB of indices and 8 MB of weights
_GATHER_ENTRIES = 1 << 21
# the gather path builds its row indices in float32, exact below 2^24 rows
_GATHER_MAX_ROWS = 1 << 24


def ms_deform_attn(value: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]], locations: torch.Tensor,
                   weights: torch.Tensor, max_samples: Optional[int] = None) -> torch.Tensor:
    """value (B, S, nH, Dh) with S = sum(h*w) over levels (row-major per level);
    locations (B, Q, nH, L, P, 2) normalised (x, y) in [0, 1]; weights (B, Q, nH, L, P).
    Returns (B, Q, nH*Dh) in float32 (float64 for float64 inputs). ``max_samples``: elements of one chunk's
    sample tensor (default: on CPU half the value map's elements, within 2^20..2^24; elsewhere 2^24)."""
    if fastpath.cpu_fp32_inference(value, locations, weights):
        table = gather_table(value, spatial_shapes)
        if table is not None:
            return gather_sum(table, locations, weights)
    if max_samples is None:
        max_samples = min(_MAX_SAMPLES, max(_CPU_MIN_SAMPLES, value.numel() // 2)) \
            if value.device.type == "cpu" else _MAX_SAMPLES
    # without autograd the samples are weighted in place (no second tensor of their size)
    in_place = not (torch.is_grad_enabled() and any(t.requires_grad for t in (value, locations, weights)))
    B, S, nH, Dh = value.shape
    _, Q, _, L, P, _ = locations.shape
    if sum(h * w for h, w in spatial_shapes) != S:
        raise ValueError(f"spatial_shapes {list(spatial_shapes)} do not add up to {S} values")
    ct = torch.promote_types(value.dtype, torch.float32)
    with torch.autocast(device_type=value.device.type, enabled=False):
        value = value.to(ct)
        levels = []
        start = 0
        for h, w in spatial_shapes:
            v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(B * nH, Dh, h, w)
            levels.append(v)
            start += h * w
        grids = (2 * locations.to(ct) - 1).permute(0, 2, 1, 3, 4, 5)  # B,nH,Q,L,P,2
        wts = weights.to(ct).permute(0, 2, 1, 3, 4)  # B,nH,Q,L,P
        chunk = max(1, max_samples // max(1, nH * Dh * P))
        outs = []
        for q0 in range(0, Q, chunk):
            q1 = min(Q, q0 + chunk)
            acc = None
            for lvl, v in enumerate(levels):
                g = grids[:, :, q0:q1, lvl].reshape(B * nH, q1 - q0, P, 2)
                s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # B*nH,Dh,q,P
                wl = wts[:, :, q0:q1, lvl].reshape(B * nH, 1, q1 - q0, P)
                part = (s.mul_(wl) if in_place else s * wl).sum(-1)
                acc = part if acc is None else acc + part
            outs.append(acc)
        out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # B*nH, Dh, Q
        return out.view(B, nH * Dh, Q).transpose(1, 2)


class GatherTable(NamedTuple):
    """A value map laid out for ``gather_sum``: every level channels-last with a zero border, all in one table."""

    rows: torch.Tensor  # (rows, Dh)
    shapes: Tuple[Tuple[int, int], ...]
    first_row: Tuple[int, ...]  # of each level
    batch: int
    heads: int


def gather_table(value: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]]) -> Optional[GatherTable]:
    """value (B, S, nH, Dh) as a GatherTable (None where it has too many rows for exact float32 indices).

    Each level's map gets one zero row/column before and two after. ``gather_sum`` clamps pixel coordinates into
    that border, so all four corners of every sample are valid rows: a sample outside the map lands where both
    corners it still weights are zeros, which is what zero padding gives."""
    B, S, nH, Dh = value.shape
    if sum(h * w for h, w in spatial_shapes) != S:
        raise ValueError(f"spatial_shapes {list(spatial_shapes)} do not add up to {S} values")
    if B * nH * sum((h + 3) * (w + 3) for h, w in spatial_shapes) >= _GATHER_MAX_ROWS:
        return None
    tables, first_row = [], []
    start = row = 0
    for h, w in spatial_shapes:
        level = value[:, start:start + h * w].reshape(B, h, w, nH, Dh).permute(0, 3, 1, 2, 4)
        if buffer_pool.active():  # F.pad's result, in memory from the pool (the paper grid's: 136 MB)
            t = buffer_pool.empty((B, nH, h + 3, w + 3, Dh), value.dtype, value.device)
            t[:, :, 0].zero_()
            t[:, :, h + 1:].zero_()
            t[:, :, 1:h + 1, 0].zero_()
            t[:, :, 1:h + 1, w + 1:].zero_()
            t[:, :, 1:h + 1, 1:w + 1] = level
            tables.append(t.view(-1, Dh))
        else:
            tables.append(F.pad(level, (0, 0, 1, 2, 1, 2)).reshape(-1, Dh))  # B, nH, h+3, w+3, Dh
        first_row.append(row)
        start += h * w
        row += B * nH * (h + 3) * (w + 3)
    rows = torch.cat(tables) if len(tables) > 1 else tables[0]
    return GatherTable(rows, tuple(map(tuple, spatial_shapes)), tuple(first_row), B, nH)


def gather_sum(table: GatherTable, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``ms_deform_attn`` over a GatherTable: locations (B, Q, nH, L, P, 2), weights (B, Q, nH, L, P) ->
    (B, Q, nH*Dh). A NaN coordinate reads the first cell with NaN weights: NaN out, as from grid_sample."""
    B, nH, Dh = table.batch, table.heads, table.rows.shape[1]
    _, Q, _, L, P, _ = locations.shape
    if locations.shape[0] != B or locations.shape[2] != nH or L != len(table.shapes):
        raise ValueError(f"locations {tuple(locations.shape)} do not fit a table of {B} x {nH} heads x {L} levels")
    itype = torch.int32 if table.rows.shape[0] < 2 ** 31 else torch.int64
    out = table.rows.new_empty(B, Q, nH, Dh)
    chunk = max(1, _GATHER_ENTRIES // (nH * L * 4 * P))
    # first row of each (batch, head) map, per level
    heads = [torch.arange(B * nH, dtype=torch.float32).mul_((h + 3) * (w + 3)).add_(first).view(B, 1, nH, 1)
             for (h, w), first in zip(table.shapes, table.first_row)]
    for q0 in range(0, Q, chunk):
        q1 = min(Q, q0 + chunk)
        idx = torch.empty(B, q1 - q0, nH, L, 4, P, dtype=itype)
        wts = torch.empty(B, q1 - q0, nH, L, 4, P)
        for lvl, (h, w) in enumerate(table.shapes):
            wp = w + 3
            loc = locations[:, q0:q1, :, lvl]  # B, q, nH, P, 2
            # padded pixel coordinates: loc * size - 0.5 (align_corners=False) + 1 (the leading zero border)
            x = (loc[..., 0] * w).add_(0.5).clamp_(0, w + 1)
            y = (loc[..., 1] * h).add_(0.5).clamp_(0, h + 1)
            x0, y0 = x.floor().nan_to_num_(0.0), y.floor().nan_to_num_(0.0)
            fx, fy = x.sub_(x0), y.sub_(y0)
            top_left = x0.add_(heads[lvl]).add_(y0.mul_(wp)).to(itype)
            corner = idx[:, :, :, lvl]
            corner[:, :, :, 0] = top_left
            for k, step in ((1, 1), (2, wp), (3, wp + 1)):
                torch.add(top_left, step, out=corner[:, :, :, k])
            a = weights[:, q0:q1, :, lvl]
            lower = a * fy
            upper = a.sub(lower)
            cw = wts[:, :, :, lvl]
            torch.mul(upper, fx, out=cw[:, :, :, 1])
            torch.sub(upper, cw[:, :, :, 1], out=cw[:, :, :, 0])
            torch.mul(lower, fx, out=cw[:, :, :, 3])
            torch.sub(lower, cw[:, :, :, 3], out=cw[:, :, :, 2])
        n = L * 4 * P
        out[:, q0:q1] = F.embedding_bag(idx.view(-1, n), table.rows, per_sample_weights=wts.view(-1, n),
                                        mode="sum").view(B, q1 - q0, nH, Dh)
    return out.view(B, Q, nH * Dh)
