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
    Here offset (i, j) of every query's window is one row gather of the key map (window clamping is per row and
    per column, so it survives the split) and, for the interior columns, a shift of it by j: a view, reduced at
    once by element-wise products that stay in cache. The kernel // 2 columns at each border, whose windows are
    clamped to the map's first or last k columns, take all k of them at once per row offset (a few small
    broadcasts instead of a few per offset). The softmax is over the k^2 logits of each query, as before.
    """
    H, W = q.shape[2:4]
    if H < kernel or W < kernel:
        raise ValueError(f"feature map {H}x{W} smaller than the attention window {kernel}")
    B, nH, Dh = q.shape[0], q.shape[1], q.shape[4]
    r, dev = kernel // 2, q.device
    ky, by = window_indices(H, kernel, dev)
    _, bx = window_indices(W, kernel, dev)
    inner, Wi = slice(r, W - r), W - 2 * r  # interior query columns: key column w - r + j, bias column j + r
    edge_q = torch.cat([torch.arange(r, device=dev), torch.arange(W - r, W, device=dev)])
    edge_k = torch.cat([torch.arange(kernel, device=dev), torch.arange(W - kernel, W, device=dev)])
    q_edge = q.index_select(3, edge_q).view(B, nH, H, 2, r, 1, Dh)  # (.., border side, query column, 1, Dh)
    logits = q.new_empty(kernel * kernel, B, nH, H, Wi)  # offset first: every write below is contiguous
    edge_logits = q.new_empty(B, nH, H, 2, r, kernel, kernel)
    for i in range(kernel):
        k_rows = k.index_select(2, ky[:, i])
        bias_rows = rpb[:, by[:, i], None]  # nH, H, 1, 2k-1
        for j in range(kernel):
            t = logits[i * kernel + j]
            torch.sum(q[..., inner, :] * k_rows[..., j:j + Wi, :], dim=-1, out=t)
            t += bias_rows[..., j + r]
        k_edge = k_rows.index_select(3, edge_k).view(B, nH, H, 2, 1, kernel, Dh)
        edge_logits[..., i, :] = (q_edge * k_edge).sum(-1)
    edge_logits += rpb[:, by[:, None, :, None], bx[edge_q][None, :, None, :]].view(nH, H, 2, r, kernel, kernel)
    attn = logits.softmax(0).unsqueeze(-1)  # broadcast over Dh
    edge_attn = edge_logits.flatten(-2).softmax(-1).view_as(edge_logits).unsqueeze(-1)
    out = torch.empty_like(q)
    out_inner = out[..., inner, :].zero_()
    out_edge = q.new_zeros(B, nH, H, 2, r, Dh)
    for i in range(kernel):
        v_rows = v.index_select(2, ky[:, i])
        for j in range(kernel):
            out_inner.addcmul_(attn[i * kernel + j], v_rows[..., j:j + Wi, :])
        v_edge = v_rows.index_select(3, edge_k).view(B, nH, H, 2, 1, kernel, Dh)
        out_edge += (edge_attn[..., i, :, :] * v_edge).sum(-2)
    out[..., :r, :] = out_edge[:, :, :, 0]
    out[..., W - r:, :] = out_edge[:, :, :, 1]
    return out


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
