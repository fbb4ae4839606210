"""Scan Module (ScanSSC's contribution): three parallel axis-wise masked self-attention blocks.

Each block is one pre-norm transformer layer run over every 1D sequence of the volume along its axis:

    x <- x + Drop(MHA(q = k = LN1(x) + pos, v = LN1(x), mask))
    x <- x + Drop(W2 ReLU(W1 LN2(x)))

Allowed keys for query index q on a sequence of length L (mask True = blocked):

- depth (x, 0 = ego):    {0 .. max(q, L/2 - 1)}  (near half mutually visible, far voxels causal toward the ego)
- height (z, 0 = bottom): {q .. L-1}              (each voxel sees itself and everything above it)
- width (y, centre between L/2-1 and L/2): [min(q, L-1-q), max(q, L-1-q)] U [L/4, 3L/4)

The positional encoding is the official quirk: pos[x, y, z] = [col_emb(z) | row_emb(y)], constant along x.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import buffer_pool, fastpath

AXES = ("depth", "width", "height")
# CPU inference runs a layer over this many sequence elements (x channels) at a time: 8 MB temporaries, below
# glibc's 32 MB mmap threshold, so they are reused instead of faulted in fresh for every whole-volume operation
_LAYER_CHUNK_ELEMENTS = 1 << 21
# From this sequence length on, CPU inference computes the masked attention as batched products over sequence
# chunks whose score matrices (this many floats, 4 MB) stay in cache: aten's flash kernel for CPU works on
# head dim 8 in per-(sequence, head) blocks and was 2x slower at L = 64 and 1.75x at L = 128; at L = 16 it
# was the faster one (7.1 against 8.8 ms for 2048 sequences)
_CACHED_ATTENTION_MIN_LEN = 32
_ATTENTION_SCORE_FLOATS = 1 << 20


def scan_mask(axis: str, L: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """(L, L) bool attention mask, True = blocked (row = query, column = key)."""
    q = torch.arange(L, device=device)[:, None]
    k = torch.arange(L, device=device)[None, :]
    if axis == "depth":
        allowed = k <= torch.clamp(q, min=L // 2 - 1)
    elif axis == "height":
        allowed = k >= q
    elif axis == "width":
        lo, hi = torch.minimum(q, L - 1 - q), torch.maximum(q, L - 1 - q)
        allowed = ((k >= lo) & (k <= hi)) | ((k >= L // 4) & (k < L - L // 4))
    else:
        raise ValueError(f"unknown scan axis {axis!r}; known: {AXES}")
    return ~allowed


def masked_attention(attn: nn.MultiheadAttention, qk_in: torch.Tensor, v_in: torch.Tensor, blocked: torch.Tensor,
                     dropout_p: float, chunk: int) -> torch.Tensor:
    """Batched ``attn`` over sequences (S, L, C) with a shared (L, L) mask, using the module's own weights.
    Sequences are processed ``chunk`` at a time to bound the attention-matrix memory."""
    S, L, C = qk_in.shape
    nH = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    allowed = ~blocked
    outs = []
    for s0 in range(0, S, chunk):
        qk, vv = qk_in[s0:s0 + chunk], v_in[s0:s0 + chunk]
        n = qk.shape[0]
        q = F.linear(qk, w[:C], b[:C]).view(n, L, nH, C // nH).transpose(1, 2)
        k = F.linear(qk, w[C:2 * C], b[C:2 * C]).view(n, L, nH, C // nH).transpose(1, 2)
        v = F.linear(vv, w[2 * C:], b[2 * C:]).view(n, L, nH, C // nH).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        outs.append(o.transpose(1, 2).reshape(n, L, C))
    out = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
    return attn.out_proj(out)


def attention_by_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q, k, v (S, nH, L, d) (any strides) and a shared (L, L) additive
    bias (0 or -inf, no row fully blocked); returns (S, L, nH * d), heads concatenated like MHA's output.

    ``F.scaled_dot_product_attention`` is the reference. Here a few sequences at a time: the scores come from one
    batched product with the bias and log2(e) / sqrt(d) folded in (exp2 is the cheaper exponential), the
    probabilities stay unnormalised and the (d x L) transposed output is normalised instead (L / d times fewer
    divisions), and the value product runs as v^T p^T, whose output rows are L wide instead of d.
    """
    S, nH, L, d = q.shape
    out = q.new_empty(S, L, nH, d)
    step = max(1, _ATTENTION_SCORE_FLOATS // (nH * L * L))
    rows = min(S, step) * nH
    scores, out_t = q.new_empty(rows, L, L), q.new_empty(rows, d, L)
    bias = bias.to(q.dtype).expand(rows, L, L)
    alpha = math.log2(math.e) / math.sqrt(d)
    for s0 in range(0, S, step):
        c = min(step, S - s0)
        r = c * nH
        p = torch.baddbmm(bias[:r], q[s0:s0 + c].reshape(r, L, d), k[s0:s0 + c].reshape(r, L, d).transpose(1, 2),
                          alpha=alpha, out=scores[:r])
        p.sub_(p.amax(dim=-1, keepdim=True)).exp2_()
        total = p.sum(dim=-1).view(c, nH, L).permute(0, 2, 1).unsqueeze(-1)  # (c, L, nH, 1)
        o_t = torch.bmm(v[s0:s0 + c].reshape(r, L, d).transpose(1, 2), p.transpose(1, 2), out=out_t[:r])
        torch.div(o_t.view(c, nH, d, L).permute(0, 3, 1, 2), total, out=out[s0:s0 + c])
    return out.view(S, L, nH * d)


class ScanBlockLayer(nn.Module):
    def __init__(self, embed_dims: int, dim_feedforward: int, num_heads: int, axis: str, dropout: float = 0.1,
                 chunk: int = 1024) -> None:
        super().__init__()
        self.axis, self.dropout, self.chunk = axis, dropout, chunk
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.linear1 = nn.Linear(embed_dims, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, embed_dims)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: Optional[torch.Tensor] = None, pos_table: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """x (S, L, C) sequences along this layer's axis; pos broadcastable to x, or ``pos_table`` (P, L or 1, C):
        sequence s takes ``pos_table[s % P]`` (how a volume's positional encoding repeats over its sequences,
        without a copy of it per sequence)."""
        blocked = scan_mask(self.axis, x.shape[1], x.device)
        S, L, C = x.shape
        rows = None if pos_table is None else torch.arange(S, device=x.device) % pos_table.shape[0]
        if self.training or not fastpath.cpu_fp32_inference(x, self.linear2.weight):
            return self._layer(x, pos if rows is None else pos_table[rows], blocked)
        step = max(1, _LAYER_CHUNK_ELEMENTS // (L * max(C, self.linear1.out_features)))
        x = x.contiguous()
        out = buffer_pool.empty(x.shape, x.dtype, x.device)
        mask = torch.zeros(L, L, dtype=x.dtype, device=x.device).masked_fill_(blocked, float("-inf")) \
            if L >= _CACHED_ATTENTION_MIN_LEN else ~blocked
        per_sequence = pos is not None and pos.dim() == 3 and pos.shape[0] == S
        for s0 in range(0, S, step):
            if rows is not None:
                p = pos_table.index_select(0, rows[s0:s0 + step])
            else:
                p = pos[s0:s0 + step] if per_sequence else pos
            self._layer_into(x[s0:s0 + step], p, mask, out[s0:s0 + step])
        return out

    def _layer_into(self, x: torch.Tensor, pos: Optional[torch.Tensor], mask: torch.Tensor, out: torch.Tensor
                    ) -> None:
        """``_layer`` for CPU inference, written into ``out`` (contiguous, x's shape): the q and k projections
        as one product, the residual sums inside the output products (addmm) and the ReLU in place, which
        spares four of the eleven fresh (sequences x L x C..ff) temporaries per chunk. ``mask``: SDPA's bool
        mask (True = allowed), or an additive float bias (0 / -inf) for ``attention_by_chunks``."""
        n, L, C = x.shape
        attn = self.attn
        nH = attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        xn = self.norm1(x)
        qk = F.linear(xn + pos if pos is not None else xn, w[:2 * C], b[:2 * C])  # (n, L, 2C): q | k
        q = qk[..., :C].view(n, L, nH, C // nH).transpose(1, 2)
        k = qk[..., C:].view(n, L, nH, C // nH).transpose(1, 2)
        v = F.linear(xn, w[2 * C:], b[2 * C:]).view(n, L, nH, C // nH).transpose(1, 2)
        if mask.dtype == torch.bool:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n * L, C)
        else:
            o = attention_by_chunks(q, k, v, mask).view(n * L, C)
        x1 = torch.addmm(x.reshape(n * L, C), o, attn.out_proj.weight.t()).add_(attn.out_proj.bias)
        h = F.linear(self.norm2(x1), self.linear1.weight, self.linear1.bias).relu_()
        torch.addmm(x1, h, self.linear2.weight.t(), out=out.view(n * L, C)).add_(self.linear2.bias)

    def _layer(self, x: torch.Tensor, pos: Optional[torch.Tensor], blocked: torch.Tensor) -> torch.Tensor:
        xn = self.norm1(x)
        qk = xn + pos if pos is not None else xn
        p = self.dropout if self.training else 0.0
        x = x + self.drop1(masked_attention(self.attn, qk, xn, blocked, p, self.chunk))
        return x + self.drop2(self.linear2(F.relu(self.linear1(self.norm2(x)))))


class ScanBlock(nn.Module):
    """Runs a ScanBlockLayer over every sequence of a (B, X, Y, Z, C) volume along its axis."""

    def __init__(self, embed_dims: int, num_heads: int, dim_feedforward: int, axis: str, dropout: float = 0.1,
                 chunk: int = 1024) -> None:
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"unknown scan axis {axis!r}; known: {AXES}")
        self.axis = axis
        self.scanblocklayer = ScanBlockLayer(embed_dims, dim_feedforward, num_heads, axis, dropout, chunk)

    def forward(self, vol: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """vol (B, X, Y, Z, C); pos (Y, Z, C). Returns (B, X, Y, Z, C)."""
        B, X, Y, Z, C = vol.shape
        # sequence s of the flattened (B, ., ., L) lines takes pos_table[s % P]: pos is constant along x
        if self.axis == "depth":
            seq = vol.permute(0, 2, 3, 1, 4)  # B,Y,Z,X,C: s = (b Y + y) Z + z
            table = pos.reshape(Y * Z, 1, C)
        elif self.axis == "width":
            seq = vol.permute(0, 1, 3, 2, 4)  # B,X,Z,Y,C: s = (b X + x) Z + z
            table = pos.transpose(0, 1)  # Z,Y,C
        else:
            seq = vol  # B,X,Y,Z,C: s = (b X + x) Y + y
            table = pos
        shape = seq.shape
        L = shape[3]
        if buffer_pool.active() and not seq.is_contiguous():
            # the sequences gathered (reshape's whole-volume copy) into memory from the buffer pool
            lines = buffer_pool.empty((math.prod(shape[:3]), L, C), seq.dtype, seq.device)
            lines.view(shape).copy_(seq)
        else:
            lines = seq.reshape(-1, L, C)
        out = self.scanblocklayer(lines, pos_table=table).view(shape)
        if self.axis == "depth":
            return out.permute(0, 3, 1, 2, 4)
        if self.axis == "width":
            return out.permute(0, 1, 3, 2, 4)
        return out
