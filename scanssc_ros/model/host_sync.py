"""Where a forward pass would make the host wait for the GPU, found on any device.

A CUDA forward that never waits for the GPU keeps the CPU launching kernels ahead of it, and is the condition
for capturing it as a CUDA graph. ``torch.cuda.set_sync_debug_mode`` reports the waits on a GPU; ``SyncProbe``
finds the same operations on the CPU: values read by the host (``item``, ``bool``, ``int``), results whose size
depends on values (``nonzero``, boolean-mask indexing, ``unique``, ``repeat_interleave`` without its output size)
and copies to host memory (``Tensor.cpu`` / ``numpy`` / ``tolist``). ``cuda_paths()`` makes the model choose the
branches it takes on CUDA (no CPU fast paths, the CUDA inference ones) while it runs on the CPU, so a CPU-only
test sees the CUDA forward's synchronisations.
"""
from __future__ import annotations

import collections
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Counter, Iterator, Tuple
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import fastpath

# aten ops whose CUDA kernels return only after the GPU has caught up (their result's size or value is read)
_VALUE_READS = {"item", "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_numpy", "argwhere",
                "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
                "bincount", "histc",
                # the non-``_ex`` linear algebra checks its status on the host (singular matrix -> error)
                "linalg_inv", "inverse", "linalg_solve", "linalg_cholesky", "linalg_eigh", "linalg_lstsq"}
_HOST_COPIES = ("cpu", "numpy", "tolist")
_PACKAGE = str(Path(__file__).resolve().parents[1])


def _is_sync(func: Any, args: tuple, kwargs: dict) -> bool:
    name, overload = func._overloadpacket.__name__, func._overloadname
    if name in _VALUE_READS:
        return True
    if name == "repeat_interleave":  # a count per element: the output size is their sum, unless given
        return overload != "self_int" and kwargs.get("output_size") is None
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if name == "where" and len(args) == 1:  # torch.where(condition): nonzero
        return True
    return False


def _caller() -> str:
    """``file:line`` of the innermost frame in this package (the model code that made the call)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("host_sync.py"):
            return f"{Path(frame.filename).relative_to(_PACKAGE)}:{frame.lineno}"
    return "?"


class SyncProbe(TorchDispatchMode):
    """Counts the host synchronisations made inside the ``with`` block by call site (``syncs``: Counter of
    (op, 'model/file.py:line')). Calls from outside this package are counted too, under '?'."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[Tuple[str, str]] = collections.Counter()
        self._patches: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.syncs[(func._overloadpacket.__name__, _caller())] += 1
        return func(*args, **kwargs)

    def __enter__(self) -> SyncProbe:
        for name in _HOST_COPIES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *a, _original=original, _name=name, **k):
                self.syncs[(_name, _caller())] += 1
                return _original(tensor, *a, **k)
            patch = mock.patch.object(torch.Tensor, name, counted)
            patch.start()
            self._patches.append(patch)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        for patch in reversed(self._patches):
            patch.stop()
        self._patches.clear()
        return super().__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.syncs.values())


def forward_syncs(model: torch.nn.Module, inputs: Any) -> SyncProbe:
    """The host synchronisations of ``model(inputs)`` in inference mode, counted on the second of two calls: the
    first builds whatever the model keeps per camera, and a stream's steady state is what matters."""
    with torch.inference_mode():
        model(inputs)
        with SyncProbe() as probe:
            model(inputs)
    return probe


@contextmanager
def cuda_paths() -> Iterator[None]:
    """Inside the block the model takes the branches of a CUDA device on whatever device it runs: the CPU fast
    paths and host-side caches are off, the CUDA inference paths on (for inference without gradients, as on a
    GPU). Meant for tests and benchmarks; process-wide while it lasts."""
    def cuda_inference(*tensors: torch.Tensor) -> bool:
        return fastpath.enabled() and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))

    with mock.patch.object(fastpath, "cpu_fp32_inference", lambda *t: False), \
            mock.patch.object(fastpath, "on_cpu", lambda *t: False), \
            mock.patch.object(fastpath, "cuda_inference", cuda_inference):
        yield
