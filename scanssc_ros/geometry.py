"""Camera and voxel-grid geometry shared by the datasets, the model and the node.

Conventions (the SemanticKITTI SSC ones):
- The *grid frame* is the LiDAR/ego frame: x forward, y left, z up, metres.
- A grid is ``dims`` voxels of ``voxel_size`` starting at ``origin`` (the min corner). Index order is (x, y, z),
  flattened in C order: n = (ix * dims[1] + iy) * dims[2] + iz.
- ``K`` is a 3x3 pinhole matrix of the *original* image; ``T_cam_grid`` (4x4) maps grid-frame points into that
  camera's optical frame (z forward, x right, y down). For KITTI the P matrix's 4th column (the offset of the
  colour camera from the rectified reference camera) is folded into ``T_cam_grid``.
- ``img_aug`` (3x3) maps original pixel coordinates to network-input pixel coordinates (resize, crop).

Every function accepts numpy arrays or torch tensors (matrices of the same kind as the points) and returns the
same kind, so one implementation serves the numpy data pipeline and the torch model.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar, Union

import numpy as np

try:  # torch is optional for the numpy-only users (bag tools, message encoding)
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency of the package, not of this module
    torch = None

Array = Any  # np.ndarray or torch.Tensor
_F = TypeVar("_F", bound=Callable[..., Any])


def _is_torch(x: Array) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _cat(xs, axis: int = -1):
    return torch.cat(xs, dim=axis) if _is_torch(xs[0]) else np.concatenate(xs, axis=axis)


def _ones_like_last(x: Array) -> Array:
    return torch.ones_like(x[..., :1]) if _is_torch(x) else np.ones_like(x[..., :1])


def _like(m: Array, ref: Array) -> Array:
    """Return matrix ``m`` as the same kind/dtype/device as ``ref``."""
    if _is_torch(ref):
        return torch.as_tensor(m, dtype=ref.dtype, device=ref.device)
    return np.asarray(m, dtype=ref.dtype if ref.dtype.kind == "f" else np.float64)


def _inv(m: Array) -> Array:
    # inv_ex: inv's kernel without its host-side check for singular input, a wait for the GPU on every call;
    # the camera matrices are checked where they enter (Predictor, datasets), so they are invertible here
    return torch.linalg.inv_ex(m).inverse if _is_torch(m) else np.linalg.inv(m)


def full_precision(fn: _F) -> _F:
    """Run ``fn`` with autocast off for the device of its first tensor argument. The model calls the camera
    geometry inside its bf16/fp16 autocast region, where a matrix product would round a pixel coordinate near
    u = 1000 to the nearest 4 px (bf16) and torch.linalg.inv has no half-precision kernel at all."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in (*args, *kwargs.values()) if _is_torch(a)), None)
        if dev is None or not torch.is_autocast_enabled(dev):
            return fn(*args, **kwargs)
        with torch.autocast(device_type=dev, enabled=False):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _mT(m: Array) -> Array:
    return m.transpose(-1, -2) if _is_torch(m) else np.swapaxes(m, -1, -2)


