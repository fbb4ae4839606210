"""Semantic voxel grid -> standard ROS messages (PointCloud2, per-class CUBE_LIST MarkerArray, diagnostics).

Everything per voxel is vectorised with numpy; only the geometry_msgs/Point objects a Marker requires are Python
objects, and those are cached per voxel (see :class:`PointCache`) because a voxel's centre in the grid frame never
changes: the grid -> output-frame transform goes into ``Marker.pose``.

Label conventions: 0 = empty, 255 = unknown; both are never drawn. Confidence is uint8 (probability * 255), the unit
that goes on the wire; a float grid in [0, 1] is converted with round(p * 255).
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose
from sensor_msgs.msg import PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from scanssc_ros.geometry import (
    SEMANTIC_KITTI_GRID,
    GridSpec,
    rotation_to_quaternion,
    voxel_center_of_flat,
    voxel_centers_in_frame,
)
from scanssc_ros.voxels import flat_nonzero, occupied_mask, surface_mask

# ------------------------------------------------------------------------------------------------ selection


def confidence_u8(confidence: np.ndarray) -> np.ndarray:
    conf = np.asarray(confidence)
    if conf.dtype == np.uint8:
        return conf
    if conf.dtype.kind != "f":
        raise ValueError(f"confidence must be uint8 or float in [0, 1], got {conf.dtype}")
    return np.rint(np.clip(conf, 0.0, 1.0) * 255.0).astype(np.uint8)


def select_voxels(labels: np.ndarray, confidence: Optional[np.ndarray] = None, conf_threshold: float = 0.0,
                  class_filter: Optional[Iterable[int]] = None, surface_only: bool = False,
                  max_voxels: Optional[int] = None, grid: GridSpec = SEMANTIC_KITTI_GRID,
                  sensor_position: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Flat (C-order) indices of the voxels to publish, ascending.

    - only occupied voxels (label not 0 and not 255);
    - ``confidence`` (uint8, or float in [0, 1]) must reach ``conf_threshold`` (a probability in [0, 1]);
    - ``class_filter``: keep only these class ids;
    - ``surface_only``: see :func:`surface_mask`; computed on the whole prediction *before* the confidence and
      class filters, so filtering never turns hidden interior voxels into visible ones;
    - ``max_voxels``: keep the ``max_voxels`` voxels whose centres are nearest to ``sensor_position`` (grid frame;
      the LiDAR origin for SemanticKITTI), ties broken by the lower flat index. Nearest-first is deterministic and
      stable from frame to frame (far voxels drop out as a range limit would), where a stride would flicker.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(grid.dims):
        raise ValueError(f"labels shape {labels.shape} does not match grid dims {grid.dims}")
    keep = surface_mask(labels) if surface_only else occupied_mask(labels)
    if class_filter is not None:
        ids = np.asarray(list(class_filter), np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(f"class_filter ids must be in [0, 255], got {sorted(set(ids.tolist()))}")
        wanted = np.zeros(256, bool)
        wanted[ids] = True
        keep &= wanted[labels]
    if confidence is not None and conf_threshold > 0:
        if np.shape(confidence) != labels.shape:
            raise ValueError(f"confidence shape {np.shape(confidence)} != labels shape {labels.shape}")
        keep &= confidence_u8(confidence) >= int(round(float(conf_threshold) * 255))
    flat = flat_nonzero(keep)
    if max_voxels is not None and flat.size > max_voxels:
        flat = _nearest(flat, int(max_voxels), grid, sensor_position)
    return flat


def _nearest(flat: np.ndarray, k: int, grid: GridSpec, sensor: Sequence[float]) -> np.ndarray:
    if k <= 0:
        return flat[:0]
    d2 = np.sum((voxel_center_of_flat(flat, grid) - np.asarray(sensor, np.float64)) ** 2, axis=1)
    cutoff = np.partition(d2, k - 1)[k - 1]
    inside = d2 < cutoff
    ties = np.flatnonzero(d2 == cutoff)[: k - int(inside.sum())]  # flat is ascending: lowest indices first
    inside[ties] = True
    return flat[inside]


# ------------------------------------------------------------------------------------------------- poses


@functools.lru_cache(maxsize=64)
def _quaternion_of(rotation_bytes: bytes) -> Tuple[float, float, float, float]:
    # three outputs per frame share one pose, usually the same every frame: the SVD in rotation_to_quaternion
    # cost 0.3 ms each time
    return rotation_to_quaternion(np.frombuffer(rotation_bytes, np.float64).reshape(3, 3))


def pose_from_matrix(T: np.ndarray) -> Pose:
    """4x4 rigid transform -> geometry_msgs/Pose."""
    T = np.asarray(T, np.float64)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    q = _quaternion_of(np.ascontiguousarray(T[:3, :3]).tobytes())
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = q
    return pose


def _check_indices(indices: np.ndarray, labels: np.ndarray, grid: GridSpec) -> np.ndarray:
    idx = np.asarray(indices, np.int64).reshape(-1)
    if labels.shape != tuple(grid.dims):
        raise ValueError(f"labels shape {labels.shape} does not match grid dims {grid.dims}")
    if idx.size and (idx.min() < 0 or idx.max() >= grid.num_voxels):
        raise ValueError(f"voxel indices outside [0, {grid.num_voxels})")
    return idx


# ------------------------------------------------------------------------------------------------ PointCloud2

_CLOUD_FIELDS = (("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
                 ("rgb", 12, PointField.FLOAT32), ("label", 16, PointField.UINT8),
                 ("confidence", 17, PointField.UINT8))
CLOUD_POINT_STEP = 20  # 18 bytes of fields padded to 4-byte alignment


def cloud_dtype(with_confidence: bool) -> np.dtype:
    """Little-endian record layout of one cloud point; rgb is the packed 0x00RRGGBB word RViz reads as float32."""
    names = ["x", "y", "z", "rgb", "label"] + (["confidence"] if with_confidence else [])
    formats = ["<f4", "<f4", "<f4", "<u4", "u1", "u1"][: len(names)]
    offsets = [o for _, o, _ in _CLOUD_FIELDS][: len(names)]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": CLOUD_POINT_STEP})


def to_pointcloud2(indices: np.ndarray, labels: np.ndarray, grid: GridSpec, header: Any,
                   pose: Optional[np.ndarray] = None, colors: Optional[np.ndarray] = None,
                   confidence: Optional[np.ndarray] = None) -> PointCloud2:
    """Selected voxels -> PointCloud2 of voxel centres in ``header.frame_id``.

    ``pose`` (4x4) maps grid-frame points into that frame (identity when None); ``colors`` is a (256, 3) uint8
    class -> RGB table (grey when None). Fields: x, y, z (float32), rgb (packed float32), label (uint8) and, with
    ``confidence``, confidence (uint8).
    """
    labels = np.asarray(labels)
    idx = _check_indices(indices, labels, grid)
    lab = labels.reshape(-1)[idx]
    table = np.full((256, 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8)
    packed = table.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)  # (256,) 0x00RRGGBB

    # the records as five little-endian 32-bit words (x, y, z, rgb, label | confidence << 8 with zero padding):
    # whole columns are written, where the structured dtype's six field assignments cost twice as much
    words = np.empty((idx.size, CLOUD_POINT_STEP // 4), "<u4")
    voxel_centers_in_frame(idx, grid, pose, out=words.view("<f4")[:, :3])
    words[:, 3] = packed[lab]
    last = lab.astype("<u4")
    if confidence is not None:
        last |= confidence_u8(confidence).reshape(-1)[idx].astype("<u4") << 8
    words[:, 4] = last

    nfields = len(_CLOUD_FIELDS) - (confidence is None)
    fields = [PointField(name=n, offset=o, datatype=t, count=1) for n, o, t in _CLOUD_FIELDS[:nfields]]
    # bytes into the constructor: one memcpy into the message's array('B'); see bench/bench_encode.py
    return PointCloud2(header=header, height=1, width=int(idx.size), fields=fields, is_bigendian=False,
                       point_step=CLOUD_POINT_STEP, row_step=CLOUD_POINT_STEP * int(idx.size),
                       data=words.tobytes(), is_dense=True)


# ---------------------------------------------------------------------------------------------- MarkerArray


def _slot_point_factory():
    """Build Points without running the generated __init__ and property setters (about 5x faster).

    Only used when the generated class has exactly the slots we expect; anything else (another rosidl version)
    falls back to the public constructor.
    """
    if list(getattr(Point, "__slots__", ())) != ["_x", "_y", "_z", "_check_fields"]:
        return None
    check = Point()._check_fields  # follow ROS_PYTHON_CHECK_FIELDS like the constructor does
    new = Point.__new__
    set_x, set_y, set_z, set_c = Point._x.__set__, Point._y.__set__, Point._z.__set__, Point._check_fields.__set__

    def make(x: float, y: float, z: float) -> Point:
        p = new(Point)
        set_x(p, x)
        set_y(p, y)
        set_z(p, z)
        set_c(p, check)
        return p

    return make


def _ctor_point(x: float, y: float, z: float) -> Point:
    return Point(x=x, y=y, z=z)


class PointCache:
    """One geometry_msgs/Point per voxel centre of a grid, created on first use and shared by later markers.

    Marker points are in the grid frame, so a voxel's Point never changes; after the first frames, building a
    CUBE_LIST is an object-array gather. The Points are shared between messages: treat them as read-only.
    Memory is bounded by ``max_points`` (about 100 bytes each): past it the cache starts over.
    """

    def __init__(self, grid: GridSpec, max_points: int = 1_000_000, fast: bool = True) -> None:
        self.grid = grid
        self.max_points = int(max_points)
        self._make = (_slot_point_factory() if fast else None) or _ctor_point
        # shared Python floats per axis: 3 objects per axis value instead of 3 per point
        self._axes = [[float(o + (i + 0.5) * grid.voxel_size) for i in range(d)]
                      for o, d in zip(grid.origin, grid.dims)]
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._points = np.full(self.grid.num_voxels, None, dtype=object)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def points(self, flat: np.ndarray) -> List[Point]:
        flat = np.asarray(flat, np.int64)
        with self._lock:
            got = self._points[flat]
            missing = np.flatnonzero(got == None)  # noqa: E711 - elementwise on an object array
            if missing.size:
                if self._count + missing.size > self.max_points:
                    self._reset()
                    got = self._points[flat]
                    missing = np.arange(flat.size)
                new_flat = flat[missing]
                ix, iy, iz = np.unravel_index(new_flat, self.grid.dims)
                ax, ay, az = self._axes
                make = self._make
                fresh = np.empty(new_flat.size, dtype=object)
                fresh[:] = [make(ax[a], ay[b], az[c]) for a, b, c in zip(ix.tolist(), iy.tolist(), iz.tolist())]
                # duplicates in ``flat`` would create two Points for one voxel; harmless, the last one is cached
                self._points[new_flat] = fresh
                self._count += int(new_flat.size)
                got[missing] = fresh
            return got.tolist()


_DEFAULT_CACHES: Dict[GridSpec, PointCache] = {}


def default_point_cache(grid: GridSpec) -> PointCache:
    cache = _DEFAULT_CACHES.get(grid)
    if cache is None:
        cache = _DEFAULT_CACHES.setdefault(grid, PointCache(grid))
    return cache


def _duration(seconds: float) -> Duration:
    ns = int(round(max(float(seconds), 0.0) * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def marker_skeleton(indices: np.ndarray, labels: np.ndarray, grid: GridSpec, header: Any,
                    class_names: Sequence[str], colors: np.ndarray, prev_namespaces: Iterable[str] = (),
                    lifetime: float = 0.0, pose: Optional[np.ndarray] = None, clear_first: bool = False,
                    reuse: Optional[Dict[tuple, Marker]] = None) -> Tuple[List[Marker], List[np.ndarray], Set[str]]:
    """The markers of :func:`to_marker_array` without their points, the flat voxel indices each ADD marker will
    hold (in marker order), and the namespaces now present. Shared by the object path and the CDR fast path.

    ``reuse`` (a dict the caller keeps) hands back last call's ADD marker of a class with header, pose and
    lifetime updated, instead of a new one: building 19 Markers cost ~2 ms a frame. Only for callers that are
    done with the previous markers (the serializing path)."""
    labels = np.asarray(labels)
    idx = _check_indices(indices, labels, grid)
    # float32 values, as ColorRGBA stores them, so a serialization round trip compares equal
    rgb = (np.asarray(colors, np.float32) / np.float32(255.0)).astype(np.float64)
    marker_pose = pose_from_matrix(np.eye(4) if pose is None else pose)
    life = _duration(lifetime)

    lab = labels.reshape(-1)[idx]
    by_class = idx[np.argsort(lab, kind="stable")]  # a radix sort for uint8 keys
    counts = np.bincount(lab, minlength=256)
    present_ids = np.flatnonzero(counts)
    bounds = np.cumsum(counts[present_ids])
    starts = bounds - counts[present_ids]

    markers: List[Marker] = []
    groups: List[np.ndarray] = []
    if clear_first:
        markers.append(Marker(header=header, action=Marker.DELETEALL))
    present: Set[str] = set()
    for cls, start, stop in zip(present_ids.tolist(), starts.tolist(), bounds.tolist()):
        if cls >= len(class_names):
            raise ValueError(f"label {cls} has no class name (only {len(class_names)} names)")
        ns = class_names[cls]
        present.add(ns)
        color = tuple(float(c) for c in rgb[cls])
        key = (ns, color, float(grid.voxel_size))
        m = None if reuse is None else reuse.get(key)
        if m is None:
            m = Marker(ns=ns, id=0, type=Marker.CUBE_LIST, action=Marker.ADD, frame_locked=False)
            m.scale.x = m.scale.y = m.scale.z = float(grid.voxel_size)
            m.color.r, m.color.g, m.color.b = color
            m.color.a = 1.0
            if reuse is not None:
                reuse[key] = m
        m.header, m.pose, m.lifetime = header, marker_pose, life
        markers.append(m)
        groups.append(by_class[start:stop])
    if not clear_first:
        for ns in sorted(set(prev_namespaces) - present):
            markers.append(Marker(header=header, ns=ns, id=0, action=Marker.DELETE))
    return markers, groups, present


def to_marker_array(indices: np.ndarray, labels: np.ndarray, grid: GridSpec, header: Any,
                    class_names: Sequence[str], colors: np.ndarray, prev_namespaces: Iterable[str] = (),
                    lifetime: float = 0.0, pose: Optional[np.ndarray] = None, clear_first: bool = False,
                    point_cache: Optional[PointCache] = None) -> Tuple[MarkerArray, Set[str]]:
    """Selected voxels -> MarkerArray with one CUBE_LIST per present class, and the namespaces now present.

    Each class is one marker: ``ns`` = class name, ``id`` = 0, one opaque ``color`` (no per-point colours),
    ``scale`` = voxel size, ``pose`` = the grid -> ``header.frame_id`` transform (``pose``, identity when None),
    points = voxel centres in the grid frame. RViz matches markers by (ns, id) and updates a marker in place on
    ADD, so a class that disappears must be removed explicitly: a DELETE is emitted for every namespace in
    ``prev_namespaces`` that is absent now. Unrelated markers on the same topic are untouched.

    ``clear_first`` instead puts one DELETEALL (empty ns: every marker of the display) first; RViz processes a
    MarkerArray in order, so the ADDs after it survive. It is the workaround for in-place CUBE_LIST updates
    slowing RViz down (ros2/rviz#631) at the cost of re-creating the render objects every frame.
    ``lifetime`` (seconds, 0 = forever) makes the output vanish when the node stops publishing.
    The publishing path uses ``marker_cdr.marker_array_cdr`` (same message, serialized from numpy); this object
    form is its reference and serves in-process consumers.
    """
    cache = point_cache if point_cache is not None else default_point_cache(grid)
    if cache.grid != grid:
        raise ValueError("point cache belongs to another grid")
    markers, groups, present = marker_skeleton(indices, labels, grid, header, class_names, colors, prev_namespaces,
                                               lifetime, pose, clear_first)
    adds = [m for m in markers if m.action == Marker.ADD]
    for m, flat in zip(adds, groups):
        m.points = cache.points(flat)
    return MarkerArray(markers=markers), present


# ---------------------------------------------------------------------------------------------- diagnostics

DIAG_OK, DIAG_WARN, DIAG_ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def diagnostics_message(stats: Mapping[str, Any], header: Any = None, name: str = "scanssc: pipeline",
                        hardware_id: str = "", latency_warn_ms: float = 200.0, latency_error_ms: float = 1000.0,
                        drop_warn: float = 0.5, drop_error: float = 0.9, min_output_hz: float = 0.0
                        ) -> DiagnosticArray:
    """A one-status DiagnosticArray from pipeline statistics.

    Recognised keys (all optional): ``latency_ms`` {stage: ms} (its sum is the end-to-end latency, unless a
    ``total`` stage is given), ``input_rate_hz``, ``output_rate_hz``, ``frames_in``, ``frames_dropped``,
    ``device``. Any other key is reported verbatim. Level:
    ERROR when inputs arrive but nothing is produced, latency >= ``latency_error_ms`` or the dropped fraction
    >= ``drop_error``; WARN for latency >= ``latency_warn_ms``, drops >= ``drop_warn``, no input at all, or an
    output rate below ``min_output_hz``; OK otherwise. Dropping frames is normal for a latest-only pipeline
    slower than its camera, hence the high default drop thresholds.
    """
    values: List[KeyValue] = []
    problems: List[Tuple[bytes, str]] = []

    latency = {str(k): float(v) for k, v in dict(stats.get("latency_ms") or {}).items()}
    for stage, ms in latency.items():
        values.append(KeyValue(key=f"latency_ms/{stage}", value=f"{ms:.2f}"))
    total = latency.get("total", sum(latency.values())) if latency else None
    if total is not None:
        if "total" not in latency:
            values.append(KeyValue(key="latency_ms/total", value=f"{total:.2f}"))
        if total >= latency_error_ms:
            problems.append((DIAG_ERROR, f"latency {total:.0f} ms"))
        elif total >= latency_warn_ms:
            problems.append((DIAG_WARN, f"latency {total:.0f} ms"))

    in_hz = stats.get("input_rate_hz")
    out_hz = stats.get("output_rate_hz")
    if in_hz is not None:
        values.append(KeyValue(key="input_rate_hz", value=f"{float(in_hz):.2f}"))
        if float(in_hz) <= 0:
            problems.append((DIAG_WARN, "no input"))
    if out_hz is not None:
        values.append(KeyValue(key="output_rate_hz", value=f"{float(out_hz):.2f}"))
        if float(out_hz) <= 0 and in_hz is not None and float(in_hz) > 0:
            problems.append((DIAG_ERROR, "inputs arrive but nothing is published"))
        elif 0 < float(out_hz) < min_output_hz:
            problems.append((DIAG_WARN, f"output {float(out_hz):.1f} Hz < {min_output_hz:.1f} Hz"))

    frames_in = stats.get("frames_in")
    dropped = stats.get("frames_dropped")
    if frames_in is not None:
        values.append(KeyValue(key="frames_in", value=str(int(frames_in))))
    if dropped is not None:
        values.append(KeyValue(key="frames_dropped", value=str(int(dropped))))
        if frames_in:
            frac = float(dropped) / float(frames_in)
            values.append(KeyValue(key="drop_fraction", value=f"{frac:.3f}"))
            if frac >= drop_error:
                problems.append((DIAG_ERROR, f"{100 * frac:.0f}% frames dropped"))
            elif frac >= drop_warn:
                problems.append((DIAG_WARN, f"{100 * frac:.0f}% frames dropped"))

    known = {"latency_ms", "input_rate_hz", "output_rate_hz", "frames_in", "frames_dropped"}
    for key in sorted(k for k in stats if k not in known):
        values.append(KeyValue(key=str(key), value=str(stats[key])))

    level = max((lvl for lvl, _ in problems), default=DIAG_OK)
    message = "; ".join(text for lvl, text in problems if lvl == level) if problems else "OK"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id or
                              str(stats.get("device", "")), values=values)
    arr = DiagnosticArray(status=[status])
    if header is not None:
        arr.header = header
    return arr
