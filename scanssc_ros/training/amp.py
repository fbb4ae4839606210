"""Mixed precision: one flag (fp32 / bf16 / fp16) turned into autocast contexts and a gradient scaler."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None for fp32). fp16 needs CUDA: CPU autocast has no fp16 GEMMs worth using and the
    gradient scaler is CUDA-only."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str) -> ContextManager:
    dtype = amp_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (bf16 has fp32's exponent range and needs none); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
