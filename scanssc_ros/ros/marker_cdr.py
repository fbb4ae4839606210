"""The voxel MarkerArray serialized straight from numpy, for ``Publisher.publish(bytes)``.

rclpy needs one geometry_msgs/Point object per cube and converts each back to C when it serializes: about 40 ms
for 60k voxels even with cached Points (bench/bench_encode.py). Here the message is serialized by rclpy with a
single sentinel point per CUBE_LIST, and each sentinel is replaced by the float64 voxel centres and its sequence
length patched. That is exact because of how CDR aligns: the 4-byte length is followed by padding to 8 and then
24 bytes per point, so going from 1 to n points inserts a multiple of 8 bytes and no later field's alignment
changes. The layout is taken from the installed message definition at run time (whatever fields the distro's
Marker has), and :func:`cdr_self_check` deserializes a result and compares it with the object-built message before
the node trusts it. (Bytes are not compared: the serializer leaves alignment padding uninitialised.)
"""
from __future__ import annotations

import struct
from typing import Any, Dict, Iterable, Optional, Sequence, Set, Tuple

import numpy as np
from geometry_msgs.msg import Point
from rclpy.serialization import serialize_message
from visualization_msgs.msg import Marker, MarkerArray

from scanssc_ros.geometry import GridSpec, voxel_center_of_flat
from scanssc_ros.ros.voxel_encode import marker_skeleton

_SENTINEL_XY = (1.2345678901234567e307, -9.876543210987654e306)


def _sentinel(k: int) -> Point:
    return Point(x=_SENTINEL_XY[0], y=_SENTINEL_XY[1], z=float(k) + 0.25)


def cdr_byte_order(raw: bytes) -> str:
    # CDR encapsulation header: 0x00 0x00 = big endian, 0x00 0x01 = little endian (plain CDR / XCDR1)
    if raw[0] != 0 or raw[1] not in (0, 1):
        raise ValueError(f"unexpected CDR encapsulation {raw[:4]!r}")
    return "<" if raw[1] == 1 else ">"


def splice_points(markers: Sequence[Marker], points: Sequence[np.ndarray]) -> bytes:
    """Serialize ``MarkerArray(markers)`` with ``points[k]`` ((n_k, 3) float64, n_k >= 1) as the points of the k-th
    ADD marker (in order). The markers' own ``points`` are replaced by sentinels (callers pass skeletons)."""
    adds = [m for m in markers if m.action == Marker.ADD]
    if len(adds) != len(points):
        raise ValueError(f"{len(adds)} ADD markers but {len(points)} point arrays")
    for k, (m, p) in enumerate(zip(adds, points)):
        if len(p) == 0:
            raise ValueError("a CUBE_LIST needs at least one point")
        m.points = [_sentinel(k)]
    raw = serialize_message(MarkerArray(markers=list(markers)))
    order = cdr_byte_order(raw)
    pieces, cursor = [], 0
    for k, p in enumerate(points):
        pattern = struct.pack(order + "ddd", _SENTINEL_XY[0], _SENTINEL_XY[1], float(k) + 0.25)
        pos = raw.find(pattern, cursor)
        if pos < 0 or raw.find(pattern, pos + 1) >= 0:
            raise ValueError("sentinel point not found exactly once")
        one = struct.pack(order + "I", 1)
        if raw[pos - 4:pos] == one:
            length_at = pos - 4
        elif raw[pos - 8:pos - 4] == one and raw[pos - 4:pos] == b"\0\0\0\0":
            length_at = pos - 8  # 4 bytes of padding to the 8-byte alignment of float64
        else:
            raise ValueError("points sequence length not found before the sentinel")
        pieces += [raw[cursor:length_at], struct.pack(order + "I", len(p)), raw[length_at + 4:pos],
                   memoryview(np.ascontiguousarray(p, dtype=order + "f8")).cast("B")]  # join copies it once
        cursor = pos + 24
    pieces.append(raw[cursor:])
    return b"".join(pieces)


def marker_array_cdr(indices: np.ndarray, labels: np.ndarray, grid: GridSpec, header: Any,
                     class_names: Sequence[str], colors: np.ndarray, prev_namespaces: Iterable[str] = (),
                     lifetime: float = 0.0, pose: Optional[np.ndarray] = None, clear_first: bool = False,
                     reuse: Optional[Dict[tuple, Marker]] = None) -> Tuple[bytes, Set[str]]:
    """:func:`voxel_encode.to_marker_array`'s message as serialized CDR bytes, and the namespaces present.
    ``reuse``: see :func:`voxel_encode.marker_skeleton` (the bytes are all that is kept of the markers)."""
    markers, groups, present = marker_skeleton(indices, labels, grid, header, class_names, colors, prev_namespaces,
                                               lifetime, pose, clear_first, reuse)
    if not groups:
        return splice_points(markers, []), present
    # one centre computation for all classes, then split (per class it was 19 small numpy pipelines); the groups
    # are consecutive slices of one array, so the concatenation is a copy of it
    centres = voxel_center_of_flat(np.concatenate(groups), grid)
    return splice_points(markers, np.split(centres, np.cumsum([g.size for g in groups])[:-1])), present


def cdr_self_check(grid: GridSpec) -> bool:
    """True when spliced bytes deserialize to the MarkerArray the object path builds (this distro, this RMW)."""
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Header

    from scanssc_ros.ros.voxel_encode import PointCache, to_marker_array

    labels = np.zeros(grid.dims, np.uint8)
    labels.reshape(-1)[[0, 5, 7, grid.num_voxels - 1]] = [1, 2, 2, 3]
    idx = np.flatnonzero(labels)
    names, colors = ["empty", "a", "b", "c"], np.full((256, 3), 100, np.uint8)
    pose = np.eye(4)
    pose[:3, 3] = (0.5, -1.0, 2.0)
    for frame, ns_prev in (("cam", ()), ("camera_color_left", ("gone",))):
        header = Header(frame_id=frame)
        header.stamp.sec, header.stamp.nanosec = 7, 9
        fast, _ = marker_array_cdr(idx, labels, grid, header, names, colors, ns_prev, 0.5, pose)
        ref, _ = to_marker_array(idx, labels, grid, header, names, colors, ns_prev, 0.5, pose,
                                 point_cache=PointCache(grid))
        if deserialize_message(fast, MarkerArray) != ref:
            return False
    return True
