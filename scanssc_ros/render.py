"""PNG renders of a semantic voxel grid with matplotlib only (Agg backend; no display, no open3d).

Two views of one (X, Y, Z) label grid (x forward, y left, z up, as everywhere in this package):
- bird's-eye view: the class of the highest occupied voxel of each column; the car is at the bottom centre,
  forward is up, left is left; grey where the column holds unknown (unseen) voxels and nothing occupied.
- isometric view: the visible surface voxels (occupied with at least one free 6-neighbour), projected
  orthographically from behind-left and above the car and drawn back to front as squares, darker lower down.
Both take well under a second for the 256x256x32 grid (the surface is subsampled to ``max_points``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from scanssc_ros.labels import EMPTY, IGNORE
from scanssc_ros.voxels import exposed_mask, occupied_mask

BACKGROUND = (255, 255, 255)
UNSEEN = (190, 190, 190)


def bev_image(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(X, Y) RGB image, row 0 = far (x max), column 0 = left (y max); empty columns are white, columns with
    nothing occupied and some unknown (255: outside the camera's view) voxels grey."""
    occ = occupied_mask(labels)
    z = labels.shape[2]
    top = z - 1 - np.argmax(occ[:, :, ::-1], axis=2)  # highest occupied index per column
    free = ~occ.any(axis=2)
    cls = np.where(free, EMPTY, np.take_along_axis(labels, top[..., None], axis=2)[..., 0])  # 255 has no colour
    rgb = np.asarray(colors, np.uint8)[cls]
    rgb[free] = BACKGROUND
    rgb[free & (labels == IGNORE).any(axis=2)] = UNSEEN
    return rgb[::-1, ::-1]


def isometric_points(labels: np.ndarray, voxel_size: float, azimuth_deg: float = 35.0,
                     elevation_deg: float = 35.0, max_points: int = 60000,
                     seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screen (u, v) of the surface voxels sorted far to near, their voxel indices and the (N, 3) indices kept."""
    idx = np.argwhere(exposed_mask(occupied_mask(labels)))
    if len(idx) > max_points:
        idx = idx[np.sort(np.random.default_rng(seed).choice(len(idx), max_points, replace=False))]
    p = (idx + 0.5) * voxel_size
    a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    x_rot = p[:, 0] * np.cos(a) + p[:, 1] * np.sin(a)
    y_rot = -p[:, 0] * np.sin(a) + p[:, 1] * np.cos(a)
    u = -y_rot
    v = p[:, 2] * np.cos(e) + x_rot * np.sin(e)
    depth = x_rot * np.cos(e) - p[:, 2] * np.sin(e)
    order = np.argsort(-depth, kind="stable")
    return u[order], v[order], idx[order]


def render_grid(labels: np.ndarray, colors: np.ndarray, path: Union[str, Path], voxel_size: float,
                image: Optional[np.ndarray] = None, title: str = "",
                class_names: Optional[Sequence[str]] = None, max_points: int = 60000) -> Path:
    """Write a PNG with the BEV and isometric views (and the input image above them when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = np.asarray(colors, np.uint8)
    if image is not None:
        fig = plt.figure(figsize=(13, 8.5))
        grid = fig.add_gridspec(2, 2, height_ratios=[1, 2.2])
        ax_img = fig.add_subplot(grid[0, :])
        ax_img.imshow(image)
        ax_img.set_axis_off()
        ax_bev, ax_iso = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    else:
        fig, (ax_bev, ax_iso) = plt.subplots(1, 2, figsize=(13, 6))
    X, Y, _ = labels.shape
    ext = (Y * voxel_size / 2, -Y * voxel_size / 2, 0.0, X * voxel_size)
    ax_bev.imshow(bev_image(labels, colors), extent=ext, interpolation="nearest")
    ax_bev.set_xlabel("y (m, left positive)")
    ax_bev.set_ylabel("x (m, forward)")
    ax_bev.set_title("bird's-eye view")

    u, v, idx = isometric_points(labels, voxel_size, max_points=max_points)
    ax_iso.set_aspect("equal")
    ax_iso.set_axis_off()
    ax_iso.set_title("isometric view")
    if len(u):
        shade = 0.55 + 0.45 * (idx[:, 2] + 0.5) / labels.shape[2]
        rgb = colors[labels[idx[:, 0], idx[:, 1], idx[:, 2]]] / 255.0 * shade[:, None]
        span = max(np.ptp(u), np.ptp(v), voxel_size)
        ax_iso.set_xlim(u.min() - voxel_size, u.max() + voxel_size)
        ax_iso.set_ylim(v.min() - voxel_size, v.max() + voxel_size)
        width_pt = ax_iso.get_position().width * fig.get_figwidth() * 72
        size = (1.6 * voxel_size / span * width_pt) ** 2
        ax_iso.scatter(u, v, s=size, c=np.clip(rgb, 0, 1), marker="s", linewidths=0)
    present = [int(c) for c in np.unique(labels) if c not in (EMPTY, IGNORE) and c < len(colors)]
    if class_names is not None and present:
        handles = [Patch(color=colors[c] / 255.0, label=class_names[c]) for c in present if c < len(class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
