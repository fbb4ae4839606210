"""2D neighbourhood cross-attention (NATTEN semantics) with gathers instead of the natten CUDA kernels.

Each query pixel attends to a k x k window of key pixels. At the borders the window is *clamped* (shifted
inward so it stays k x k inside the image) rather than zero-padded, exactly like NATTEN. The relative position
bias table has (2k-1) x (2k-1) entries per head and is indexed by (key - query) + (k - 1) along each axis.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from . import fastpath


def window_indices(length: int, kernel: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(length, kernel) key indices of each position's clamped window and their bias-table indices."""
    pos = torch.arange(length, device=device)
    start = (pos - kernel // 2).clamp(0, length - kernel)
    keys = start[:, None] + torch.arange(kernel, device=device)[None, :]
    return keys, keys - pos[:, None] + (kernel - 1)


def neighborhood_attention_2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor,
                              kernel: int) -> torch.Tensor:
    """q, k, v (B, nH, H, W, Dh) with q already scaled; rpb (nH, 2k-1, 2k-1). Returns (B, nH, H, W, Dh)."""
    H, W = q.shape[2:4]
    if H < kernel or W < kernel:
        raise ValueError(f"feature map {H}x{W} smaller than the attention window {kernel}")
    ky, by = window_indices(H, kernel, q.device)
    kx, bx = window_indices(W, kernel, q.device)
    rows, cols = ky[:, None, :, None], kx[None, :, None, :]  # H,1,k,1 / 1,W,1,k
    keys = k[:, :, rows, cols]  # B,nH,H,W,k,k,Dh
    attn = torch.einsum("bnhwd,bnhwijd->bnhwij", q, keys)
    attn = attn + rpb[:, by[:, None, :, None], bx[None, :, None, :]].unsqueeze(0)
    attn = attn.flatten(-2).softmax(-1).view_as(attn)
    return torch.einsum("bnhwij,bnhwijd->bnhwd", attn, v[:, :, rows, cols])


def neighborhood_attention_2d_by_offset(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor,
                                        kernel: int) -> torch.Tensor:
    """Same result as ``neighborhood_attention_2d`` (up to float rounding), one window offset at a time.

    The reference gathers every query's k x k keys and values at once (2 x k^2 copies of the key map, 43 MB each
    for the lite depth aggregation) and reduces them with einsums that become batches of tiny matrix products.
    Here offset (i, j) of every query's window is one row gather and one column gather of the key map (window
    clamping is per row and per column, so it survives the split), reduced at once by element-wise products
    that stay in cache; the softmax is over the k^2 logits of each query, as before.
    """
    H, W = q.shape[2:4]
    if H < kernel or W < kernel:
        raise ValueError(f"feature map {H}x{W} smaller than the attention window {kernel}")
    ky, by = window_indices(H, kernel, q.device)
    kx, bx = window_indices(W, kernel, q.device)
    logits = q.new_empty(kernel * kernel, *q.shape[:4])  # offset first: every write below is contiguous
    for i in range(kernel):
        k_rows = k.index_select(2, ky[:, i])
        bias_rows = rpb.index_select(1, by[:, i])  # nH, H, 2k-1
        for j in range(kernel):
            t = logits[i * kernel + j]
            for cols, keys in _column_runs(W, kernel, j):
                torch.sum(q[..., cols, :] * keys(k_rows), dim=-1, out=t[..., cols])
            t += bias_rows.index_select(2, bx[:, j])
    attn = logits.softmax(0)
    out = torch.zeros_like(q)
    for i in range(kernel):
        v_rows = v.index_select(2, ky[:, i])
        for j in range(kernel):
            a = attn[i * kernel + j, ..., None]
            for cols, keys in _column_runs(W, kernel, j):
                out[..., cols, :].addcmul_(a[..., cols, :], keys(v_rows))
    return out


def _column_runs(W: int, kernel: int, j: int):
    """Offset ``j`` of every query column's clamped window as views instead of a gather: interior columns w read
    key column w - kernel//2 + j (a shifted slice); the kernel//2 columns at each border share one key column
    (a broadcast). Yields (query column slice, function: key map (..., W, D) -> its view for those columns)."""
    r = kernel // 2

    def edge(col: int, n: int):
        return lambda m: m[..., col:col + 1, :].expand(*m.shape[:-2], n, m.shape[-1])

    yield slice(r, W - r), lambda m: m[..., j:j + W - 2 * r, :]
    if r:
        yield slice(0, r), edge(j, r)
        yield slice(W - r, W), edge(W - kernel + j, r)


class NeighborhoodCrossAttention2D(nn.Module):
    """Queries from one map, keys/values from another (channels-last maps, (B, H, W, C))."""

    def __init__(self, dim: int, num_heads: int = 1, kernel_size: int = 5) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.kernel_size = num_heads, dim // num_heads, kernel_size
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        B, H, W, C = q.shape
        nH, Dh = self.num_heads, self.head_dim
        qh = (self.q(q) * self.scale).view(B, H, W, nH, Dh).permute(0, 3, 1, 2, 4)
        k, v = self.kv(kv).view(B, H, W, 2, nH, Dh).permute(3, 0, 4, 1, 2, 5)
        fast = fastpath.enabled() and not (torch.is_grad_enabled() and self.rpb.requires_grad)
        na = neighborhood_attention_2d_by_offset if fast else neighborhood_attention_2d
        out = na(qh, k, v, self.rpb.to(qh.dtype), self.kernel_size)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C))
