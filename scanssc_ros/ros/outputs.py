"""Prediction -> the node's output messages (grid, per-class markers, point cloud), from the encoders in
``grid_message`` and ``voxel_encode``. Kept apart from the node so the same code is timed by the benchmark and
checked by tests without a running graph."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional, Set, Tuple

import numpy as np
from std_msgs.msg import Header

from scanssc_ros.geometry import GridSpec
from scanssc_ros.labels import LabelSet
from scanssc_ros.occupancy import GroundColumns, ObstacleFilter, OccupancyRule, obstacle_voxels, occupancy
from scanssc_ros.ros.grid_cdr import grid_cdr_self_check, grid_message_cdr
from scanssc_ros.ros.grid_message import class_colors, to_grid_message, to_occupancy_message
from scanssc_ros.ros.marker_cdr import cdr_self_check, marker_array_cdr
from scanssc_ros.ros.voxel_encode import PointCache, select_voxels, to_marker_array, to_pointcloud2


def parse_class_filter(text: str, label_set: LabelSet, param: str = "class_filter") -> Optional[FrozenSet[int]]:
    """'car, road' / '1,9' -> class ids; '' -> None (all classes). Unknown names or ids raise ValueError naming
    ``param``."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        return None
    ids: Set[int] = set()
    for item in items:
        if item.isdigit():
            cid = int(item)
            if not 0 < cid < label_set.num_classes:
                raise ValueError(f"{param}: id {cid} is not a class of {label_set.name} "
                                 f"(1..{label_set.num_classes - 1})")
        elif item in label_set.classes[1:]:
            cid = label_set.classes.index(item)
        else:
            raise ValueError(f"{param}: unknown class {item!r}; {label_set.name} classes: "
                             f"{', '.join(label_set.classes[1:])}")
        ids.add(cid)
    return frozenset(ids)


@dataclass
class OutputOptions:
    output_frame: str = ""  # "" = the camera frame
    grid_frame: str = "scanssc_grid"
    publish_grid: bool = True
    publish_markers: bool = True
    publish_cloud: bool = True
    confidence_threshold: float = 0.0
    class_filter: Optional[FrozenSet[int]] = None
    surface_only: bool = True
    max_voxels: int = 200000  # 0 = no limit
    marker_lifetime: float = 1.0
    occupancy: Optional[OccupancyRule] = None  # None: no ~/occupancy
    obstacles: Optional[ObstacleFilter] = None  # None: no ~/obstacles
    grid_encoding: str = "dense"  # grid_codec: dense, sparse or zlib
    grid_confidence: bool = True


class OutputFrameError(ValueError):
    """``output_frame`` is neither the camera frame nor the grid frame (no TF lookups in this node)."""


