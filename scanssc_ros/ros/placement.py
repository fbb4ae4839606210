"""Where the voxel grid is: the camera -> grid transform for the model, and the grid's pose in the output frame.

Without ``base_frame`` the grid is fixed to the camera by the ``cam_from_grid`` parameter (KITTI's velodyne frame
by default). With ``base_frame`` (e.g. ``base_link``) the grid is fixed to the robot instead, at ``grid_in_base``,
and the camera's pose in the robot comes from TF (``/tf_static``, ``/tf``) at each image's stamp, so a camera that
is mounted differently, or re-calibrated, moves the grid with no hand-typed matrix. Until TF knows the camera frame
the parameter is the fallback (and the node says so once). Outputs can be published in any frame TF reaches at the
image stamp (``odom``, ``map``): the grid pose is then ``T_output_base(stamp) @ grid_in_base``.

No ROS imports: TransformStamped messages are read by attribute, so tests feed plain objects.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional, Tuple

import numpy as np

from scanssc_ros.tf_tree import TfError, TfTree, make_transform


class PlacementError(RuntimeError):
    """No pose for the requested output frame at the image stamp."""


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Placement:
    def __init__(self, cam_from_grid: np.ndarray, base_frame: str = "", grid_in_base: Optional[np.ndarray] = None,
                 grid_frame: str = "scanssc_grid", tf_wait: float = 0.2) -> None:
        self.param_cam_from_grid = np.asarray(cam_from_grid, np.float64).reshape(4, 4)
        self.base_frame = base_frame.lstrip("/")
        self.grid_in_base = np.eye(4) if grid_in_base is None else np.asarray(grid_in_base, np.float64).reshape(4, 4)
        self.grid_frame = grid_frame
        self.tf_wait = tf_wait
        self.tree = TfTree()
        self._lock = threading.Lock()

    @property
    def uses_tf(self) -> bool:
        return bool(self.base_frame)

    def on_tf_message(self, msg: Any, static: bool) -> int:
        """Store every transform of a tf2_msgs/TFMessage; returns how many were unusable (skipped)."""
        bad = 0
        for tf in getattr(msg, "transforms", []):
            try:
                t, r = tf.transform.translation, tf.transform.rotation
                T = make_transform((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))
                with self._lock:
                    self.tree.set_transform(tf.header.frame_id, tf.child_frame_id, T, stamp_ns(tf.header.stamp),
                                            static=static)
            except (ValueError, ZeroDivisionError, FloatingPointError, AttributeError):
                bad += 1
        return bad

    def lookup(self, target: str, source: str, t_ns: int, wait: Optional[float] = None) -> np.ndarray:
        """TF lookup that waits up to ``wait`` s for transforms newer than the image (a robot's /tf often lags
        the camera by a few ms). Raises TfError."""
        deadline = time.monotonic() + (self.tf_wait if wait is None else wait)
        while True:
            try:
                with self._lock:
                    return self.tree.lookup(target, source, t_ns)
            except TfError as exc:
                if "extrapolation" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def cam_from_grid(self, camera_frame: str, t_ns: int) -> Tuple[np.ndarray, str]:
        """(grid -> camera optical frame, where it came from: 'tf' or the reason TF could not be used)."""
        if not self.uses_tf:
            return self.param_cam_from_grid, "parameter"
        try:
            cam_from_base = self.lookup(camera_frame, self.base_frame, t_ns)
        except TfError as exc:
            return self.param_cam_from_grid, f"TF {self.base_frame} -> {camera_frame or '(no frame_id)'}: {exc}"
        return cam_from_base @ self.grid_in_base, "tf"

    def output_pose(self, output_frame: str, camera_frame: str, cam_from_grid: np.ndarray, t_ns: int
                    ) -> Tuple[str, np.ndarray]:
        """(frame of the published grid, pose of the grid in it)."""
        out = output_frame.lstrip("/")
        if out in ("", camera_frame):
            return camera_frame, cam_from_grid
        if out == self.grid_frame:
            return out, np.eye(4)
        if self.uses_tf and out == self.base_frame:
            return out, self.grid_in_base
        # any other frame: through TF from the camera (whose pose relative to the grid is known either way)
        try:
            out_from_cam = self.lookup(out, camera_frame, t_ns)
        except TfError as exc:
            raise PlacementError(f"output_frame {out!r} is not the camera frame {camera_frame!r}, grid_frame "
                                 f"{self.grid_frame!r} or base_frame, and TF cannot reach it: {exc}") from None
        return out, out_from_cam @ cam_from_grid


def camera_height_above_floor(cam_from_grid: np.ndarray, grid_floor_z: float) -> float:
    """Height of the camera centre above the grid's lowest plane (z = grid_floor_z in the grid frame)."""
    return float(np.linalg.inv(cam_from_grid)[2, 3] - grid_floor_z)
