"""Mixed precision: one flag (fp32 / bf16 / fp16) turned into autocast contexts and a gradient scaler."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from scanssc_ros.model.precision import PRECISIONS, check_precision

__all__ = ["PRECISIONS", "amp_dtype", "autocast", "grad_scaler"]


def amp_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None for fp32). fp16 needs CUDA: CPU autocast has no fp16 GEMMs worth using and the
    gradient scaler is CUDA-only."""
    return check_precision(precision, device)


def autocast(device: torch.device, precision: str) -> ContextManager:
    dtype = amp_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (bf16 has fp32's exponent range and needs none); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
