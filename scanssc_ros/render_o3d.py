"""Shaded voxel renders with open3d's ray casting (``RaycastingScene``, Embree on the CPU; no display, no GPU).

The SSC-paper look: a label grid becomes the exposed faces of its occupied voxels (``voxel_mesh``), coloured by
class, shaded by face direction and outlined at the voxel edges where a voxel covers more than a few pixels;
columns that hold unknown voxels (255) and nothing occupied become a faint grey floor; the camera (a small frustum
pyramid, and on the floor the wedge of its field of view out to the grid's edge) and the grid's outline are drawn
over it. Viewpoints (``VIEWS``): ``behind`` (behind and above the
camera, looking forward and down) and ``top`` (straight down, forward up, left on the left, like the BEV).

Why rays and not open3d's Filament ``OffscreenRenderer``: on this project's 2-core machines (software Vulkan,
llvmpipe) the Filament renderer took 1.5-9 s per view and, in some views and under load, stalled for 130-180 s
in ``render_to_image``. One ray per pixel (450k rays for 800x560) took 0.2-0.5 s per view on the same loaded
machine, faces included, and always finishes.

``get_renderer`` decides once per process which renderer draws the 3D views and logs it in one line;
``SCANSSC_RENDERER=matplotlib`` forces the matplotlib fallback.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from scanssc_ros.geometry import GridSpec
from scanssc_ros.labels import IGNORE
from scanssc_ros.voxel_mesh import FACE_SHADE, exposed_faces, floor_quads, quad_triangles
from scanssc_ros.voxels import occupied_mask

LOG = logging.getLogger("scanssc_ros.render")
VIEWS = ("behind", "top")
BACKGROUND = np.array([255, 255, 255], np.float32)
UNSEEN_FLOOR = np.array([222, 222, 222], np.float32)
FRUSTUM = (20, 20, 20)
OUTLINE = (170, 170, 170)
EDGE_DARKEN = 0.55
SPARSE_SCALE = 0.7  # cube size of LiDAR-sparse ground truth voxels: the gaps say "samples", not solid surfaces


@dataclass(frozen=True)
class SensorCamera:
    """The camera that took the image: draws its frustum and anchors the ``behind`` viewpoint."""

    K: np.ndarray  # (3, 3)
    T_cam_grid: np.ndarray  # (4, 4) grid frame -> optical frame
    image_hw: Tuple[int, int]

    @property
    def center(self) -> np.ndarray:
        return np.linalg.inv(np.asarray(self.T_cam_grid, np.float64))[:3, 3]

    def corner_rays(self) -> np.ndarray:
        """(4, 3) grid-frame directions through the image corners (unit depth along the optical axis)."""
        h, w = self.image_hw
        uv1 = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
        rays = uv1 @ np.linalg.inv(np.asarray(self.K, np.float64)).T
        return rays @ np.linalg.inv(np.asarray(self.T_cam_grid, np.float64))[:3, :3].T


@dataclass(frozen=True)
class ViewCamera:
    """A virtual pinhole camera (OpenCV axes: x right, y down, z forward) looking from ``eye`` at ``target``."""

    K: np.ndarray
    R: np.ndarray  # world -> camera rotation
    eye: np.ndarray
    size: Tuple[int, int]  # (width, height)

    @classmethod
    def look_at(cls, eye, target, up, fov_y_deg: float, size: Tuple[int, int]) -> ViewCamera:
        eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
        forward = (target - eye) / np.linalg.norm(target - eye)
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        w, h = size
        f = (h / 2) / np.tan(np.radians(fov_y_deg) / 2)
        K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
        return cls(K, np.stack([right, down, forward]), eye, size)

    def rays(self) -> np.ndarray:
        """(H, W, 6) float32 rays through the pixel centres, unit length along the viewing axis."""
        w, h = self.size
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(self.K).T
        dirs = pix @ self.R  # camera -> world: R^T applied to row vectors
        return np.concatenate([np.broadcast_to(self.eye, dirs.shape), dirs], -1).astype(np.float32)

    def project(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        cam = (np.asarray(points, np.float64) - self.eye) @ self.R.T
        return cam[:, :2] / cam[:, 2:3] * [self.K[0, 0], self.K[1, 1]] + self.K[:2, 2], cam[:, 2]


class VoxelRenderer:
    """``render`` draws a label grid from one of ``VIEWS`` into an (H, W, 3) uint8 image."""

    def __init__(self, width: int = 800, height: int = 560) -> None:
        import open3d as o3d

        self._o3d = o3d
        self.size = (width, height)
        self.description = f"open3d {o3d.__version__} ray casting (RaycastingScene, CPU), {width}x{height}"

    def render(self, labels: np.ndarray, colors: np.ndarray, grid: GridSpec, camera: Optional[SensorCamera] = None,
               view: str = "behind", sparse: bool = False) -> np.ndarray:
        """``sparse``: draw voxels as shrunken cubes (LiDAR-sparse ground truth: gaps are not free space)."""
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; known: {VIEWS}")
        cam = view_camera(view, grid, camera, self.size)
        # shrunken cubes alias into moire patterns from far above: only the oblique view shows the gaps
        scale = SPARSE_SCALE if sparse and view == "behind" else 1.0
        occ = occupied_mask(labels)
        faces = exposed_faces(occ, grid, scale)
        unseen = ~occ.any(axis=2) & (labels == IGNORE).any(axis=2)
        floor = floor_quads(unseen, grid, grid.origin[2] - 0.01)  # just under voxels standing on the bottom
        quads = np.concatenate([faces.vertices.reshape(-1, 4, 3), floor])
        rays = cam.rays()
        hit_t, quad = self._cast(quads, rays)
        w, h = self.size
        rgb = np.broadcast_to(BACKGROUND, (h * w, 3)).copy()
        hit = np.isfinite(hit_t)
        on_floor = hit & (quad >= len(faces))
        rgb[on_floor] = UNSEEN_FLOOR
        on_voxel = np.flatnonzero(hit & ~on_floor)
        if len(on_voxel):
            f = quad[on_voxel]
            vox = faces.voxel[f]
            cls = labels[vox[:, 0], vox[:, 1], vox[:, 2]]
            shade = FACE_SHADE[faces.direction[f]]
            # voxel edges: where the hit lies near the border of its face, darker, as long as a voxel spans
            # several pixels (farther away the outlines would swallow the colour)
            flat_rays = rays.reshape(-1, 6)[on_voxel].astype(np.float64)
            p = flat_rays[:, :3] + hit_t[on_voxel, None] * flat_rays[:, 3:]
            q = (p - np.asarray(grid.origin)) / grid.voxel_size - vox - 0.5  # -0.5..0.5 inside the voxel
            axis = faces.direction[f] // 2
            q[np.arange(len(q)), axis] = 0.0
            to_edge = scale / 2 - np.abs(q).max(axis=1)  # voxel units
            pixel = hit_t[on_voxel] / cam.K[1, 1] / grid.voxel_size  # voxel units per pixel at the hit
            edge = (to_edge < 0.9 * pixel) & (pixel < 0.3)
            shade = np.where(edge, shade * EDGE_DARKEN, shade)
            rgb[on_voxel] = np.asarray(colors, np.float32)[cls] * shade[:, None]
        img = np.clip(rgb, 0, 255).astype(np.uint8).reshape(h, w, 3)
        _draw_lines(img, cam, _box_edges(grid), OUTLINE)
        if camera is not None:
            # a white halo keeps the dark lines visible over dark classes (sidewalk, car)
            frustum = _frustum_edges(camera, grid)
            _draw_lines(img, cam, frustum, (255, 255, 255), thickness=4)
            _draw_lines(img, cam, frustum, FRUSTUM, thickness=2)
        return img

    def _cast(self, quads: np.ndarray, rays: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(t_hit (N,), quad index (N,)) of the first hit of each ray; inf and garbage where nothing was hit."""
        o3d = self._o3d
        w, h = self.size
        if len(quads) == 0:
            return np.full(h * w, np.inf), np.zeros(h * w, np.int64)
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(quads.reshape(-1, 3), np.float32)),
                            o3d.core.Tensor(quad_triangles(len(quads)).astype(np.uint32)))
        ans = scene.cast_rays(o3d.core.Tensor(rays))
        t = ans["t_hit"].numpy().reshape(-1)
        prim = ans["primitive_ids"].numpy().reshape(-1).astype(np.int64)
        return t, prim // 2


