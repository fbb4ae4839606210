"""Model configuration: every size of the network in one JSON-friendly dataclass that travels in checkpoints.

Three variants share one module structure (only sizes differ):

- ``paper``: the sizes of the official ScanSSC SemanticKITTI config (EfficientNet-B7, 128-d voxel features,
  3 cross / 2 self layers, 8 heads, 8 points, three 128-channel 3D mixers).
- ``lite``: a CPU-oriented model. Same input and output geometry (384x1280 input, 256x256x32 output at 0.2 m) and
  the same modules, with a small EfficientNet, narrow channels, fewer heads/points/layers, and two coarser internal
  resolutions: the 3D stages run on a 64x64x8 grid (``grid_downsample`` 4, the head upsamples x4) and the depth
  distribution has 56 bins of 1 m. At the paper's 128x128x16 and 112 bins the same small model took 3.6 s per
  frame on 2 CPU cores (bench/bench_model.py); these two sizes bring it to about 0.8 s.
- ``tiny``: for fast unit tests only. It is the one variant allowed to shrink the geometry: 96x320 input and a
  64x64x8 output grid at 0.8 m (processed at 32x32x4), which covers the same metric volume coarsely.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

from scanssc_ros.geometry import GridSpec

VARIANTS = ("paper", "lite", "tiny")
INPUT_CONVENTIONS = ("official", "shift_folded")

# Fields added after checkpoints were already written, with the value that reproduces the network those older
# checkpoints were trained as. A config dict without the field is an old file; new configs take the dataclass
# default (the official behaviour).
LEGACY_FIELD_VALUES: Dict[str, Any] = {
    "se_divisor": 8,
    "num_level_embeds": 1,
    "input_convention": "shift_folded",
}


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "paper"
    num_classes: int = 20
    input_size: Tuple[int, int] = (384, 1280)  # (H, W) of the network input
    # ------------------------------------------------------------------ geometry
    grid_origin: Tuple[float, float, float] = (0.0, -25.6, -2.0)
    grid_voxel_size: float = 0.2
    grid_dims: Tuple[int, int, int] = (256, 256, 32)  # output (label) grid
    grid_downsample: int = 2  # 3D processing runs at grid_dims / grid_downsample
    dbound: Tuple[float, float, float] = (2.0, 58.0, 0.5)  # depth bins: start, stop (exclusive), step
    feature_stride: int = 8  # stride of the neck output w.r.t. the input
    # How the camera is described to the network (a checkpoint only works with the convention it was trained
    # with). "official": the official 33-d camera vector, with the projection shift P[:3, 3] and the sensor->ego
    # block of the projection's reference camera (KITTI: inv(Tr)). "shift_folded": this project's first
    # convention (zeros for the shift, the camera's own pose); kept so older checkpoints run as they were trained.
    input_convention: str = "official"
    # self-attention reinterprets the N processing voxels as a (rows, cols) 2D map; (0, 0) = the official
    # square map (512x512 for 128x128x16)
    bev_hw: Tuple[int, int] = (0, 0)
    # ------------------------------------------------------------------ image backbone (EfficientNet)
    backbone_width: float = 2.0  # B7
    backbone_depth: float = 3.1  # B7
    backbone_drop_path: float = 0.2
    backbone_bn_eps: float = 1e-3
    se_divisor: int = 1  # squeeze width = in_channels / 4 rounded to this multiple (official/mmcls: 1)
    # ------------------------------------------------------------------ neck (SECONDFPN over 5 levels)
    neck_channels: int = 128  # per level; the concatenation has 5x this
    # ------------------------------------------------------------------ depth net
    depth_mid_channels: int = 640  # reduce conv / SE width (official: the neck output width)
    depth_conv_channels: int = 112  # BasicBlock/ASPP/DCN width (official: = number of depth bins)
    cam_channels: int = 33
    stereo_channels: int = 112  # stereo volume encoder U-Net width (official: = number of depth bins)
    aggregation_channels: int = 32  # DepthAggregation 3D U-Net width
    na_kernel: int = 5  # neighbourhood attention window
    dcn_groups: int = 4
    # ------------------------------------------------------------------ voxel transformer
    embed_dims: int = 128  # context channels = voxel feature channels
    num_heads: int = 8
    cross_points: int = 8
    self_points: int = 8
    num_cross_layers: int = 3
    num_self_layers: int = 2
    ffn_channels: int = 256
    num_level_embeds: int = 4  # rows of the cross-attention level embedding (official 4; only row 0 is read)
    dropout: float = 0.1
    # ------------------------------------------------------------------ scan module
    scan_heads: int = 8
    scan_ffn_channels: int = 256
    scan_chunk: int = 1024  # sequences per attention call (memory bound only; no effect on results)
    # ------------------------------------------------------------------ 3D mixers + head
    mixer_channels: Tuple[int, int, int] = (128, 128, 128)
    mixer_blocks: Tuple[int, int, int] = (2, 2, 2)
    mixer_strides: Tuple[int, int, int] = (1, 2, 2)
    mixer_out_channels: int = 128  # FPN output = fused volume = head input (official: embed_dims)
    mixer_gn_groups: int = 32
    head_gn_groups: int = 32
    extra: Dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the config

    # -------------------------------------------------------------------------------------- derived
    @property
    def grid(self) -> GridSpec:
        return GridSpec(self.grid_origin, self.grid_voxel_size, self.grid_dims)

    @property
    def proc_grid(self) -> GridSpec:
        return self.grid.scaled(self.grid_downsample)

    @property
    def num_bins(self) -> int:
        start, stop, step = self.dbound
        return int(round((stop - start) / step))

    @property
    def feature_size(self) -> Tuple[int, int]:
        return self.input_size[0] // self.feature_stride, self.input_size[1] // self.feature_stride

    @property
    def num_queries(self) -> int:
        return self.proc_grid.num_voxels

    @property
    def bev_shape(self) -> Tuple[int, int]:
        if self.bev_hw != (0, 0):
            return tuple(self.bev_hw)
        n = self.num_queries
        rows = int(math.isqrt(n))
        while n % rows:
            rows -= 1
        return rows, n // rows

    def validate(self) -> ModelConfig:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; known: {VARIANTS}")
        if self.input_convention not in INPUT_CONVENTIONS:
            raise ValueError(f"unknown input_convention {self.input_convention!r}; known: {INPUT_CONVENTIONS}")
        if self.se_divisor < 1 or self.num_level_embeds < 1:
            raise ValueError("se_divisor and num_level_embeds must be >= 1")
        h, w = self.input_size
        if h % 32 or w % 32:
            raise ValueError(f"input_size {self.input_size} must be divisible by 32 (backbone stride)")
        if self.feature_stride != 8:
            raise ValueError("the neck produces stride-8 features; feature_stride must be 8")
        dims = self.proc_grid.dims
        if dims[0] % 4 or dims[1] % 4:
            raise ValueError(f"processing grid {dims}: x and y must be divisible by 4 (scan masks)")
        r, c = self.bev_shape
        if r * c != self.num_queries:
            raise ValueError(f"bev_hw {self.bev_hw} does not hold {self.num_queries} voxels")
        for name, heads in (("embed_dims", self.num_heads), ("scan", self.scan_heads)):
            if self.embed_dims % heads:
                raise ValueError(f"embed_dims {self.embed_dims} not divisible by {name} heads {heads}")
        if self.embed_dims % 2:
            raise ValueError("embed_dims must be even (row/col positional encodings)")
        if self.aggregation_channels < 8 or self.aggregation_channels % 8:
            raise ValueError("aggregation_channels must be a positive multiple of 8 (channel attention /8)")
        if self.mixer_out_channels % self.mixer_gn_groups:
            raise ValueError(f"mixer_out_channels {self.mixer_out_channels} not divisible by {self.mixer_gn_groups}")
        if (self.mixer_out_channels // 2) % self.head_gn_groups:
            raise ValueError(f"head mid channels {self.mixer_out_channels // 2} not divisible by {self.head_gn_groups}")
        if not (len(self.mixer_channels) == len(self.mixer_blocks) == len(self.mixer_strides) >= 2):
            raise ValueError("mixer_channels/blocks/strides must have the same length (>= 2)")
        if self.depth_conv_channels % self.dcn_groups:
            raise ValueError("depth_conv_channels must be divisible by dcn_groups")
        if self.num_bins < 2:
            raise ValueError(f"dbound {self.dbound} gives fewer than 2 depth bins")
        return self

    # -------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        kwargs = {k: (v if k == "extra" else _tuple(v)) for k, v in d.items()}
        for name, value in LEGACY_FIELD_VALUES.items():
            kwargs.setdefault(name, value)
        return cls(**kwargs).validate()

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes).validate()


def variant(name: str) -> ModelConfig:
    """The named preset ('paper', 'lite' or 'tiny')."""
    if name == "paper":
        return ModelConfig().validate()
    if name == "lite":
        return ModelConfig(
            variant="lite",
            grid_downsample=4,
            dbound=(2.0, 58.0, 1.0),
            backbone_width=0.5,
            backbone_depth=0.5,
            backbone_drop_path=0.0,
            neck_channels=16,
            depth_mid_channels=64,
            depth_conv_channels=32,
            stereo_channels=16,
            aggregation_channels=8,
            embed_dims=32,
            num_heads=4,
            cross_points=4,
            self_points=4,
            num_cross_layers=2,
            num_self_layers=1,
            ffn_channels=64,
            scan_heads=4,
            scan_ffn_channels=64,
            scan_chunk=2048,
            mixer_channels=(16, 16, 16),
            mixer_blocks=(1, 1, 1),
            mixer_out_channels=16,
            mixer_gn_groups=8,
            head_gn_groups=8,
        ).validate()
    if name == "tiny":
        return ModelConfig(
            variant="tiny",
            input_size=(96, 320),
            grid_voxel_size=0.8,
            grid_dims=(64, 64, 8),
            backbone_width=0.25,
            backbone_depth=0.25,
            backbone_drop_path=0.1,
            neck_channels=8,
            depth_mid_channels=16,
            depth_conv_channels=8,
            stereo_channels=8,
            aggregation_channels=8,
            embed_dims=16,
            num_heads=2,
            cross_points=2,
            self_points=2,
            num_cross_layers=1,
            num_self_layers=1,
            ffn_channels=32,
            scan_heads=2,
            scan_ffn_channels=32,
            mixer_channels=(8, 8, 8),
            mixer_blocks=(1, 1, 1),
            mixer_out_channels=8,
            mixer_gn_groups=4,
            head_gn_groups=4,
        ).validate()
    raise ValueError(f"unknown model variant {name!r}; known: {VARIANTS}")
