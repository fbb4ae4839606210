"""Reuse of large CPU buffers within one forward pass (the paper model's 134 MB volumes).

From the self-attention on, the paper model works on volumes of 128 x 128 x 16 voxels x 128 channels: 134 MB
each, fresh for every result. glibc serves blocks that size with new pages from the kernel (its mmap threshold is
at most 32 MB), so each one was faulted in page by page: the three mixers alone took 766 k minor faults and 2.2 s
of system time per frame (16.0 s against 14.5 s with malloc keeping everything in its heap,
``SCANSSC_MALLOC_TUNING=heap``, which fragments the heap and raises the whole process's peak RSS). Inside
``pooled()`` (``ScanSSC.forward`` on the CPU fast paths, from the cross-attention to the mixers), the sites that
make those volumes (the self-attention's value tables and layer results, the Scan blocks' sequences and results,
Winograd convolution outputs, upsampled FPN laterals) take them from a pool instead: a buffer that no tensor uses
any more is handed out again for the next request of the same size, e.g. a Scan result, once its mixer has read
it, for that mixer's convolutions. The pool lives only as long as the block, so nothing is held between frames.

A buffer is free when its storage has no user besides the pool, read from the storage's reference count
(``torch._C._storage_Use_Count``, a private function: where a torch build lacks it, the pool just allocates).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import fastpath

# smaller blocks come from glibc's heap (malloc_tuning's 32 MB mmap threshold) and are reused there already
MIN_BYTES = 32 << 20
_use_count = getattr(torch._C, "_storage_Use_Count", None)


class BufferPool:
    """Flat buffers by (numel, dtype, device); ``empty`` returns a view of a free one or of a new one."""

    def __init__(self) -> None:
        self._buffers: Dict[Tuple[int, torch.dtype, torch.device], List[Tuple[torch.Tensor, int]]] = {}
        self.allocated = 0  # buffers made, for tests and benchmarks
        self.reused = 0

    def empty(self, size: Sequence[int], dtype: torch.dtype, device: torch.device,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """Like ``torch.empty(size, dtype=..., device=..., memory_format=...)`` (contiguous or
        ``channels_last_3d``)."""
        size = tuple(int(s) for s in size)
        numel = math.prod(size)
        flat = self._flat(numel, dtype, torch.device(device))
        if memory_format == torch.channels_last_3d:
            n, c, d, h, w = size
            return flat.view(n, d, h, w, c).permute(0, 4, 1, 2, 3)
        if memory_format != torch.contiguous_format:
            raise ValueError(f"memory format {memory_format} is not pooled")
        return flat.view(size)

    def _flat(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        entries = self._buffers.setdefault((numel, dtype, device), [])
        for flat, idle in entries:
            if _use_count(flat.untyped_storage()._cdata) == idle:
                self.reused += 1
                return flat
        # no free buffer of this size: free ones of other sizes go back to malloc first, so the pool never holds
        # idle memory while new memory is taken (the peak stays what it is without the pool)
        for others in self._buffers.values():
            others[:] = [e for e in others if _use_count(e[0].untyped_storage()._cdata) != e[1]]
        flat = torch.empty(numel, dtype=dtype, device=device)
        # the count with only the pool's reference (and the transient storage object the query makes)
        entries.append((flat, _use_count(flat.untyped_storage()._cdata)))
        self.allocated += 1
        return flat


_ACTIVE: ContextVar[Optional[BufferPool]] = ContextVar("scanssc_buffer_pool", default=None)


@contextmanager
def pooled() -> Iterator[Optional[BufferPool]]:
    """Large ``empty`` requests inside the block reuse each other's buffers (this thread / context only); the
    pool is dropped at the end, buffers still in use live on with their tensors. Inside another such block it
    is that block's pool."""
    if _use_count is None or _ACTIVE.get() is not None:
        yield _ACTIVE.get()
        return
    token = _ACTIVE.set(BufferPool())
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def wanted(x: torch.Tensor, training: bool) -> bool:
    """Whether a forward on x should run inside ``pooled()``: CPU inference on the fast paths (not under
    ``fastpath.reference_ops()``, gradients or torch.compile, whose traced graphs allocate for themselves)."""
    return fastpath.on_cpu(x) and fastpath.enabled() and not (training or torch.is_grad_enabled() or
                                                                  torch.compiler.is_compiling())


def active() -> bool:
    """Whether a pool is active here (inside ``pooled()`` with a torch that has the storage use count)."""
    return _ACTIVE.get() is not None


def empty(size: Sequence[int], dtype: torch.dtype, device: torch.device,
          memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``torch.empty`` of that size, from the active pool where there is one and the block is large."""
    pool = _ACTIVE.get()
    if pool is None or math.prod(size) * dtype.itemsize < MIN_BYTES:
        return torch.empty(tuple(size), dtype=dtype, device=device, memory_format=memory_format)
    return pool.empty(size, dtype, device, memory_format)