def view_camera(view: str, grid: GridSpec, camera: Optional[SensorCamera], size: Tuple[int, int]) -> ViewCamera:
    lo, hi = np.asarray(grid.origin, np.float64), np.asarray(grid.upper, np.float64)
    extent = hi - lo
    if view == "top":
        center = (lo + hi) / 2
        fov = 30.0
        height = 0.56 * extent[0] / np.tan(np.radians(fov / 2)) + hi[2]
        return ViewCamera.look_at([center[0], center[1], height], [center[0], center[1], lo[2]], [1, 0, 0], fov,
                                  size)
    cam = camera.center if camera is not None else np.array([lo[0], (lo[1] + hi[1]) / 2, lo[2] + 1.7])
    target = [cam[0] + 0.44 * extent[0], cam[1], lo[2]]
    eye = [cam[0] - 0.28 * extent[0], cam[1], lo[2] + 0.52 * extent[0]]
    return ViewCamera.look_at(eye, target, [0, 0, 1], 46.0, size)


def _box_edges(grid: GridSpec) -> np.ndarray:
    lo, hi = np.asarray(grid.origin, np.float64), np.asarray(grid.upper, np.float64)
    c = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    pairs = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    return np.stack([np.stack([c[a], c[b]]) for a, b in pairs])


def _frustum_edges(camera: SensorCamera, grid: GridSpec) -> np.ndarray:
    """Segments showing the camera: a small pyramid at its pose (as deep as 12 % of the grid) and, on the grid's
    floor, the wedge between the image's left and right borders out to the grid's edge (what the camera sees)."""
    c = camera.center
    lo, hi = np.asarray(grid.origin, np.float64), np.asarray(grid.upper, np.float64)
    depth = 0.12 * (hi[0] - lo[0])
    rays = camera.corner_rays()
    ends = c + depth * rays
    segs = [np.stack([c, e]) for e in ends] + [np.stack([ends[i], ends[(i + 1) % 4]]) for i in range(4)]
    for side in ((0, 3), (1, 2)):  # left border (top + bottom corner), right border
        d = rays[list(side)].mean(axis=0)
        d[2] = 0.0
        start = np.array([c[0], c[1], lo[2]])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.nanmin(np.maximum((lo - start) / d, (hi - start) / d)[:2])
        segs.append(np.stack([start, start + max(t, 0.0) * d]))
    return np.stack(segs)


