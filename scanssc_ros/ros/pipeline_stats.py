"""Counters and rates of the node's pipeline, shared by the callbacks, the worker and the diagnostics timer."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Deque, Dict

from scanssc_ros.ros.frame_sync import DropCounter

RATE_WINDOW = 5.0  # seconds of events behind the reported input/output rates


class PipelineStats:
    def __init__(self, drops: DropCounter, clock=time.monotonic) -> None:
        self.drops = drops
        self._clock = clock
        self._lock = threading.Lock()
        self._in: Deque[float] = deque()
        self._out: Deque[float] = deque()
        self.frames_in = 0
        self.frames_out = 0
        self.latency_ms: Dict[str, float] = {}  # the last published frame's stage times
        self.last_start = float("-inf")  # monotonic time the worker started its last frame (rate limit)
        self._reported_drops = 0

    def _push(self, q: Deque[float], now: float) -> None:
        q.append(now)
        while q and q[0] < now - RATE_WINDOW:
            q.popleft()

    def frame_in(self) -> None:
        with self._lock:
            self.frames_in += 1
            self._push(self._in, self._clock())

    def frame_out(self, latency_ms: Dict[str, float]) -> None:
        with self._lock:
            self.frames_out += 1
            self.latency_ms = dict(latency_ms)
            self._push(self._out, self._clock())

    @staticmethod
    def _rate(q: Deque[float], now: float) -> float:
        recent = [t for t in q if t >= now - RATE_WINDOW]
        if len(recent) < 2:
            return 0.0 if not recent else 1.0 / RATE_WINDOW
        return (len(recent) - 1) / max(now - recent[0], 1e-6)

    def snapshot(self) -> Dict[str, Any]:
        drops = self.drops.snapshot()
        total = sum(drops.values())
        with self._lock:
            now = self._clock()
            new = total - self._reported_drops
            self._reported_drops = total
            return {
                "frames_in": self.frames_in, "frames_out": self.frames_out, "frames_dropped": total,
                "frames_dropped_new": new, "drops": drops, "latency_ms": dict(self.latency_ms),
                "input_rate_hz": self._rate(self._in, now), "output_rate_hz": self._rate(self._out, now),
            }
