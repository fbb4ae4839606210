"""SECONDFPN image neck: every backbone level is brought to stride 8, normalised and concatenated."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn


class SECONDFPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int, strides: Sequence[int] = (4, 8, 16, 32, 32),
                 target_stride: int = 8) -> None:
        super().__init__()
        self.deblocks = nn.ModuleList()
        for cin, s in zip(in_channels, strides):
            if s < target_stride:  # finer than the target: strided conv down
                f = target_stride // s
                up = nn.Conv2d(cin, out_channels, f, stride=f, bias=False)
            else:  # same or coarser: transposed conv up (kernel = stride, 1 for the stride-8 level)
                f = s // target_stride
                up = nn.ConvTranspose2d(cin, out_channels, f, stride=f, bias=False)
            self.deblocks.append(nn.Sequential(up, nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01),
                                               nn.ReLU(inplace=True)))
        self.out_channels = out_channels * len(self.deblocks)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat([blk(f) for blk, f in zip(self.deblocks, feats)], dim=1)