def _draw_lines(img: np.ndarray, cam: ViewCamera, segments: Sequence[np.ndarray], color, thickness: int = 1) -> None:
    import cv2

    near = 0.1
    for a, b in segments:
        (_, za), (_, zb) = cam.project(a[None]), cam.project(b[None])
        if za[0] < near and zb[0] < near:
            continue
        if za[0] < near or zb[0] < near:  # cut the part behind the viewer
            s = (near - za[0]) / (zb[0] - za[0])
            a, b = (a + s * (b - a), b) if za[0] < near else (a, a + s * (b - a))
        (pa, _), (pb, _) = cam.project(a[None]), cam.project(b[None])
        cv2.line(img, tuple(int(v) for v in np.round(pa[0]).clip(-1e4, 1e4)),
                 tuple(int(v) for v in np.round(pb[0]).clip(-1e4, 1e4)), color, thickness, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------- lifecycle
_RENDERER: Optional[VoxelRenderer] = None
_REASON: Optional[str] = None  # why open3d is not used (None: not decided yet, or it is used)


def get_renderer() -> Tuple[Optional[VoxelRenderer], str]:
    """The process's open3d renderer, or None and the reason for the matplotlib fallback. Decided (and logged, in
    one line naming the renderer) on the first call."""
    global _RENDERER, _REASON
    if _RENDERER is not None:
        return _RENDERER, _RENDERER.description
    if _REASON is not None:
        return None, _REASON
    choice = os.environ.get("SCANSSC_RENDERER", "auto").strip().lower()
    if choice == "matplotlib":
        _REASON = "SCANSSC_RENDERER=matplotlib"
    elif choice not in ("auto", "open3d"):
        _REASON = f"unknown SCANSSC_RENDERER={choice!r} (auto, open3d, matplotlib)"
    else:
        try:
            _RENDERER = VoxelRenderer()
        except ImportError as exc:
            _REASON = f"open3d not importable ({exc}); `make setup` installs it and its Debian libraries"
        except OSError as exc:  # a shared library open3d links against is missing
            _REASON = f"open3d failed to load ({exc}); `make setup` installs its Debian libraries"
    if _RENDERER is not None:
        LOG.info("3D views: %s", _RENDERER.description)
        return _RENDERER, _RENDERER.description
    LOG.warning("3D views: matplotlib isometric fallback (%s)", _REASON)
    return None, _REASON


def reset_renderer() -> None:
    """Forget the decision: the next ``get_renderer`` reads ``SCANSSC_RENDERER`` again (tests switch renderers)."""
    global _RENDERER, _REASON
    _RENDERER, _REASON = None, None
