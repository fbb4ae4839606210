"""torchrun / DDP plumbing: process-group set-up from the environment, reductions, and data sharding.

One process per device. ``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); a plain
``python`` start has none of them and runs as a world of one without a process group, so every helper here is a
no-op there. Backend: NCCL when the process drives a CUDA device, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto") -> DistContext:
    """Read RANK / WORLD_SIZE / LOCAL_RANK, pick the device and, for a world above one, join the process group.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. Under torchrun with CUDA each
    process takes ``cuda:LOCAL_RANK``; asking for a specific index there is refused, because two processes would
    share one GPU. CUDA requested but unavailable is an error, never a silent CPU fallback.
    """
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        if world > 1:
            if dev.index is not None:
                raise ValueError("under torchrun give --device cuda (each process uses cuda:LOCAL_RANK)")
            dev = torch.device("cuda", local)
        elif dev.index is None:
            dev = torch.device("cuda", 0)
        if dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"{dev} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks (returns a new tensor on the input's device; NCCL needs it on the process's GPU)."""
    if not ctx.distributed:
        return t
    buf = t.detach().to(ctx.device).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_reduce_array(a: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Element-wise sum over ranks of an integer/float numpy array (e.g. a confusion matrix)."""
    if not ctx.distributed:
        return a
    return all_reduce_sum(torch.from_numpy(np.ascontiguousarray(a)), ctx).numpy()


def all_gather_object(obj: Any, ctx: DistContext) -> List[Any]:
    if not ctx.distributed:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (same shuffling: ``randperm`` seeded by seed + epoch, rank r takes every
    world-th index from r) that can skip the first ``skip`` indices of its shard, so a run resumed in the middle
    of an epoch sees exactly the samples an uninterrupted run would have seen next. With one replica the order
    is the same permutation, so a single process with gradient accumulation visits the samples of a multi-process
    run in the same steps."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def set_skip(self, skip: int) -> None:
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"cannot skip {skip} of {self.num_samples} samples")
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def shard_indices(n: int, ctx: DistContext, limit: Optional[int] = None) -> List[int]:
    """This rank's share of ``range(n)`` for evaluation: no padding, so no sample is counted twice."""
    return list(range(ctx.rank, n if limit is None else min(n, limit), ctx.world_size))
