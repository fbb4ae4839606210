"""Payload encodings of ``scanssc_ros/SemanticVoxelGrid`` (its ``encoding`` field) and the decoder every consumer
can use. No ROS: works on messages from rclpy, from ``rosbags`` and on plain arrays.

- ``dense``: every voxel's label (and confidence), x-major C order; 2 MB of labels for 256x256x32.
- ``sparse``: ``indices`` (uint32, ascending) of the voxels that are not EMPTY, one label (and confidence) byte
  each; the rest is EMPTY. The confidence of EMPTY voxels is not sent (decoded as 0).
- ``zlib``: the dense bytes deflated (level 1: predictions are long runs of a few classes, so the fastest level
  already takes them to a few percent, at a fraction of the time of higher levels).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

DENSE, SPARSE, ZLIB = "dense", "sparse", "zlib"
ENCODINGS = (DENSE, SPARSE, ZLIB)
ZLIB_LEVEL = 1


class GridDecodeError(ValueError):
    """A payload that does not match its declared encoding and size."""


@dataclass
class GridPayload:
    encoding: str
    labels: Any  # bytes-like (dense: a view of the caller's array, copied once into the message)
    confidence: Any  # bytes-like; empty when not sent
    indices: np.ndarray  # uint32; empty unless sparse


def encode_grid(labels: np.ndarray, confidence: Optional[np.ndarray], encoding: str = DENSE) -> GridPayload:
    """(X, Y, Z) uint8 labels (+ uint8 confidence or None) -> the message payload in ``encoding``."""
    labels = np.ascontiguousarray(labels, np.uint8)
    conf = None if confidence is None else np.ascontiguousarray(confidence, np.uint8)
    if conf is not None and conf.shape != labels.shape:
        raise ValueError(f"confidence shape {conf.shape} differs from labels {labels.shape}")
    empty = np.zeros(0, np.uint32)
    if encoding == DENSE:
        return GridPayload(DENSE, _view(labels), b"" if conf is None else _view(conf), empty)
    if encoding == ZLIB:
        return GridPayload(ZLIB, zlib.compress(labels.tobytes(), ZLIB_LEVEL),
                           b"" if conf is None else zlib.compress(conf.tobytes(), ZLIB_LEVEL), empty)
    if encoding == SPARSE:
        flat = labels.reshape(-1)
        idx = np.flatnonzero(flat)
        if idx.size and idx[-1] > np.iinfo(np.uint32).max:
            raise ValueError("sparse encoding indexes voxels with uint32; this grid is larger")
        return GridPayload(SPARSE, flat[idx].tobytes(), b"" if conf is None else conf.reshape(-1)[idx].tobytes(),
                           idx.astype(np.uint32))
    raise ValueError(f"unknown grid encoding {encoding!r}; one of {', '.join(ENCODINGS)}")


def _view(a: np.ndarray) -> memoryview:
    # no tobytes(): the message's array('B') takes its own copy, and 2 MB copies are the dense path's whole cost
    return memoryview(a.reshape(-1)).cast("B")


def decode_payload(encoding: str, dims: Sequence[int], labels: Any, confidence: Any = b"",
                   indices: Any = ()) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Payload fields -> ((X, Y, Z) uint8 labels, (X, Y, Z) uint8 confidence or None). ``labels``/``confidence``
    may be bytes, array('B') or numpy arrays (as rclpy and rosbags give them)."""
    dims = tuple(int(d) for d in dims)
    n = int(np.prod(dims))
    enc = encoding or DENSE  # messages written before the field existed are dense
    lab_b, conf_b = _as_bytes(labels), _as_bytes(confidence)
    if enc == DENSE:
        lab, conf = _dense(lab_b, n, "labels"), (_dense(conf_b, n, "confidence") if conf_b else None)
    elif enc == ZLIB:
        lab = _dense(_inflate(lab_b, n, "labels"), n, "labels")
        conf = _dense(_inflate(conf_b, n, "confidence"), n, "confidence") if conf_b else None
    elif enc == SPARSE:
        idx = np.asarray(indices, np.uint32).astype(np.int64).reshape(-1)
        if len(lab_b) != idx.size or (conf_b and len(conf_b) != idx.size):
            raise GridDecodeError(f"sparse grid: {idx.size} indices but {len(lab_b)} labels and "
                                  f"{len(conf_b)} confidences")
        if idx.size and (idx[-1] >= n or np.any(np.diff(idx) <= 0)):  # ascending: the last is the largest
            raise GridDecodeError(f"sparse grid: indices must be ascending and inside [0, {n})")
        lab = np.zeros(n, np.uint8)
        lab[idx] = np.frombuffer(lab_b, np.uint8)
        conf = None
        if conf_b:
            conf = np.zeros(n, np.uint8)
            conf[idx] = np.frombuffer(conf_b, np.uint8)
    else:
        raise GridDecodeError(f"unknown grid encoding {enc!r}; this decoder reads {', '.join(ENCODINGS)}")
    return lab.reshape(dims), None if conf is None else conf.reshape(dims)


def decode_grid(msg: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A SemanticVoxelGrid (rclpy or rosbags) -> (labels, confidence or None), both (size_x, size_y, size_z)."""
    return decode_payload(getattr(msg, "encoding", ""), (msg.size_x, msg.size_y, msg.size_z), msg.labels,
                          msg.confidence, getattr(msg, "indices", ()))


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).tobytes()
    return bytes(data)


def _dense(data: bytes, n: int, what: str) -> np.ndarray:
    if len(data) != n:
        raise GridDecodeError(f"{what}: {len(data)} bytes for a grid of {n} voxels")
    return np.frombuffer(data, np.uint8).copy()


def _inflate(data: bytes, n: int, what: str) -> bytes:
    try:
        d = zlib.decompressobj()
        out = d.decompress(data, n + 1)  # bounded: a corrupt stream cannot inflate past the grid
    except zlib.error as exc:
        raise GridDecodeError(f"{what}: not a zlib stream ({exc})") from None
    if not d.eof:
        raise GridDecodeError(f"{what}: zlib stream truncated or larger than the grid of {n} voxels")
    return out
