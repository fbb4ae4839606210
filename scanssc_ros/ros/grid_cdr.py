"""``SemanticVoxelGrid`` serialized with its payload spliced in, for ``Publisher.publish(bytes)``.

rclpy copies a message's uint8[] fields three times on the way out (numpy bytes -> array('B') -> the C message
-> CDR): for the dense 256x256x32 grid with confidence that is 12 MB of copies a frame, the largest single cost
of the node's output encoding. Here rclpy serializes the message with a short sentinel in each payload field, and
the sentinel is replaced by the payload and its sequence length patched: one copy. CDR puts a sequence's
elements straight after its 4-byte length (uint8 unaligned, uint32 at a multiple of 4 that the length already
gives), so the fields after it keep their alignment when the sentinel has the payload's length modulo 8.
:func:`grid_cdr_self_check` deserializes results and compares them with the object-built message before the
node trusts the splice (the marker splice in ``marker_cdr`` works the same way).
"""
from __future__ import annotations

import struct
from typing import Any, List, Optional, Tuple

import numpy as np
from rclpy.serialization import serialize_message

from scanssc_ros.geometry import GridSpec
from scanssc_ros.grid_codec import DENSE, ENCODINGS, encode_grid
from scanssc_ros.labels import LabelSet
from scanssc_ros.ros.grid_message import checked_labels, fill_grid_header
from scanssc_ros.ros.marker_cdr import cdr_byte_order
from scanssc_ros.ros.voxel_encode import confidence_u8

_SEED = {"indices": 11, "labels": 12, "confidence": 13}


def _sentinel(field: str, count: int, itemsize: int) -> np.ndarray:
    """``count`` pseudo-random elements no real payload of this size is likely to start with, per field."""
    rng = np.random.default_rng(_SEED[field])
    return rng.integers(1, 250, count * itemsize, dtype=np.uint8).view("u1" if itemsize == 1 else "<u4")


def grid_message_cdr(labels: np.ndarray, grid: GridSpec, header: Any, label_set: LabelSet,
                     T_out_grid: Optional[np.ndarray] = None, confidence: Optional[np.ndarray] = None,
                     colors: Optional[list] = None, encoding: str = DENSE) -> bytes:
    """The CDR bytes of ``grid_message.to_grid_message`` with the same arguments."""
    from scanssc_ros.msg import SemanticVoxelGrid

    payload = encode_grid(checked_labels(labels, grid), None if confidence is None else confidence_u8(confidence),
                          encoding)
    msg = SemanticVoxelGrid()
    fill_grid_header(msg, grid, header, label_set, T_out_grid, colors, payload.encoding)
    parts: List[Tuple[str, Any, np.ndarray, int]] = []  # field, payload (bytes-like), sentinel, element size
    for field, data, size in (("indices", payload.indices, 4), ("labels", payload.labels, 1),
                              ("confidence", payload.confidence, 1)):
        n = len(data)
        if n:
            # same length modulo 8 bytes (4-byte elements: modulo 2), at least 16 bytes so it is unambiguous
            sentinel = _sentinel(field, (16 if size == 1 else 8) + n % (8 // size), size)
            setattr(msg, field, sentinel.tolist())
            parts.append((field, data, sentinel, size))
    raw = serialize_message(msg)
    if not parts:
        return raw
    order = cdr_byte_order(raw)
    pieces, cursor = [], 0
    for field, data, values, size in parts:
        count = values.size
        sentinel = values.astype(order + ("u1" if size == 1 else "u4")).tobytes()
        pos = raw.find(sentinel, cursor)
        if pos < 0 or raw.find(sentinel, pos + 1) >= 0:
            raise ValueError(f"{field}: sentinel not found exactly once")
        if raw[pos - 4:pos] != struct.pack(order + "I", count):
            raise ValueError(f"{field}: sequence length not found before the sentinel")
        if size == 1:
            body = data
        else:
            body = np.ascontiguousarray(data, dtype=order + "u4")
        pieces += [raw[cursor:pos - 4], struct.pack(order + "I", len(data)), body]
        cursor = pos + count * size
    pieces.append(raw[cursor:])
    return b"".join(pieces)


def grid_cdr_self_check() -> bool:
    """True when spliced bytes deserialize to the message ``to_grid_message`` builds, for every encoding, with
    and without confidence, and frame ids of every length modulo 8 (this distro, this RMW)."""
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Header

    def through_rclpy(msg: Any) -> Any:  # float32 fields compare equal only after the same rounding
        return deserialize_message(serialize_message(msg), SemanticVoxelGrid)

    from scanssc_ros.labels import SEMANTIC_KITTI
    from scanssc_ros.msg import SemanticVoxelGrid
    from scanssc_ros.ros.grid_message import to_grid_message

    grid = GridSpec((0.0, -1.0, -0.5), 0.25, (5, 3, 7))  # 105 voxels: every payload length odd
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 0, 1, 9, 255], grid.dims).astype(np.uint8)
    conf = rng.integers(0, 256, grid.dims, dtype=np.uint8)
    pose = np.eye(4)
    pose[:3, 3] = (0.5, -1.0, 2.0)
    for k, encoding in enumerate(ENCODINGS * 3):
        header = Header(frame_id="c" * k)
        header.stamp.sec, header.stamp.nanosec = 7, 9
        for c in (conf, None):
            args = (labels, grid, header, SEMANTIC_KITTI, pose, c, None, encoding)
            if deserialize_message(grid_message_cdr(*args), SemanticVoxelGrid) != through_rclpy(to_grid_message(*args)):
                return False
    return True
