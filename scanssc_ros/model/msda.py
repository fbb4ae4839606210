"""Multi-scale deformable attention sampling (2D), the ``grid_sample`` formulation of mmcv's
``multi_scale_deformable_attn_pytorch``: bilinear, zero padding, align_corners=False, grid = 2 * loc - 1.

Sampling always runs in float32: the official code forces fp32 here because fp16 accumulation over many points
is unstable. Queries are processed in chunks so the (heads, dims, queries, points) sample tensor stays bounded.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

_MAX_SAMPLES = 1 << 24  # elements of one chunk's sample tensor (64 MB in fp32)
# On CPU, small chunks stay in cache: the lite self-attention's sampling took 46 instead of 60 ms in 4 MB chunks
# (min of 12, bitwise the same result). But each grid_sample call also costs in proportion to the value map, so
# chunks never hold fewer samples than half the map: the paper's 512 x 512 x 128 map took 11.3 s in 4 MB chunks
# and 3.5-3.9 s in 64 MB ones.
_CPU_MIN_SAMPLES = 1 << 20


def ms_deform_attn(value: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]], locations: torch.Tensor,
                   weights: torch.Tensor, max_samples: Optional[int] = None) -> torch.Tensor:
    """value (B, S, nH, Dh) with S = sum(h*w) over levels (row-major per level);
    locations (B, Q, nH, L, P, 2) normalised (x, y) in [0, 1]; weights (B, Q, nH, L, P).
    Returns (B, Q, nH*Dh) in float32 (float64 for float64 inputs). ``max_samples``: elements of one chunk's
    sample tensor (default: on CPU half the value map's elements, within 2^20..2^24; elsewhere 2^24)."""
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
