"""Per-stage wall-clock timing shared by the model, the predictor and the benchmark."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import torch


@contextmanager
def stage(timings: Optional[Dict[str, float]], name: str, device: Optional[torch.device] = None) -> Iterator[None]:
    """Add the milliseconds spent in the block to ``timings[name]`` (no-op when ``timings`` is None).

    CUDA work is asynchronous, so the device is synchronised on both ends; that costs a little throughput,
    which is why timing is opt-in.
    """
    if timings is None:
        yield
        return
    sync = device is not None and device.type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if sync:
            torch.cuda.synchronize(device)
        timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0) * 1000.0
