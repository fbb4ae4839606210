"""ScanSSC: image (+ stereo depth) -> semantic scene completion logits on the 256x256x32 grid.

Data flow (stage names as reported in ``timings``):

    backbone_neck  EfficientNet (5 levels) -> SECONDFPN -> (B, 5*Cn, H/8, W/8)
    depth          DepthNet (context + mono depth) [+ stereo encoder + DepthAggregation] -> context, depth
    lift           LSS lift-splat (sum pooling) -> lss volume (B, C, X, Y, Z) on the processing grid
    proposal       stereo (or, in mono mode, own arg-max) depth -> proposal voxels (B, X, Y, Z)
    cross_attn     queries = embedding + lss volume; DFA3D cross-attention on proposal voxels, mlp_prior elsewhere
    self_attn      deformable self-attention on the 2D reinterpretation of all voxels
    scan           three parallel Scan blocks (depth / height / width)
    mixers         three 3D ResNet + FPN mixers, softmax-weighted fusion
    head           OccHead + trilinear x2 -> logits (B, num_classes, *grid_dims)

Mono mode (``stereo_depth is None``): the stereo volume encoder and the depth aggregation are skipped, the
depth distribution is the softmax of the mono DepthNet logits, and the voxel proposal uses that distribution's
arg-max depth. Everything downstream is unchanged. ScanSSC was trained with stereo depth, so a mono-mode model
is a different method (spec section 10.5) and should be trained in that mode.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from scanssc_ros.config import ModelConfig

from . import buffer_pool, fastpath
from .depth_net import camera_vector
from .efficientnet import EfficientNet
from .encoder import VoxFormerHead
from .head import OccHead
from .lift import SplatPlan, frustum_points, lss_pool
from .mixer import Fuser
from .neck import SECONDFPN
from .proposal import depth_from_distribution, voxel_proposal
from .stereo_depth import GeometryDepthNet
from .timing import stage


@dataclass
class ModelInputs:
    image: torch.Tensor  # (B, 3, H, W) ImageNet-normalised network input
    K: torch.Tensor  # (B, 3, 3) intrinsics of the original image
    T_cam_grid: torch.Tensor  # (B, 4, 4) grid (LiDAR) frame -> camera optical frame
    img_aug: torch.Tensor  # (B, 3, 3) original pixels -> network-input pixels (resize/crop)
    stereo_depth: Optional[torch.Tensor] = None  # (B, 1, H, W) metres at input resolution; <=0/NaN = invalid
    # (B, 3) 4th column of the camera's rectified projection matrix (KITTI P2: ~(46.9, 0.12, 0.0062) px);
    # None = zeros. Only the camera vector reads it: the geometry is already exact through T_cam_grid.
    p_shift: Optional[torch.Tensor] = None

    def to(self, device) -> ModelInputs:
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device)
        return ModelInputs(self.image.to(device), self.K.to(device), self.T_cam_grid.to(device),
                           self.img_aug.to(device), move(self.stereo_depth), move(self.p_shift))


@dataclass
class ModelOutputs:
    logits: torch.Tensor  # (B, num_classes, X, Y, Z) on the label grid (forward(upsample=False): processing grid)
    depth: torch.Tensor  # (B, D, h, w) fused depth distribution (softmax over bins)
    mono_depth_logits: torch.Tensor  # (B, D, h, w) DepthNet logits before any fusion
    proposal: torch.Tensor  # (B, X/2, Y/2, Z/2) bool, voxels that received cross-attention


class ScanSSC(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        cfg = config.validate()
        self.config = cfg
        self.img_backbone = EfficientNet(cfg.backbone_width, cfg.backbone_depth, cfg.backbone_drop_path,
                                         cfg.backbone_bn_eps, cfg.se_divisor)
        self.img_neck = SECONDFPN(self.img_backbone.out_channels, cfg.neck_channels)
        self.depth_net = GeometryDepthNet(
            in_channels=self.img_neck.out_channels, mid_channels=cfg.depth_mid_channels,
            context_channels=cfg.embed_dims, bins=cfg.num_bins, conv_channels=cfg.depth_conv_channels,
            stereo_channels=cfg.stereo_channels, aggregation_channels=cfg.aggregation_channels,
            na_kernel=cfg.na_kernel, cam_channels=cfg.cam_channels, dcn_groups=cfg.dcn_groups,
            dbound=cfg.dbound, stride=cfg.feature_stride)
        self.VoxFormer_head = VoxFormerHead(cfg)
        self.occ_encoder_backbone = Fuser(cfg.embed_dims, cfg.mixer_blocks, cfg.mixer_channels, cfg.mixer_strides,
                                          cfg.mixer_out_channels, cfg.mixer_gn_groups)
        self.pts_bbox_head = OccHead(cfg.mixer_out_channels, cfg.num_classes, cfg.grid_dims, cfg.head_gn_groups)
        self.splat_plan = SplatPlan()  # per-camera lift plans (inference fast path; no parameters)

    def _check(self, x: ModelInputs) -> None:
        B = x.image.shape[0]
        H, W = self.config.input_size
        expect = {"image": (B, 3, H, W), "K": (B, 3, 3), "T_cam_grid": (B, 4, 4), "img_aug": (B, 3, 3)}
        if x.stereo_depth is not None:
            expect["stereo_depth"] = (B, 1, H, W)
        if x.p_shift is not None:
            expect["p_shift"] = (B, 3)
        for name, shape in expect.items():
            got = tuple(getattr(x, name).shape)
            if got != shape:
                raise ValueError(f"ModelInputs.{name} has shape {got}, expected {shape}")

    def forward(self, inputs: ModelInputs, timings: Optional[Dict[str, float]] = None,
                upsample: bool = True) -> ModelOutputs:
        self._check(inputs)
        cfg = self.config
        dev = inputs.image.device
        K, T, A = inputs.K, inputs.T_cam_grid, inputs.img_aug
        with stage(timings, "backbone_neck", dev):
            feats = self.img_neck(self.img_backbone(inputs.image))
            # CPU inference keeps the backbone's channels-last layout through the DepthNet (oneDNN's native one)
            layout = torch.channels_last if fastpath.cpu_fp32_inference(feats) else torch.contiguous_format
            feats = feats.contiguous(memory_format=layout)
        with stage(timings, "depth", dev):
            cam = camera_vector(K, T, A, inputs.p_shift, cfg.input_convention)  # float32; autocast casts where needed
            context, depth, mono_logits = self.depth_net(feats, cam, inputs.stereo_depth)
        with stage(timings, "lift", dev):
            if fastpath.cpu_fp32_inference(context, depth):
                lss = self.splat_plan.pool(context, depth, K, T, A, cfg.input_size, cfg.dbound, cfg.proc_grid)
            else:
                pts = frustum_points(K, T, A, cfg.input_size, context.shape[-2:], cfg.dbound, cfg.num_bins)
                lss = lss_pool(context, depth, pts, cfg.proc_grid)
        with stage(timings, "proposal", dev):
            src = inputs.stereo_depth
            if src is None:
                src = depth_from_distribution(depth.detach(), cfg.dbound, cfg.input_size)
            proposal = voxel_proposal(src, K, T, A, cfg.proc_grid)
        # CPU inference on the fast paths: the Scan results and the mixers' volumes (all of one size) share a
        # buffer pool
        with buffer_pool.pooled() if buffer_pool.wanted(inputs.image, self.training) else nullcontext():
            d_feat, h_feat, w_feat = self.VoxFormer_head(context, depth, lss, proposal, K, T, A, timings)
            with stage(timings, "mixers", dev):
                fused = self.occ_encoder_backbone(d_feat, h_feat, w_feat)
        with stage(timings, "head", dev):
            logits = self.pts_bbox_head(fused, upsample)
        return ModelOutputs(logits=logits, depth=depth, mono_depth_logits=mono_logits, proposal=proposal)


def count_parameters(model: nn.Module) -> Dict[str, int]:
    """Parameter counts per top-level module plus 'total'."""
    out = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    out["total"] = sum(p.numel() for p in model.parameters())
    return out