@dataclass(frozen=True)
class GridSpec:
    origin: Tuple[float, float, float] = (0.0, -25.6, -2.0)
    voxel_size: float = 0.2
    dims: Tuple[int, int, int] = (256, 256, 32)

    @property
    def num_voxels(self) -> int:
        return self.dims[0] * self.dims[1] * self.dims[2]

    @property
    def upper(self) -> Tuple[float, float, float]:
        return tuple(o + d * self.voxel_size for o, d in zip(self.origin, self.dims))

    def scaled(self, factor: int) -> GridSpec:
        """The same volume at ``factor`` times coarser voxels (e.g. 2 -> 128x128x16 at 0.4 m)."""
        if any(d % factor for d in self.dims):
            raise ValueError(f"grid dims {self.dims} not divisible by {factor}")
        return GridSpec(self.origin, self.voxel_size * factor, tuple(d // factor for d in self.dims))


SEMANTIC_KITTI_GRID = GridSpec()


# ---------------------------------------------------------------------------------------------- transforms
@full_precision
def transform_points(T: Array, points: Array) -> Array:
    """Apply a (..., 4, 4) rigid transform to (..., N, 3) points."""
    T = _like(T, points)
    return points @ _mT(T[..., :3, :3]) + T[..., None, :3, 3]


@full_precision
def project_points(points: Array, K: Array, T_cam_grid: Array,
                   img_aug: Optional[Array] = None) -> Tuple[Array, Array]:
    """Grid-frame points (..., N, 3) -> pixel coordinates (..., N, 2) and camera depth (..., N).

    Points behind the camera get depth <= 0; their pixel coordinates are meaningless and the caller masks them.
    """
    cam = transform_points(T_cam_grid, points)
    KA = _like(K, points)
    if img_aug is not None:
        KA = _like(img_aug, points) @ KA
    pix = cam @ _mT(KA)
    depth = pix[..., 2]
    eps = 1e-6
    safe = depth.clamp(min=eps) if _is_torch(depth) else np.maximum(depth, eps)
    return pix[..., :2] / safe[..., None], depth


@full_precision
def unproject_pixels(uv: Array, depth: Array, K: Array, T_cam_grid: Array,
                     img_aug: Optional[Array] = None) -> Array:
    """Pixels (..., N, 2) at camera depth (..., N) -> grid-frame points (..., N, 3). Inverse of project_points."""
    KA = _like(K, uv)
    if img_aug is not None:
        KA = _like(img_aug, uv) @ KA
    pix = _cat([uv * depth[..., None], depth[..., None]])
    cam = pix @ _mT(_inv(KA))
    return transform_points(_inv(_like(T_cam_grid, uv)), cam)


# --------------------------------------------------------------------------------------------------- grid
def voxel_centers(grid: GridSpec = SEMANTIC_KITTI_GRID, like: Optional[Array] = None) -> Array:
    """(X, Y, Z, 3) voxel-centre coordinates in metres (numpy float32, or torch when ``like`` is a tensor)."""
    axes = [np.asarray(o + (np.arange(d) + 0.5) * grid.voxel_size, np.float32)
            for o, d in zip(grid.origin, grid.dims)]
    centers = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    if like is not None and _is_torch(like):
        return torch.as_tensor(centers, device=like.device)
    return centers


def points_to_voxels(points: Array, grid: GridSpec = SEMANTIC_KITTI_GRID) -> Tuple[Array, Array]:
    """Points (..., 3) -> integer voxel indices (..., 3) and a mask of points inside the grid.

    Uses floor, so a point just below a lower bound is *outside* (the official LSS code truncates toward zero
    and would put it in voxel 0; that quirk belongs in the model's pooling, not here).
    """
    origin = _like(np.asarray(grid.origin), points)
    rel = (points - origin) / grid.voxel_size
    if _is_torch(points):
        idx = torch.floor(rel).long()
        dims = torch.as_tensor(grid.dims, device=points.device)
    else:
        idx = np.floor(rel).astype(np.int64)
        dims = np.asarray(grid.dims)
    inside = ((idx >= 0) & (idx < dims)).all(-1)
    return idx, inside


def flat_index(idx: Array, dims: Tuple[int, int, int]) -> Array:
    """(…, 3) voxel indices -> C-order flat index n = (ix * Y + iy) * Z + iz."""
    return (idx[..., 0] * dims[1] + idx[..., 1]) * dims[2] + idx[..., 2]


# ------------------------------------------------------------------------------------------------- images
def resize_crop_matrix(scale: float, crop_left: float = 0.0, crop_top: float = 0.0) -> np.ndarray:
    """3x3 image transform: resize by ``scale``, then crop away ``crop_left`` / ``crop_top`` pixels."""
    return np.array([[scale, 0.0, -crop_left], [0.0, scale, -crop_top], [0.0, 0.0, 1.0]])


def input_transform(height: int, width: int,
                    out_hw: Tuple[int, int] = (384, 1280)) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """The ScanSSC image pipeline: resize by ``s = out_w / width``, then cut an ``out_hw`` window at the bottom,
    centred horizontally.

    The arithmetic is the official loader's: the resized size is *truncated* (``int(W * s)``, ``int(H * s)``;
    a 1241x376 KITTI image becomes 1279x387, so the last column of the window is zero padding), the window starts
    at row ``rh - out_h`` and column ``(rw - out_w) // 2`` (never negative), and the matrix records the nominal
    scale ``s``. A resized image shorter than ``out_h`` gives a negative start row: a band is padded at the top
    (KITTI-360). Returns the 3x3 ``img_aug`` and (rh, rw, top, left), the resized size and the window origin.
    """
    scale = out_hw[1] / float(width)
    rh, rw = int(height * scale), int(width * scale)
    top, left = rh - out_hw[0], int(max(0, rw - out_hw[1]) / 2)
    return resize_crop_matrix(scale, float(left), float(top)), (rh, rw, top, left)


# -------------------------------------------------------------------------------------------- calibration
def read_kitti_calib(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """KITTI odometry calib.txt -> {'P0'..'P3': 3x4, 'Tr': 4x4 (velodyne -> rectified cam0)}."""
    out: Dict[str, np.ndarray] = {}
    for line in Path(path).read_text().splitlines():
        if ":" not in line:
            continue
        key, vals = line.split(":", 1)
        nums = np.array([float(v) for v in vals.split()], np.float64)
        if nums.size != 12:
            raise ValueError(f"{path}: {key} has {nums.size} values, expected 12")
        m = nums.reshape(3, 4)
        out[key.strip()] = np.vstack([m, [0, 0, 0, 1]]) if key.strip() == "Tr" else m
    missing = {"P2", "Tr"} - set(out)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)}")
    return out


def split_projection(P: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A rectified 3x4 projection P = K [I | t] -> (K, t). t is the camera's offset from the reference camera."""
    K = np.asarray(P, np.float64)[:, :3].copy()
    t = np.linalg.solve(K, np.asarray(P, np.float64)[:, 3])
    return K, t


def kitti_camera(calib: Dict[str, np.ndarray], cam: str = "P2") -> Tuple[np.ndarray, np.ndarray]:
    """(K, T_cam_grid) of a KITTI camera, the grid frame being the velodyne frame."""
    K, t = split_projection(calib[cam])
    shift = np.eye(4)
    shift[:3, 3] = t
    return K, shift @ calib["Tr"]


def stereo_baseline(P_left: np.ndarray, P_right: np.ndarray) -> float:
    """Baseline in metres between two rectified cameras, from their projection matrices (positive when the
    right camera is to the right of the left one)."""
    fx = float(P_left[0, 0])
    return float(P_left[0, 3] - P_right[0, 3]) / fx


def intrinsics_from_k_p(k: np.ndarray, p: np.ndarray) -> np.ndarray:
    """3x3 intrinsics of a *rectified* image from a CameraInfo: P[:3, :3] (row-major 12), or K (row-major 9) when
    P is all zeros. In ROS, K and D describe the raw sensor image and P the rectified one (``image_rect``), so P
    comes first.

    Raises ValueError when neither holds a usable pinhole matrix (zero/NaN focal lengths).
    """
    K = np.asarray(p, np.float64).reshape(3, 4)[:, :3].copy()
    if not np.any(K):
        K = np.asarray(k, np.float64).reshape(3, 3)
    with np.errstate(all="ignore"):
        scaled = K / K[2, 2]
    # checked after scaling: a negative K[2,2] would otherwise flip the focal lengths' signs unnoticed
    if (not np.all(np.isfinite(K))) or K[2, 2] == 0 or not np.all(np.isfinite(scaled)) or scaled[0, 0] <= 0 \
            or scaled[1, 1] <= 0 or np.any(scaled[2, :2] != 0):
        raise ValueError(f"unusable camera intrinsics (K and P give fx={K[0, 0]}, fy={K[1, 1]}, "
                         f"last row {K[2].tolist()})")
    return scaled


# ------------------------------------------------------------------------------ training data (datasets)
def read_kitti_poses(path: Union[str, Path]) -> np.ndarray:
    """KITTI odometry poses.txt -> (N, 4, 4): pose i maps camera-0 coordinates of frame i into the world
    (the camera-0 frame of frame 0)."""
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 12:
        raise ValueError(f"{path}: {rows.shape[1]} values per line, expected 12")
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def velo_to_velo(pose_src: np.ndarray, pose_dst: np.ndarray, Tr: np.ndarray) -> np.ndarray:
    """4x4 transform taking velodyne points of the ``src`` frame into the velodyne frame of ``dst``.

    Poses are camera-0 poses (read_kitti_poses), ``Tr`` maps velodyne -> camera 0:
    velo_src -> cam_src (Tr) -> world (pose_src) -> cam_dst (pose_dst^-1) -> velo_dst (Tr^-1).
    """
    return np.linalg.inv(Tr) @ np.linalg.inv(pose_dst) @ pose_src @ Tr


# ------------------------------------------------------------------------- ROS messages and bags (rostools)
def rotation_to_quaternion(R: np.ndarray) -> Tuple[float, float, float, float]:
    """3x3 rotation matrix -> unit quaternion (x, y, z, w) with w >= 0, as geometry_msgs/Quaternion wants.

    The matrix is first projected onto the nearest rotation (SVD) so a slightly non-orthogonal calibration such
    as KITTI's ``Tr`` still gives a unit quaternion. Uses the largest-diagonal branch for numerical stability.
    """
    u, _, vt = np.linalg.svd(np.asarray(R, np.float64)[:3, :3])
    m = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def quaternion_to_rotation(q: Tuple[float, float, float, float]) -> np.ndarray:
    """Quaternion (x, y, z, w) -> 3x3 rotation matrix (normalises the quaternion first)."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def voxel_centers_in_frame(flat: np.ndarray, grid: GridSpec, T_frame_grid: Optional[np.ndarray] = None,
                           out: Optional[np.ndarray] = None) -> np.ndarray:
    """C-order flat voxel indices (N,) -> (N, 3) float32 voxel centres in the frame ``T_frame_grid`` (4x4) maps the
    grid into (the grid frame when None). The same numbers as ``transform_points(T, voxel_center_of_flat(...))``,
    spelt as three multiply-adds per coordinate on the integer indices: numpy hands (N, 3) @ (3, 3) to a threaded
    BLAS, which costs ten times more on a busy 2-core machine. ``out`` may be any (N, 3) float32 view, e.g. the
    x, y, z columns of a point record array."""
    T = np.eye(4) if T_frame_grid is None else np.asarray(T_frame_grid, np.float64).reshape(4, 4)
    A = T[:3, :3] * grid.voxel_size
    b = T[:3, :3] @ (np.asarray(grid.origin, np.float64) + 0.5 * grid.voxel_size) + T[:3, 3]
    ix, iy, iz = (axis.astype(np.float64) for axis in unravel_flat(flat, grid.dims))
    if out is None:
        out = np.empty((ix.size, 3), np.float32)
    elif out.shape != (ix.size, 3):
        raise ValueError(f"out has shape {out.shape}, expected {(ix.size, 3)}")
    for r in range(3):  # in place, in the order of ix * a + iy * b + iz * c + d: the same rounding, no temporaries
        v = ix * A[r, 0]
        v += iy * A[r, 1]
        v += iz * A[r, 2]
        v += b[r]
        out[:, r] = v
    return out


def voxel_center_of_flat(flat: np.ndarray, grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """C-order flat voxel indices (N,) -> (N, 3) float64 voxel-centre coordinates in the grid frame."""
    axes = unravel_flat(flat, grid.dims)
    out = np.empty((axes[0].size, 3), np.float64)
    for a in range(3):  # column by column: no (N, 3) int stack and no broadcast temporaries
        v = axes[a] + 0.5
        v *= grid.voxel_size
        v += float(grid.origin[a])
        out[:, a] = v
    return out


def unravel_flat(flat: np.ndarray, dims: Tuple[int, ...]) -> Tuple[np.ndarray, ...]:
    """``np.unravel_index(flat, dims)`` (int64, C order; out-of-range indices raise). When every axis after the
    first has a power-of-two size (256 x 256 x 32 has) it is shifts and masks: 6x cheaper than the divisions."""
    flat = np.asarray(flat, np.int64).reshape(-1)
    bits = [int(d).bit_length() - 1 for d in dims[1:]]
    if any(1 << k != d for k, d in zip(bits, dims[1:])):
        return np.unravel_index(flat, dims)
    if flat.size and (flat.min() < 0 or flat.max() >= int(np.prod(dims))):
        raise ValueError(f"flat voxel index outside [0, {int(np.prod(dims))}) for dims {tuple(dims)}")
    axes = [flat >> sum(bits)]
    for i, k in enumerate(bits):  # axis i + 1 sits above the bits of the axes after it
        axes.append((flat >> sum(bits[i + 1:])) & ((1 << k) - 1))
    return tuple(axes)