class OutputBuilder:
    """Builds the enabled output messages for one prediction; remembers the marker namespaces of the previous
    frame so classes that disappear get a DELETE.

    Markers and the grid come as serialized CDR bytes (``marker_cdr``, ``grid_cdr``: publishable as they are)
    when ``serialized`` is on and their self-checks passed for this ROS distro; otherwise as message objects."""

    def __init__(self, grid: GridSpec, label_set: LabelSet, cam_from_grid: np.ndarray,
                 serialized: bool = True) -> None:
        self.grid = grid
        self.label_set = label_set
        self.cam_from_grid = np.asarray(cam_from_grid, np.float64).reshape(4, 4)
        self.colors_u8 = label_set.color_table()
        self._colors_msg = class_colors(label_set)
        self.serialized_markers = serialized and cdr_self_check(grid)
        self.serialized_grid = serialized and grid_cdr_self_check()
        self._points = None if self.serialized_markers else PointCache(grid)
        self._prev_ns: Set[str] = set()
        self._marker_reuse: Dict[tuple, Any] = {}  # marker_skeleton's per-class markers (serialized path only)
        # the camera sits at the grid-frame position cam_from_grid^-1 @ 0: "nearest voxels" for max_voxels
        self.sensor_position = tuple(np.linalg.inv(self.cam_from_grid)[:3, 3].tolist())

    def frame_and_pose(self, camera_frame: str, opts: OutputOptions) -> Tuple[str, np.ndarray]:
        out = opts.output_frame
        if out in ("", camera_frame):
            return camera_frame, self.cam_from_grid
        if out == opts.grid_frame:
            return out, np.eye(4)
        raise OutputFrameError(f"output_frame {out!r} is neither the camera frame {camera_frame!r} nor grid_frame "
                               f"{opts.grid_frame!r}; set one of those (or empty for the camera frame)")

    def build(self, labels: np.ndarray, confidence: Optional[np.ndarray], stamp: Any, camera_frame: str,
              opts: OutputOptions, wanted: Optional[Dict[str, bool]] = None,
              frame_pose: Optional[Tuple[str, np.ndarray]] = None, cam_from_grid: Optional[np.ndarray] = None
              ) -> Tuple[Dict[str, Any], Dict[str, float]]:
        """Messages by output name ('grid', 'occupancy', 'obstacles', 'markers', 'cloud') and build times in ms.
        ``wanted`` can switch outputs off per call (e.g. no subscriber) on top of ``opts``. ``frame_pose`` (frame,
        grid pose in it) and ``cam_from_grid`` override the fixed camera placement for this frame (TF placement)."""
        wanted = wanted or {}
        frame, T = frame_pose if frame_pose is not None else self.frame_and_pose(camera_frame, opts)
        sensor = self.sensor_position if cam_from_grid is None else \
            tuple(np.linalg.inv(np.asarray(cam_from_grid, np.float64))[:3, 3].tolist())
        header = Header(stamp=stamp, frame_id=frame)
        msgs: Dict[str, Any] = {}
        times: Dict[str, float] = {}
        t = time.perf_counter()
        if opts.publish_grid and wanted.get("grid", True):
            encode = grid_message_cdr if self.serialized_grid else to_grid_message
            msgs["grid"] = encode(labels, self.grid, header, self.label_set, T,
                                  confidence if opts.grid_confidence else None, colors=self._colors_msg,
                                  encoding=opts.grid_encoding)
            times["encode_grid"] = (time.perf_counter() - t) * 1e3
        columns = None
        if opts.occupancy is not None and wanted.get("occupancy", True):
            t = time.perf_counter()
            rule = opts.occupancy
            columns = GroundColumns(labels, self.grid, rule.traversable, rule.ground_z)
            cells = occupancy(labels, self.grid, rule, confidence, columns=columns)
            msgs["occupancy"] = to_occupancy_message(cells, self.grid, header, T,
                                                     self.grid.voxel_size * rule.factor, rule.ground_z)
            times["encode_occupancy"] = (time.perf_counter() - t) * 1e3
        if opts.obstacles is not None and wanted.get("obstacles", True):
            t = time.perf_counter()
            ground = opts.obstacles.ground
            if columns is None or (columns.traversable, columns.ground_z) != (ground.traversable, ground.ground_z):
                columns = GroundColumns(labels, self.grid, ground.traversable, ground.ground_z)
            idx = obstacle_voxels(labels, self.grid, ground, opts.obstacles.band, opts.obstacles.classes, columns)
            msgs["obstacles"] = to_pointcloud2(idx, labels, self.grid, header, pose=T, colors=self.colors_u8,
                                               confidence=confidence)
            times["encode_obstacles"] = (time.perf_counter() - t) * 1e3
        need_markers = opts.publish_markers and wanted.get("markers", True)
        need_cloud = opts.publish_cloud and wanted.get("cloud", True)
        if need_markers or need_cloud:
            t = time.perf_counter()
            idx = select_voxels(labels, confidence, opts.confidence_threshold, opts.class_filter, opts.surface_only,
                                opts.max_voxels or None, self.grid, sensor)
            times["select"] = (time.perf_counter() - t) * 1e3
            if need_markers:
                t = time.perf_counter()
                args = (idx, labels, self.grid, header, self.label_set.classes, self.colors_u8, self._prev_ns,
                        opts.marker_lifetime, T)
                if self.serialized_markers:
                    msgs["markers"], self._prev_ns = marker_array_cdr(*args, reuse=self._marker_reuse)
                else:
                    msgs["markers"], self._prev_ns = to_marker_array(*args, point_cache=self._points)
                times["encode_markers"] = (time.perf_counter() - t) * 1e3
            if need_cloud:
                t = time.perf_counter()
                msgs["cloud"] = to_pointcloud2(idx, labels, self.grid, header, pose=T, colors=self.colors_u8,
                                               confidence=confidence)
                times["encode_cloud"] = (time.perf_counter() - t) * 1e3
        return msgs, times
