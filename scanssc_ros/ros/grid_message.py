"""Prediction -> ``scanssc_ros/SemanticVoxelGrid``: the whole grid in one message, self-describing (layout, pose,
class names and colours) so a consumer needs nothing from this package but the message definition."""
from __future__ import annotations

import array
from typing import Any, Optional

import numpy as np
from std_msgs.msg import ColorRGBA

from scanssc_ros.geometry import GridSpec
from scanssc_ros.grid_codec import DENSE, encode_grid
from scanssc_ros.labels import LabelSet
from scanssc_ros.msg import SemanticVoxelGrid
from scanssc_ros.ros.voxel_encode import confidence_u8, pose_from_matrix


def grid_origin_matrix(grid: GridSpec, T_out_grid: np.ndarray) -> np.ndarray:
    """Pose of the grid's min corner (the message's ``origin``) in the output frame."""
    corner = np.eye(4)
    corner[:3, 3] = grid.origin
    return np.asarray(T_out_grid, np.float64) @ corner


def to_occupancy_message(cells: np.ndarray, grid: GridSpec, header: Any, T_out_grid: np.ndarray, cell_size: float,
                         ground_z: float) -> Any:
    """(X, Y) int8 cells (scanssc_ros.occupancy) -> nav_msgs/OccupancyGrid. The map lies in the grid's x-y plane at
    the default ground height; its origin is the grid's min corner, posed in the output frame like the grid."""
    from nav_msgs.msg import OccupancyGrid

    from scanssc_ros.occupancy import occupancy_data

    msg = OccupancyGrid()
    msg.header = header
    msg.info.map_load_time = header.stamp
    msg.info.resolution = float(cell_size)
    msg.info.width, msg.info.height = int(cells.shape[0]), int(cells.shape[1])
    corner = np.eye(4)
    corner[:3, 3] = (grid.origin[0], grid.origin[1], ground_z)
    msg.info.origin = pose_from_matrix(np.asarray(T_out_grid, np.float64) @ corner)
    msg.data = array.array("b", occupancy_data(cells).astype(np.int8).tobytes())
    return msg


def _byte_array(data) -> array.array:
    out = array.array("B")
    out.frombytes(data)  # one memcpy from any bytes-like object
    return out


def class_colors(label_set: LabelSet) -> list:
    # float32 values, as ColorRGBA stores them, so received colours compare equal to the table
    rgb = np.asarray(label_set.colors_rgb, np.float32) / np.float32(255.0)
    return [ColorRGBA(r=float(r), g=float(g), b=float(b), a=1.0) for r, g, b in rgb]


def to_grid_message(labels: np.ndarray, grid: GridSpec, header: Any, label_set: LabelSet,
                    T_out_grid: Optional[np.ndarray] = None, confidence: Optional[np.ndarray] = None,
                    colors: Optional[list] = None, encoding: str = DENSE) -> SemanticVoxelGrid:
    """(X, Y, Z) uint8 labels (+ optional confidence, uint8 or float in [0, 1]) -> SemanticVoxelGrid.

    ``T_out_grid`` maps grid-frame points (x forward, y left, z up; the frame ``grid.origin`` is expressed in)
    into ``header.frame_id``; identity when None. ``colors`` may pass a prebuilt ``class_colors`` list.
    ``encoding``: the payload (``grid_codec``: dense, sparse or zlib). ``grid_cdr.grid_message_cdr`` gives the
    same message serialized, with one copy of the payload instead of three.
    """
    payload = encode_grid(checked_labels(labels, grid), None if confidence is None else confidence_u8(confidence),
                          encoding)
    msg = SemanticVoxelGrid()
    fill_grid_header(msg, grid, header, label_set, T_out_grid, colors, payload.encoding)
    if payload.indices.size:
        msg.indices = array.array("I", payload.indices.tobytes())
    msg.labels = _byte_array(payload.labels)
    if len(payload.confidence):
        msg.confidence = _byte_array(payload.confidence)
    return msg


def checked_labels(labels: np.ndarray, grid: GridSpec) -> np.ndarray:
    """``labels`` as an array, refused unless uint8 of the grid's shape."""
    labels = np.asarray(labels)
    if labels.shape != tuple(grid.dims):
        raise ValueError(f"labels shape {labels.shape} does not match grid dims {grid.dims}")
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 class ids, got {labels.dtype}")
    return labels


def fill_grid_header(msg: Any, grid: GridSpec, header: Any, label_set: LabelSet, T_out_grid: Optional[np.ndarray],
                     colors: Optional[list], encoding: str) -> None:
    """Every field of a SemanticVoxelGrid but the payload (indices, labels, confidence)."""
    msg.header = header
    msg.origin = pose_from_matrix(grid_origin_matrix(grid, np.eye(4) if T_out_grid is None else T_out_grid))
    msg.voxel_size = float(grid.voxel_size)
    msg.size_x, msg.size_y, msg.size_z = (int(d) for d in grid.dims)
    msg.encoding = encoding
    msg.label_set = label_set.name
    msg.class_names = list(label_set.classes)
    msg.class_colors = colors if colors is not None else class_colors(label_set)
