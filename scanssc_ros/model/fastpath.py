"""Switch between the fast inference paths and the reference implementations they replace.

Every fast path in the model (oneDNN 3D convolutions, the vectorised neighbourhood attention, the slab-wise
label decoding in the predictor) keeps its reference beside it; ``reference_ops()`` runs the reference
instead, so tests and ``bench/bench_predictor.py`` compare the two in one process on the same inputs.
Training never takes a fast path that changes autograd: the fast ops apply to inference only.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_STATE = {"fast": True}


def enabled() -> bool:
    return _STATE["fast"]


@contextmanager
def reference_ops() -> Iterator[None]:
    """Run the reference implementations inside the block (process-wide: meant for tests and benchmarks)."""
    old = _STATE["fast"]
    _STATE["fast"] = False
    try:
        yield
    finally:
        _STATE["fast"] = old


def cpu_fp32_inference(*tensors: torch.Tensor) -> bool:
    """True where a CPU fast path may replace the reference: fast paths on, float32 CPU tensors, no autocast
    (which would cast inside the reference op) and nothing that needs a gradient."""
    if not _STATE["fast"] or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False  # under torch.compile the standard ops are traced and the compiler picks the kernels
    grad = torch.is_grad_enabled()
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and not (grad and t.requires_grad)
               for t in tensors)


def on_cpu(*tensors: torch.Tensor) -> bool:
    """True where every tensor is on the CPU: the host-side caches and CPU-only kernels that do not depend on
    the dtype (``host_sync.cuda_paths`` turns them off to show the CUDA forward on a CPU)."""
    return all(t.device.type == "cpu" for t in tensors)


def cuda_inference(*tensors: torch.Tensor) -> bool:
    """True where a CUDA fast path may replace the reference: fast paths on, CUDA tensors, nothing that needs a
    gradient, not under torch.compile."""
    if not _STATE["fast"] or torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    return all(t.device.type == "cuda" and not (grad and t.requires_grad) for t in tensors)


def is_channels_last_volume(x: torch.Tensor) -> bool:
    """A 5D tensor whose channels are innermost in memory (and more than one of them, where the two layouts
    coincide): what the Winograd convolutions return, which the ops after them keep."""
    return x.dim() == 5 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last_3d) and \
        not x.is_contiguous()
