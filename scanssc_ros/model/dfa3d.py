"""Depth-weighted 3D deformable sampling (the DFA3D operator) in plain PyTorch.

For a sampling location (u, v, d) in normalised image/depth coordinates the operator takes the four bilinear
pixel corners; each corner's bilinear weight is multiplied by that pixel's depth probability linearly
interpolated at ``d_im = d * D - 0.5`` (bins outside [0, D) count as zero). The result equals trilinear sampling
(align_corners=False, zero padding) of the lifted volume ``value[c, y, x] * depth[d, y, x]`` without building it.
Note the half-bin offset of the official operator: bin i (centred at start + i * step metres) sits at
``d_im = i - 0.5`` for a reference depth computed as (depth - start) / (stop - start).

Implementation: the corner weights (attention x bilinear x depth score) are computed for all
(query, head, point, corner) and the value rows are reduced with ``F.embedding_bag(mode='sum')``, which never
materialises the gathered rows and gives gradients to the value, the depth distribution and the weights.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

_MAX_ENTRIES = 1 << 22  # (query, head, point, corner) entries per chunk


def dfa3d_sample(value: torch.Tensor, depth: torch.Tensor, shape_hw: Tuple[int, int], locations: torch.Tensor,
                 weights: torch.Tensor, max_entries: int = _MAX_ENTRIES) -> torch.Tensor:
    """value (B, S, nH, Dh), S = h*w row-major; depth (B, S, D) per-pixel depth distribution;
    locations (B, Q, nH, P, 3) normalised (u, v, d); weights (B, Q, nH, P) attention weights.
    Returns (B, Q, nH*Dh) in float32 (float64 for float64 inputs)."""
    B, S, nH, Dh = value.shape
    h, w = shape_hw
    D = depth.shape[-1]
    Q, P = locations.shape[1], locations.shape[3]
    if h * w != S or depth.shape[:2] != (B, S):
        raise ValueError(f"value {tuple(value.shape)} / depth {tuple(depth.shape)} do not match shape {shape_hw}")
    ct = torch.promote_types(value.dtype, torch.float32)  # at least fp32; float64 stays float64 (gradcheck)
    with torch.autocast(device_type=value.device.type, enabled=False):
        table = value.to(ct).permute(0, 2, 1, 3).reshape(B * nH * S, Dh)  # row = (b*nH + head)*S + pix
        dflat = depth.to(ct).reshape(B * S * D)
        itype = torch.int32 if max(B * nH * S, B * S * D) < 2 ** 31 else torch.int64
        head_base = (torch.arange(B, device=value.device, dtype=itype)[:, None] * nH
                     + torch.arange(nH, device=value.device, dtype=itype)[None, :]) * S  # B,nH
        pix_base = (torch.arange(B, device=value.device, dtype=itype) * S)[:, None, None, None]  # B,1,1,1
        chunk = max(1, max_entries // max(1, nH * P * 4))
        outs = []
        for q0 in range(0, Q, chunk):
            q1 = min(Q, q0 + chunk)
            loc = locations[:, q0:q1].to(ct)
            x = loc[..., 0] * w - 0.5
            y = loc[..., 1] * h - 0.5
            dd = loc[..., 2] * D - 0.5
            x0, y0, d0 = x.floor(), y.floor(), dd.floor()
            fx, fy, fd = x - x0, y - y0, dd - d0
            # the two neighbours along each axis stacked in front (a leading axis of 2): every step below is one
            # operation for all 4 corners x 2 depth bins, broadcast over outer axes (a loop over corners and bins
            # took ~100 small operations per chunk). Row numbers in int32 (aten's int64 arithmetic is not
            # vectorised); out-of-range corners and bins get weight 0 by a 0/1 factor, the same values as
            # selecting 0 for them because the depth scores they multiply are finite and non-negative.
            cx, cy, cd = (torch.stack([c0, c0 + 1]) for c0 in (x0, y0, d0))
            wx, wy, wd = (torch.stack([1 - f, f]) for f in (fx, fy, fd))
            wd = wd * ((cd >= 0) & (cd < D))
            wxy = wy[:, None] * wx[None, :] * (((cy >= 0) & (cy < h))[:, None] & ((cx >= 0) & (cx < w))[None, :])
            pix = cy.clamp(0, h - 1).to(itype)[:, None] * w + cx.clamp(0, w - 1).to(itype)[None, :]  # (2 y, 2 x, ..)
            flat = (pix_base + pix)[None] * D + cd.clamp(0, D - 1).to(itype)[:, None, None]  # (2 d, 2 y, 2 x, ..)
            scores = dflat.index_select(0, flat.reshape(-1)).view(flat.shape)  # int32 rows need no conversion
            wt = wxy * (scores * wd[:, None, None]).sum(0)
            # corners last, y-major as the embedding_bag rows of each (query, head) expect them
            idx = (head_base[:, None, :, None] + pix).flatten(0, 1).movedim(0, -1)  # B,q,nH,P,4
            wt = wt.flatten(0, 1).movedim(0, -1) * weights[:, q0:q1].to(ct)[..., None]
            n = B * (q1 - q0) * nH
            out = F.embedding_bag(idx.reshape(n, P * 4), table, per_sample_weights=wt.reshape(n, P * 4),
                                  mode="sum")
            outs.append(out.view(B, q1 - q0, nH * Dh))
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
