"""The node's parameters: one table with types, defaults, ranges and descriptions.

The table is plain Python so the same rules validate the node at start-up, parameter updates at runtime, and
``config/scanssc.yaml`` in a ROS-free test.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


class ParameterError(ValueError):
    """A parameter value the node cannot run with."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: Tuple[str, ...] = ()
    min: Optional[float] = None
    max: Optional[float] = None
    length: Optional[int] = None  # fixed length for array parameters
    check: Optional[Callable[[Any], Optional[str]]] = field(default=None, compare=False)

    @property
    def kind(self) -> type:
        return list if isinstance(self.default, list) else type(self.default)

    def validate(self, value: Any) -> Optional[str]:
        """Return a human-readable problem with ``value``, or None when it is acceptable."""
        expected = self.kind
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is list:
            if not isinstance(value, (list, tuple)):
                return f"{self.name} must be a list, got {type(value).__name__}"
            if self.length is not None and len(value) != self.length:
                return f"{self.name} must have {self.length} values, got {len(value)}"
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                return f"{self.name} must contain numbers"
            if not all(v == v and abs(v) != float("inf") for v in value):
                return f"{self.name} must contain finite numbers"
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f"{self.name} must be of type {expected.__name__}, got {type(value).__name__} ({value!r})"
        if self.choices and value not in self.choices:
            return f"{self.name}={value!r} is not one of {list(self.choices)}"
        if self.min is not None and value < self.min:
            return f"{self.name}={value!r} is below the minimum {self.min}"
        if self.max is not None and value > self.max:
            return f"{self.name}={value!r} is above the maximum {self.max}"
        if self.check is not None:
            return self.check(value)
        return None


def _check_device(value: str) -> Optional[str]:
    if not _DEVICE_RE.match(value):
        return f"device={value!r} must be 'cpu', 'cuda' or 'cuda:N'"
    return None


def _check_transform(value: List[float], name: str = "cam_from_grid") -> Optional[str]:
    bottom = [float(v) for v in value[12:16]]
    if bottom != [0.0, 0.0, 0.0, 1.0]:
        return f"{name} must be a row-major 4x4 rigid transform (last row 0 0 0 1), got last row {bottom}"
    R = np.asarray(value, np.float64).reshape(4, 4)[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        return f"{name}: the upper-left 3x3 block is not a rotation"
    return None


# KITTI odometry seq 08 left colour camera (P2's offset folded in) from the velodyne frame: the SemanticKITTI
# grid frame. Users with another rig set this parameter (or the launch argument) from their calibration.
KITTI_CAM_FROM_GRID = [
    -0.0018577394, -0.9999659514, -0.0080399752, 0.0562465542,
    -0.0064814658, 0.0080518602, -0.9999466082, -0.0748140163,
    0.9999773098, -0.0018055286, -0.0064962035, -0.3277935834,
    0.0, 0.0, 0.0, 1.0,
]

IDENTITY_4X4 = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]

