"""Inference precision: one flag (fp32 / bf16 / fp16) turned into the context a forward pass runs in."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` (None for fp32); ValueError for an unknown one or fp16 on CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return PRECISIONS[precision]


@contextlib.contextmanager
def inference_precision(device: torch.device, precision: str) -> Iterator[None]:
    """bf16/fp16: autocast. fp32 on CUDA: IEEE fp32, TF32 off for cuDNN convolutions and cuBLAS products while
    inside. PyTorch lets cuDNN use TF32 (a 10-bit mantissa) by default, which moved 0.6 % of the tiny model's
    labels away from the CPU's on an H200: whoever asks for fp32 gets fp32; bf16 is the fast setting."""
    dtype = check_precision(precision, device)
    if dtype is not None:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
        return
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
