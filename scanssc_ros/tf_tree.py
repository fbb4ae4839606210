"""A small TF buffer (no ROS needed): static and time-stamped transforms between named frames, looked up along the
frame tree at a given time with interpolation, as tf2's ``lookup_transform`` does.

Why our own: ``tf2_ros`` cannot be installed from PyPI, and the node needs only "pose of frame A in frame B at the
image stamp". Conventions follow tf2: a transform stored for (parent, child) maps points given in ``child`` into
``parent``; :meth:`TfTree.lookup` (target, source, t) returns the 4x4 that maps ``source`` points into ``target``.
Dynamic transforms are interpolated linearly in translation and spherically in rotation between the two samples
around ``t``; a time outside the stored samples raises :class:`TfError` (no extrapolation), except that a time
within ``tolerance_ns`` of the newest / oldest sample uses that sample.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np

from scanssc_ros.geometry import quaternion_to_rotation, rotation_to_quaternion


class TfError(LookupError):
    """No transform between two frames at the requested time (unknown frame, no path, or too old / too new)."""


def make_transform(translation, quaternion_xyzw) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(quaternion_xyzw)
    T[:3, 3] = np.asarray(translation, np.float64)
    return T


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    q0, q1 = q0 / np.linalg.norm(q0), q1 / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)


def interpolate(T0: np.ndarray, T1: np.ndarray, a: float) -> np.ndarray:
    q = _slerp(np.asarray(rotation_to_quaternion(T0)), np.asarray(rotation_to_quaternion(T1)), a)
    return make_transform((1 - a) * T0[:3, 3] + a * T1[:3, 3], q)


@dataclass
class _Edge:
    static: Optional[np.ndarray] = None
    stamps: List[int] = field(default_factory=list)  # sorted, ns
    samples: Deque[Tuple[int, np.ndarray]] = field(default_factory=deque)


class TfTree:
    def __init__(self, cache_ns: int = 10_000_000_000, tolerance_ns: int = 50_000_000) -> None:
        self.cache_ns = cache_ns
        self.tolerance_ns = tolerance_ns
        self._edges: Dict[Tuple[str, str], _Edge] = {}  # (parent, child)
        self._parent: Dict[str, str] = {}  # child -> parent: TF is a tree, each frame has one parent

    def set_transform(self, parent: str, child: str, T: np.ndarray, stamp_ns: int = 0, static: bool = False) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform frames {parent!r} -> {child!r}")
        T = np.asarray(T, np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"transform {parent!r} -> {child!r} is not a finite 4x4 matrix")
        old = self._parent.get(child)
        if old is not None and old != parent:  # tf2 re-parents too; the old edge no longer exists
            self._edges.pop((old, child), None)
        self._parent[child] = parent
        edge = self._edges.setdefault((parent, child), _Edge())
        if static:
            edge.static = T
            return
        i = bisect.bisect_left(edge.stamps, stamp_ns)
        if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
            edge.samples[i] = (stamp_ns, T)
        else:
            edge.stamps.insert(i, stamp_ns)
            edge.samples.insert(i, (stamp_ns, T))
        while edge.stamps and edge.stamps[-1] - edge.stamps[0] > self.cache_ns:
            edge.stamps.pop(0)
            edge.samples.popleft()

    def frames(self) -> List[str]:
        return sorted(set(self._parent) | set(self._parent.values()))

    def _edge_at(self, parent: str, child: str, stamp_ns: int) -> np.ndarray:
        edge = self._edges[(parent, child)]
        if edge.static is not None:
            return edge.static
        st = edge.stamps
        if not st:
            raise TfError(f"no transform {parent} -> {child} received yet")
        if stamp_ns <= st[0]:
            if st[0] - stamp_ns <= self.tolerance_ns:
                return edge.samples[0][1]
            raise TfError(f"{parent} -> {child} at {stamp_ns * 1e-9:.3f} s is older than the oldest stored transform "
                          f"({st[0] * 1e-9:.3f} s)")
        if stamp_ns >= st[-1]:
            if stamp_ns - st[-1] <= self.tolerance_ns:
                return edge.samples[-1][1]
            raise TfError(f"{parent} -> {child} at {stamp_ns * 1e-9:.3f} s is newer than the newest transform "
                          f"({st[-1] * 1e-9:.3f} s): would need extrapolation")
        i = bisect.bisect_right(st, stamp_ns)
        (t0, T0), (t1, T1) = edge.samples[i - 1], edge.samples[i]
        return interpolate(T0, T1, (stamp_ns - t0) / (t1 - t0))

    def _chain(self, frame: str) -> List[str]:
        out, seen = [frame], {frame}
        while out[-1] in self._parent:
            nxt = self._parent[out[-1]]
            if nxt in seen:
                raise TfError(f"TF loop through {nxt}")
            out.append(nxt)
            seen.add(nxt)
        return out

    def _to_root(self, chain: List[str], upto: str, stamp_ns: int) -> np.ndarray:
        """Transform from chain[0] to ``upto`` (an ancestor in the chain)."""
        T = np.eye(4)
        for child, parent in zip(chain, chain[1:]):
            if child == upto:
                break
            T = self._edge_at(parent, child, stamp_ns) @ T
        return T

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """4x4 mapping points in ``source`` into ``target`` at ``stamp_ns``. Raises TfError."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        known = set(self.frames())
        for name in (target, source):
            if name not in known:
                raise TfError(f"frame {name!r} is not in the TF tree (known: {', '.join(sorted(known)) or 'none'})")
        up_s, up_t = self._chain(source), self._chain(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            raise TfError(f"frames {source!r} and {target!r} are not connected (roots {up_s[-1]!r}, {up_t[-1]!r})")
        return np.linalg.inv(self._to_root(up_t, common, stamp_ns)) @ self._to_root(up_s, common, stamp_ns)