PARAMS: Tuple[ParamSpec, ...] = (
    # model
    ParamSpec("checkpoint", "", "Path to a scanssc_ros checkpoint (.pt). Empty: no weights (see allow_untrained).",
              read_only=True),
    ParamSpec("allow_untrained", False, "Run a randomly initialised model when no checkpoint is given "
              "(for wiring tests only; the output is meaningless).", read_only=True),
    ParamSpec("variant", "lite", "Model variant: built untrained without a checkpoint; with a checkpoint it must "
              "match the variant stored in it (a mismatch refuses to start).",
              read_only=True, choices=("lite", "paper", "tiny")),
    ParamSpec("device", "cpu", "Torch device: cpu, cuda or cuda:N. CUDA requested but unavailable is an error, "
              "never a silent CPU fallback.", read_only=True, check=_check_device),
    ParamSpec("precision", "fp32", "Inference precision. fp32 on CUDA is IEEE fp32 (TF32 off); bf16 is the fast GPU "
              "setting (paper 161 ms against 267 ms per frame on an H200), fp16 needs CUDA.", read_only=True,
              choices=("fp32", "fp16", "bf16")),
    ParamSpec("warmup", True, "Run one inference on a blank frame at start-up, so the first real frame is not slow "
              "(memory allocation, CUDA kernel selection).", read_only=True),
    ParamSpec("enable", True, "Process frames (false: inputs are received and counted as 'disabled', nothing is "
              "inferred or published). Also settable through the ~/enable service (std_srvs/SetBool)."),
    # inputs
    ParamSpec("depth_mode", "stereo", "Depth prior: stereo (right image + camera_info, SGBM), depth (depth image "
              "topic) or mono (none).", read_only=True, choices=("stereo", "depth", "mono")),
    ParamSpec("image_transport", "raw", "Transport of the colour images, as image_transport names it: raw "
              "(sensor_msgs/Image on left/image_rect, right/image_rect) or compressed (sensor_msgs/CompressedImage, "
              "JPEG or PNG, on <image topic>/compressed: remap the base topic, e.g. left/image_rect). Depth images "
              "stay raw.", read_only=True, choices=("raw", "compressed")),
    ParamSpec("rectify_input", False, "The input images are raw (image_raw): undistort and rectify them with their "
              "camera_info's K, D, R and P (OpenCV; plumb_bob, rational_polynomial, equidistant) before use. false: "
              "they are already rectified (image_rect) and D is not used.", read_only=True),
    ParamSpec("sync_tolerance", 0.02, "Max stamp difference (s) for pairing left/right/depth/camera_info messages.",
              min=0.0, max=1.0),
    ParamSpec("input_reliability", "reliable", "QoS reliability of the input subscriptions. reliable: full-size "
              "images arrive (best-effort ones are fragmented and lost on Fast DDS) but a best-effort publisher "
              "(sensor-data QoS camera drivers, Gazebo) does not match; set best_effort for those.", read_only=True,
              choices=("reliable", "best_effort")),
    ParamSpec("input_depth", 5, "QoS history depth of the input subscriptions: messages kept per topic while the "
              "executor is busy (the node itself always works on the newest frame).", read_only=True, min=1,
              max=100),
    ParamSpec("max_rate", 0.0, "Max inference rate in Hz (0 = as fast as the model runs).", min=0.0, max=1000.0),
    # geometry
    ParamSpec("cam_from_grid", list(KITTI_CAM_FROM_GRID), "Row-major 4x4 transform from the voxel-grid frame "
              "(x forward, y left, z up) to the left camera's optical frame. Default: KITTI odometry (velodyne frame).",
              read_only=True, length=16, check=_check_transform),
    ParamSpec("base_frame", "", "Robot frame the grid is fixed to (e.g. base_link). Set: the camera's pose comes "
              "from TF (/tf_static, /tf) at each image stamp and the grid sits at grid_in_base; cam_from_grid is "
              "only the fallback until TF knows the camera. Empty: the grid is fixed to the camera by cam_from_grid.",
              read_only=True),
    ParamSpec("grid_in_base", list(IDENTITY_4X4), "Row-major 4x4 pose of the voxel-grid frame in base_frame. KITTI: "
              "identity with base_frame the velodyne frame (SemanticKITTI defines the grid there).",
              read_only=True, length=16, check=lambda v: _check_transform(v, "grid_in_base")),
    ParamSpec("grid_frame", "scanssc_grid", "Frame id of the voxel grid (published as a static TF child of the "
              "camera frame when publish_tf is true)."),
    ParamSpec("output_frame", "", "Frame of the published grid/markers/cloud. Empty: the camera frame from "
              "camera_info; grid_frame; base_frame; or any frame TF reaches at the image stamp (e.g. odom)."),
    ParamSpec("publish_tf", True, "Publish the grid frame on /tf_static: base_frame->grid_frame when base_frame is "
              "set, else camera->grid_frame.", read_only=True),
    # outputs
    ParamSpec("publish_grid", True, "Publish ~/voxels (scanssc_ros/SemanticVoxelGrid)."),
    ParamSpec("publish_markers", True, "Publish ~/voxel_markers (visualization_msgs/MarkerArray)."),
    ParamSpec("publish_cloud", True, "Publish ~/voxel_cloud (sensor_msgs/PointCloud2)."),
    ParamSpec("publish_occupancy", True, "Publish ~/occupancy (nav_msgs/OccupancyGrid, bird's-eye: 100 obstacle in "
              "the height band, 0 traversable ground, -1 unknown) for Nav2 and other planners."),
    ParamSpec("occupancy_traversable", "road,parking,sidewalk,other-ground,terrain", "Comma-separated classes "
              "that are free ground in ~/occupancy; every other occupied class is an obstacle."),
    ParamSpec("occupancy_min_height", 0.1, "Obstacles count from this height above the ground (m; lower: kerbs, "
              "flat debris).", min=0.0, max=6.4),
    ParamSpec("occupancy_max_height", 2.0, "Obstacles count up to this height above the ground (m; higher: tree "
              "canopies, bridges the robot passes under).", min=0.0, max=6.4),
    ParamSpec("occupancy_ground_z", -1.73, "Ground height in the grid frame (m) for columns without visible ground "
              "(KITTI: the LiDAR is 1.73 m above the road).", min=-100.0, max=100.0),
    ParamSpec("occupancy_cell_voxels", 1, "Voxel columns per occupancy cell side (1: 0.2 m cells; 2: 0.4 m ...); "
              "must divide the grid.", min=1, max=64),
    ParamSpec("occupancy_use_confidence", False, "Occupied cells hold round(100 x confidence) instead of 100 (for "
              "a costmap that scales costs; Nav2's default trinary StaticLayer wants 100)."),
    ParamSpec("publish_obstacles", True, "Publish ~/obstacles (sensor_msgs/PointCloud2: centres of the obstacle "
              "voxels in a height band above the ground, fields x y z rgb label confidence) for Nav2's ObstacleLayer "
              "or VoxelLayer. Ground and traversable classes as for ~/occupancy."),
    ParamSpec("obstacle_classes", "", "Comma-separated class names or ids in ~/obstacles (empty: every class that "
              "is not in occupancy_traversable)."),
    ParamSpec("obstacle_min_height", 0.1, "~/obstacles keeps voxels from this height above the ground (m).",
              min=-6.4, max=6.4),
    ParamSpec("obstacle_max_height", 2.0, "~/obstacles keeps voxels up to this height above the ground (m).",
              min=-6.4, max=6.4),
    ParamSpec("grid_encoding", "dense", "Payload of ~/voxels: dense (every voxel, 2 MB of labels for 256x256x32), "
              "sparse (indices of the non-empty voxels with their labels) or zlib (the dense bytes deflated). "
              "Declared in the message's encoding field; scanssc_ros.grid_codec.decode_grid reads all three.",
              choices=("dense", "sparse", "zlib")),
    ParamSpec("grid_confidence", True, "Send the per-voxel confidence in ~/voxels (doubles a dense message)."),
    ParamSpec("publish_diagnostics", True, "Publish /diagnostics (diagnostic_msgs/DiagnosticArray)."),
    ParamSpec("output_reliability", "reliable", "QoS reliability of the outputs.", read_only=True,
              choices=("reliable", "best_effort")),
    ParamSpec("output_depth", 2, "QoS history depth of the outputs.", read_only=True, min=1, max=100),
    ParamSpec("mark_unseen", True, "Publish voxels outside the camera's view (centre not projecting into the image) "
              "as 255 = unknown; markers and cloud never draw them. false: label every voxel, as the benchmark "
              "scores them.", read_only=True),
    ParamSpec("confidence_threshold", 0.0, "Voxels whose label confidence is below this are not drawn "
              "(markers, cloud); the grid message keeps every label.", min=0.0, max=1.0),
    ParamSpec("class_filter", "", "Comma-separated class names or ids to draw (empty = all non-empty classes)."),
    ParamSpec("surface_only", True, "Draw only occupied voxels with a free 6-neighbour (RViz stays responsive)."),
    ParamSpec("max_voxels", 200000, "Upper bound on drawn voxels per message (0 = no limit).", min=0, max=2097152),
    ParamSpec("marker_lifetime", 1.0, "Marker lifetime in s (0 = forever).", min=0.0, max=60.0),
    ParamSpec("diagnostics_period", 1.0, "Seconds between diagnostics messages.", min=0.1, max=60.0),
)

PARAMS_BY_NAME: Dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def validate_values(values: Mapping[str, Any]) -> List[str]:
    """Check a name -> value mapping against the table; returns every problem (unknown names included)."""
    problems = []
    for name, value in values.items():
        spec = PARAMS_BY_NAME.get(name)
        if spec is None:
            problems.append(f"unknown parameter {name!r}")
            continue
        problem = spec.validate(value)
        if problem:
            problems.append(problem)
    return problems


def node_params_from_yaml(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``ros__parameters`` mapping of a ROS 2 params file (any node-name key, e.g. ``/**``)."""
    found: Dict[str, Any] = {}
    for key, section in data.items():
        if isinstance(section, Mapping) and isinstance(section.get("ros__parameters"), Mapping):
            found.update(section["ros__parameters"])
        elif key == "ros__parameters" and isinstance(section, Mapping):
            found.update(section)
    return found


def names(specs: Iterable[ParamSpec] = PARAMS) -> List[str]:
    return [p.name for p in specs]
