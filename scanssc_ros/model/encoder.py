"""Voxel query encoder (CGFormer/VoxFormer heritage) and the head that owns the Scan blocks.

- Queries: ``nn.Embedding(N, C)`` + the LSS volume, flattened in (x, y, z) C order (n = x*Y*Z + y*Z + z).
- Proposal voxels go through ``num_cross_layers`` DFA3D cross-attention layers (cross-attn -> LN -> FFN -> LN);
  each query has one reference point, its voxel centre projected into the image, (u/W, v/H, (d - d0)/(d1 - d0)).
  Queries whose centre falls outside the image (or behind the camera) get a zero attention slot, so their
  output is residual + output-projection bias. No positional encoding is added to cross-attention queries.
- Every other voxel becomes ``mlp_prior(lss_volume)``.
- ``num_self_layers`` deformable self-attention layers run on all N voxels reinterpreted as a (rows, cols) 2D
  map (row = n // cols; 512x512 for 128x128x16), BEVFormer two-queue form: offsets/weights come from
  [query, query + pos]; both queues sample the same (current) features and their outputs are averaged.
- The result goes through the three parallel Scan blocks (see scan.py).

Batches: the proposal differs per sample, so proposal queries are gathered into a padded (B, max_len) batch;
padding slots are treated like out-of-image queries and dropped when scattering back.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from scanssc_ros.config import ModelConfig
from scanssc_ros.geometry import project_points, voxel_centers

from . import buffer_pool, fastpath
from .dfa3d import dfa3d_sample
from .layers import LearnedPositionalEncoding, softmax_last
from .lift import camera_key
from .msda import gather_sum, gather_table, ms_deform_attn
from .scan import ScanBlock
from .timing import stage

# CPU inference runs a self-attention layer over this many query features at a time (8 MB per temporary). Larger
# temporaries pass glibc's 32 MB mmap threshold: each is fresh memory faulted in page by page, which took more
# time than the paper model's self-attention arithmetic (7M page faults, 40 s of system time per frame).
_SELF_CHUNK_ELEMENTS = 1 << 21


def _circle_offsets(num_heads: int, groups: int, num_points: int) -> torch.Tensor:
    """Deformable-DETR offset-bias init: head h points along angle 2*pi*h/nH, point i at distance i+1."""
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    g = torch.stack([thetas.cos(), thetas.sin()], -1)
    g = (g / g.abs().max(-1, keepdim=True)[0]).view(num_heads, 1, 1, 2).repeat(1, groups, num_points, 1)
    return g * torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)


def _xavier(linear: nn.Linear) -> None:
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)


class FFN(nn.Module):
    """mmcv FFN: x + Drop(W2 Drop(ReLU(W1 x)))."""

    def __init__(self, dims: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)),
                                    nn.Linear(hidden, dims), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class MSDeformableAttention3D(nn.Module):
    """Offset / weight / value projections of the DFA3D cross-attention (one feature level)."""

    def __init__(self, dims: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(dims, num_heads * num_points * 2)
        self.sampling_offsets_depth = nn.Linear(dims, num_heads * num_points)
        self.attention_weights = nn.Linear(dims, num_heads * num_points)
        self.value_proj = nn.Linear(dims, dims)
        nn.init.zeros_(self.sampling_offsets.weight)
        self.sampling_offsets.bias.data = _circle_offsets(num_heads, 1, num_points).flatten()
        nn.init.zeros_(self.sampling_offsets_depth.weight)
        thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
        dinit = ((thetas.cos() + thetas.sin()) / 2).view(num_heads, 1) * torch.arange(1, num_points + 1).view(1, -1)
        self.sampling_offsets_depth.bias.data = dinit.flatten()
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        _xavier(self.value_proj)

    def forward(self, query: torch.Tensor, value: torch.Tensor, depth: torch.Tensor, ref: torch.Tensor,
                shape_hw: Tuple[int, int]) -> torch.Tensor:
        """query (B, Q, C); value (B, S, C); depth (B, S, D); ref (B, Q, 3) normalised (u, v, d)."""
        B, Q, C = query.shape
        nH, P = self.num_heads, self.num_points
        h, w = shape_hw
        v = self.value_proj(value).view(B, -1, nH, C // nH)
        off_uv = self.sampling_offsets(query).view(B, Q, nH, P, 2)
        off_d = self.sampling_offsets_depth(query).view(B, Q, nH, P, 1)
        norm = off_uv.new_tensor([w, h, depth.shape[-1]])
        loc = ref[:, :, None, None, :] + torch.cat([off_uv, off_d], dim=-1) / norm
        weights = softmax_last(self.attention_weights(query).view(B, Q, nH, P))
        return dfa3d_sample(v, depth, shape_hw, loc, weights)


class DeformCrossAttentionDFA3D(nn.Module):
    def __init__(self, dims: int, num_heads: int, num_points: int, dropout: float) -> None:
        super().__init__()
        self.deformable_attention = MSDeformableAttention3D(dims, num_heads, num_points)
        self.output_proj = nn.Linear(dims, dims)
        self.dropout = nn.Dropout(dropout)
        _xavier(self.output_proj)

    def forward(self, query, value, depth, ref, valid, shape_hw) -> torch.Tensor:
        slots = self.deformable_attention(query, value, depth, ref, shape_hw)
        slots = slots.to(query.dtype) * valid[..., None].to(query.dtype)
        return self.dropout(self.output_proj(slots)) + query


class DeformSelfAttention(nn.Module):
    """Two-queue deformable self-attention over a (rows, cols) map of the voxel features."""

    def __init__(self, dims: int, num_heads: int, num_points: int, dropout: float, num_queues: int = 2) -> None:
        super().__init__()
        self.num_heads, self.num_points, self.num_queues = num_heads, num_points, num_queues
        self.sampling_offsets = nn.Linear(dims * num_queues, num_queues * num_heads * num_points * 2)
        self.attention_weights = nn.Linear(dims * num_queues, num_queues * num_heads * num_points)
        self.value_proj = nn.Linear(dims, dims)
        self.output_proj = nn.Linear(dims, dims)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.sampling_offsets.weight)
        self.sampling_offsets.bias.data = _circle_offsets(num_heads, num_queues, num_points).flatten()
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        _xavier(self.value_proj)
        _xavier(self.output_proj)

    def forward(self, query: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shape_hw: Tuple[int, int]
                ) -> torch.Tensor:
        """query (B, N, C); pos (N, C); ref (N, 2) normalised (x, y) pixel centres of the map."""
        loc, weights = self.points(query, pos, ref, shape_hw)
        return self.output(ms_deform_attn(self.values(query), [shape_hw], loc, weights), query)

    def values(self, query: torch.Tensor) -> torch.Tensor:
        """The sampled features (B, N, nH, C / nH): every query's, whichever queries attend."""
        B, N, C = query.shape
        proj = self.value_proj
        if buffer_pool.active() and query.is_contiguous() and fastpath.cpu_fp32_inference(query, proj.weight):
            # F.linear's own product, into pooled memory
            v = buffer_pool.empty((B * N, C), query.dtype, query.device)
            torch.addmm(proj.bias, query.view(B * N, C), proj.weight.t(), out=v)
            return v.view(B, N, self.num_heads, C // self.num_heads)
        return proj(query).view(B, N, self.num_heads, C // self.num_heads)

    def points(self, query: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shape_hw: Tuple[int, int]
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations (B, N, nH, 1, nQ*P, 2) and weights (B, N, nH, 1, nQ*P) of these queries."""
        B, N, C = query.shape
        nH, P, nQ = self.num_heads, self.num_points, self.num_queues
        rows, cols = shape_hw
        qcat = torch.cat([query, query + pos], dim=-1)
        weights = softmax_last(self.attention_weights(qcat).view(B, N, nH, nQ, P))
        # every queue samples the same features, so the queue average is one sum over nQ*P points at weight/nQ
        weights = (weights / nQ).view(B, N, nH, 1, nQ * P)
        off = self.sampling_offsets(qcat)
        if fastpath.cpu_fp32_inference(off, ref) and off.is_contiguous():
            # the same divisions and sums, as row-wide operations: aten broadcast the (x, y) pair over
            # (heads, queues, points) two floats at a time (2.5 + 1.4 ms for the lite grid's 32k queries)
            K = off.shape[-1]
            flat = off.view(B * N, K).div_(query.new_tensor([cols, rows]).repeat(K // 2))
            # + ref through a product with a 0/1 matrix: each sum is ref + off, exactly (x * 1 + y * 0 = x)
            pick = torch.eye(2, dtype=off.dtype, device=off.device).repeat(1, K // 2)
            flat.addmm_(ref.to(off.dtype).repeat(B, 1), pick)
            return off.view(B, N, nH, 1, nQ * P, 2), weights
        off = off.view(B, N, nH, nQ, P, 2) / query.new_tensor([cols, rows])
        loc = (ref[None, :, None, None, None, :] + off).view(B, N, nH, 1, nQ * P, 2)
        return loc, weights

    def output(self, sampled: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.output_proj(sampled.to(query.dtype))) + query


class CrossLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C = cfg.embed_dims
        self.attentions = nn.ModuleList([DeformCrossAttentionDFA3D(C, cfg.num_heads, cfg.cross_points, cfg.dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(C), nn.LayerNorm(C)])
        self.ffns = nn.ModuleList([FFN(C, cfg.ffn_channels, cfg.dropout)])

    def forward(self, x, value, depth, ref, valid, shape_hw) -> torch.Tensor:
        x = self.norms[0](self.attentions[0](x, value, depth, ref, valid, shape_hw))
        return self.norms[1](self.ffns[0](x))


class SelfLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C = cfg.embed_dims
        self.attentions = nn.ModuleList([DeformSelfAttention(C, cfg.num_heads, cfg.self_points, cfg.dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(C), nn.LayerNorm(C)])
        self.ffns = nn.ModuleList([FFN(C, cfg.ffn_channels, cfg.dropout)])

    def forward(self, x, pos, ref, shape_hw) -> torch.Tensor:
        attention = self.attentions[0]
        if not self.training and fastpath.cpu_fp32_inference(x):
            table = gather_table(attention.values(x), [shape_hw])
            if table is not None:
                return self._chunked(x, pos, ref, shape_hw, table)
        x = self.norms[0](attention(x, pos, ref, shape_hw))
        return self.norms[1](self.ffns[0](x))

    def _chunked(self, x, pos, ref, shape_hw, table) -> torch.Tensor:
        """The layer over query chunks: the values are sampled from every query, everything else is per query."""
        attention, ffn = self.attentions[0], self.ffns[0]
        widest = max(2 * x.shape[-1], attention.sampling_offsets.out_features, ffn.layers[0][0].out_features)
        step = max(1, _SELF_CHUNK_ELEMENTS // widest)
        out = buffer_pool.empty(x.shape, x.dtype, x.device)
        for q0 in range(0, x.shape[1], step):
            q = x[:, q0:q0 + step]
            loc, weights = attention.points(q, pos[q0:q0 + step], ref[q0:q0 + step], shape_hw)
            y = self.norms[0](attention.output(gather_sum(table, loc, weights), q))
            out[:, q0:q0 + step] = self.norms[1](ffn(y))
        return out


class _Encoder(nn.Module):
    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers


class CrossTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.level_embeds = nn.Parameter(torch.empty(cfg.num_level_embeds, cfg.embed_dims).normal_())
        self.cams_embeds = nn.Parameter(torch.empty(1, cfg.embed_dims).normal_())
        self.encoder = _Encoder(nn.ModuleList([CrossLayer(cfg) for _ in range(cfg.num_cross_layers)]))


class SelfTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(nn.ModuleList([SelfLayer(cfg) for _ in range(cfg.num_self_layers)]))


def reference_points(cfg: ModelConfig, K: torch.Tensor, T_cam_grid: torch.Tensor, img_aug: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Voxel-centre reference points (B, N, 3) normalised (u/W, v/H, (d-d0)/(d1-d0)) and validity (B, N)."""
    B = K.shape[0]
    centers = voxel_centers(cfg.proc_grid, like=K).reshape(1, -1, 3).expand(B, -1, -1)
    uv, d = project_points(centers, K.float(), T_cam_grid.float(), img_aug.float())
    H, W = cfg.input_size
    d0, d1, _ = cfg.dbound
    ref = torch.stack([uv[..., 0] / W, uv[..., 1] / H, (d - d0) / (d1 - d0)], dim=-1)
    eps = 1e-5
    valid = (d > eps) & (ref[..., 0] > eps) & (ref[..., 0] < 1 - eps) & (ref[..., 1] > eps) & (ref[..., 1] < 1 - eps)
    return ref, valid


class VoxFormerHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, N = cfg.embed_dims, cfg.num_queries
        rows, cols = cfg.bev_shape
        X, Y, Z = cfg.proc_grid.dims
        self.volume_embed = nn.Embedding(N, C)
        self.positional_encoding = LearnedPositionalEncoding(C // 2, rows, cols)
        self.cross_transformer = CrossTransformer(cfg)
        self.self_transformer = SelfTransformer(cfg)
        self.mlp_prior = nn.Sequential(nn.Linear(C, C // 2), nn.LayerNorm(C // 2), nn.LeakyReLU(), nn.Linear(C // 2, C))
        blk = dict(embed_dims=C, num_heads=cfg.scan_heads, dim_feedforward=cfg.scan_ffn_channels,
                   dropout=cfg.dropout, chunk=cfg.scan_chunk)
        self.depth_block = ScanBlock(axis="depth", **blk)
        self.height_block = ScanBlock(axis="height", **blk)
        self.width_block = ScanBlock(axis="width", **blk)
        # official: a second LearnedPositionalEncoding of the same size, read at (y, z) only
        self.axis_positional_encoding = LearnedPositionalEncoding(C // 2, max(rows, Y), max(cols, Z))
        ref_y, ref_x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols,
                                      indexing="ij")
        self.register_buffer("ref_2d", torch.stack([ref_x, ref_y], -1).view(-1, 2), persistent=False)

    def _reference_points(self, K: torch.Tensor, T_cam_grid: torch.Tensor, img_aug: torch.Tensor
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``reference_points``, kept for the last camera on the CPU without autograd: a stream's camera does not
        change, and projecting every voxel centre took 1.8 ms a frame for the lite grid, 12 ms for the paper's.
        The camera is compared by value (``lift.camera_key``, as the splat plans are), so any change recomputes."""
        camera = (K, T_cam_grid, img_aug)
        if self.training or torch.is_grad_enabled() or not fastpath.on_cpu(*camera):
            return reference_points(self.cfg, *camera)
        key = camera_key(*camera)
        cached = self.__dict__.get("_reference_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_reference_cache"] = (key, reference_points(self.cfg, *camera))
        return cached[1]

    def forward(self, context: torch.Tensor, depth: torch.Tensor, lss_volume: torch.Tensor, proposal: torch.Tensor,
                K: torch.Tensor, T_cam_grid: torch.Tensor, img_aug: torch.Tensor,
                timings: Optional[Dict[str, float]] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """context (B, C, h, w); depth (B, D, h, w); lss_volume (B, C, X, Y, Z); proposal (B, X, Y, Z) bool.
        Returns the depth / height / width Scan outputs, each (B, C, X, Y, Z)."""
        cfg = self.cfg
        B, C, h, w = context.shape
        X, Y, Z = cfg.proc_grid.dims
        dev = context.device
        with stage(timings, "cross_attn", dev):
            lss_flat = lss_volume.flatten(2).transpose(1, 2).to(context.dtype)  # B,N,C
            ref, in_view = self._reference_points(K, T_cam_grid, img_aug)
            prop = proposal.reshape(B, -1)
            counts = prop.sum(dim=1)
            max_len = int(counts.max())
            # stable sort puts each sample's proposal voxels first, in flat-index order
            order = torch.sort((~prop).to(torch.uint8), dim=1, stable=True).indices[:, :max_len]
            real = torch.arange(max_len, device=dev)[None] < counts[:, None]
            # the queries (volume embedding + lifted features) of the proposal voxels only: the same sums, without
            # a whole-volume temporary (134 MB for the paper grid)
            pick = order[..., None].expand(-1, -1, C)
            embed = self.volume_embed.weight[None].to(lss_flat.dtype).expand(B, -1, -1)
            x = torch.gather(embed, 1, pick) + torch.gather(lss_flat, 1, pick)
            ref_sel = torch.gather(ref, 1, order[..., None].expand(-1, -1, 3))
            valid = torch.gather(in_view, 1, order) & real
            value = context.flatten(2).transpose(1, 2)
            ct = self.cross_transformer
            value = value + (ct.cams_embeds[0] + ct.level_embeds[0]).to(value.dtype)
            dist = depth.flatten(2).transpose(1, 2)
            for layer in self.cross_transformer.encoder.layers:
                x = layer(x, value, dist, ref_sel, valid, (h, w))
            vox = self.mlp_prior(lss_flat)
            where = (torch.arange(B, device=dev)[:, None].expand(-1, max_len), order)
            x = x.to(vox.dtype)
            if B > 1:
                # a sample's padding queries (it has fewer proposals than the longest) write back the voxels'
                # own values: selecting the real ones would size the result by their count (a host wait on GPU)
                x = torch.where(real[..., None], x, vox[where])
            if torch.is_grad_enabled():
                vox = vox.index_put(where, x)
            else:  # mlp_prior's fresh result: written in place instead of copied
                vox.index_put_(where, x)
        with stage(timings, "self_attn", dev):
            rows, cols = cfg.bev_shape
            pos = self.positional_encoding(rows, cols).reshape(-1, C).to(vox.dtype)
            for layer in self.self_transformer.encoder.layers:
                vox = layer(vox, pos, self.ref_2d, (rows, cols))
        with stage(timings, "scan", dev):
            vol = vox.view(B, X, Y, Z, C)
            axis_pos = self.axis_positional_encoding(Y, Z).to(vol.dtype)
            outs = tuple(blk(vol, axis_pos).permute(0, 4, 1, 2, 3)
                         for blk in (self.depth_block, self.height_block, self.width_block))
        return outs

