"""OccHead: 3x3x3 conv -> GN -> ReLU -> 1x1x1 conv to class logits, then trilinear x2 to the label grid."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath, layers
from .layers import Conv3d, GroupNorm


class OccHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, out_size: Tuple[int, int, int], gn_groups: int = 32) -> None:
        super().__init__()
        mid = in_channels // 2
        self.out_size = tuple(out_size)
        self.occ_convs = nn.ModuleList([nn.Sequential(
            Conv3d(in_channels, mid, 3, padding=1, bias=False),
            GroupNorm(gn_groups, mid),
            nn.ReLU(inplace=True),
            Conv3d(mid, num_classes, 1, bias=False),
        )])

    def forward(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        """Logits on the label grid; ``upsample=False``: on the processing grid, for callers that decode them
        without the full-resolution tensor (``decode.labels_confidence``)."""
        order = layers.channels_last_space_order(x) if fastpath.cpu_fp32_inference(x, *self.parameters()) and \
            not self.training else None
        if order is not None and order != (0, 1, 2):
            # the mixers' output, channels-last in another axis order (see Fuser): the convolutions follow it
            with layers.permuted_space(order):
                logits = layers.unpermute_space(self.occ_convs[0](layers.permute_space(x, order)), order)
        else:
            logits = self.occ_convs[0](x)
        logits = logits.contiguous()  # the CPU fast path's channels-last, for the decoding
        if not upsample:
            return logits
        return F.interpolate(logits, size=self.out_size, mode="trilinear", align_corners=False)
