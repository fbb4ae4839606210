"""PNG pictures of a semantic voxel grid: shaded 3D views, bird's-eye views, right/wrong and occupancy maps.

One figure per frame (x forward, y left, z up, as everywhere in this package):
- the input image, when given;
- 3D: the prediction, and beside it the ground truth when there is one, as shaded voxel cubes seen from behind
  and above the camera, with the camera's frustum and unseen space as a grey floor (``render_o3d``: open3d ray
  casting). Without open3d the 3D panels fall back to matplotlib: the visible surface voxels projected
  orthographically from behind-left and drawn back to front as squares (``isometric_points``);
- bird's-eye views: the class of the highest occupied voxel of each column (the car at the bottom centre,
  forward up, left left; grey where the column holds unknown voxels and nothing occupied), of the prediction and
  of the ground truth; with ground truth a right/wrong map (``error_bev``); and the planner's occupancy grid of the
  prediction (``scanssc_ros.occupancy``: free white, occupied black, unknown grey).
LiDAR-sparse ground truth (the labelled scan voxelized, KITTI without dense labels) is drawn as small separate
cubes and scored only where it has a label: its empty voxels were not observed as free.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec
from scanssc_ros.labels import EMPTY, IGNORE, SEMANTIC_KITTI
from scanssc_ros.occupancy import DEFAULT_TRAVERSABLE, FREE, UNKNOWN, OccupancyRule, occupancy
from scanssc_ros.render_o3d import SensorCamera, get_renderer
from scanssc_ros.voxels import exposed_mask, occupied_mask

LOG = logging.getLogger("scanssc_ros.render")
BACKGROUND = (255, 255, 255)
UNSEEN = (190, 190, 190)
# right/wrong map: per column, the most frequent outcome among its scored voxels
OUTCOMES = (("right class", (40, 160, 60)), ("wrong class", (220, 30, 30)), ("missed", (255, 160, 0)),
            ("false occupied", (40, 90, 230)))


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


def error_bev(pred: np.ndarray, target: np.ndarray, sparse: bool = False) -> np.ndarray:
    """(X, Y) RGB right/wrong map, oriented like ``bev_image``. Scored voxels: those the ground truth knows (not
    255) and the prediction covers (not 255: outside the camera's view nothing can be right or wrong); "false
    occupied" (predicted occupied where the truth is empty) only for dense ground truth, since an empty voxel of a
    LiDAR-sparse truth may just be unobserved. White: nothing scored in the column; grey: no voxel of the column is
    known to both."""
    known = (target != IGNORE) & (pred != IGNORE)
    p_occ, t_occ = occupied_mask(pred), occupied_mask(target)
    both = known & p_occ & t_occ
    masks = [both & (pred == target), both & (pred != target), known & t_occ & ~p_occ]
    masks.append(known & p_occ & (target == EMPTY) if not sparse else np.zeros_like(known))
    counts = np.stack([m.sum(axis=2) for m in masks], axis=-1)
    rgb = np.asarray([c for _, c in OUTCOMES], np.uint8)[counts.argmax(axis=-1)]
    scored = counts.sum(axis=-1) > 0
    rgb[~scored] = BACKGROUND
    rgb[~scored & ~known.any(axis=2)] = UNSEEN
    return rgb[::-1, ::-1]


def occupancy_image(labels: np.ndarray, grid: GridSpec, class_names: Sequence[str]) -> np.ndarray:
    """(X, Y) RGB of the planner's occupancy (default rule of ``~/occupancy``), oriented like ``bev_image``."""
    names = [n for n in DEFAULT_TRAVERSABLE if n in class_names[1:]]
    cells = occupancy(labels, grid, OccupancyRule.from_names(names, class_names))
    rgb = np.zeros(cells.shape + (3,), np.uint8)  # occupied: black
    rgb[cells == FREE] = BACKGROUND
    rgb[cells == UNKNOWN] = UNSEEN
    return rgb[::-1, ::-1]


def renderer_line() -> str:
    """One line naming the renderer that draws the 3D views (open3d, or the matplotlib fallback and why)."""
    renderer, why = get_renderer()
    return f"3D views: {why}" if renderer is not None else f"3D views: matplotlib isometric fallback ({why})"


def render_grid(labels: np.ndarray, colors: np.ndarray, path: Union[str, Path], voxel_size: float,
                image: Optional[np.ndarray] = None, title: str = "",
                class_names: Optional[Sequence[str]] = None, max_points: int = 60000,
                target: Optional[np.ndarray] = None, target_sparse: bool = False,
                grid: Optional[GridSpec] = None, camera: Optional[SensorCamera] = None) -> Path:
    """Write the PNG described in the module docstring. ``target``: ground truth on the same grid (255 unknown),
    ``target_sparse`` when it is LiDAR-sparse; ``grid``: where the voxels lie (default: the SemanticKITTI volume at
    ``voxel_size``); ``camera``: the sensor camera, for the frustum and the 3D viewpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = np.asarray(colors, np.uint8)
    if grid is None:
        grid = GridSpec(SEMANTIC_KITTI_GRID.origin, voxel_size, tuple(labels.shape))
    names = list(class_names) if class_names is not None else list(SEMANTIC_KITTI.classes)
    if target is not None and target.shape != labels.shape:
        raise ValueError(f"ground truth {target.shape} and prediction {labels.shape} are on different grids")
    renderer, _ = get_renderer()
    gt_kind = "LiDAR-sparse: labelled scan voxelized, gaps unobserved" if target_sparse else "dense voxel labels"

    # (title, labels, viewpoint, sparse) of the 3D panels; (title, RGB, legend entries) of the map panels
    views: List[Tuple[str, np.ndarray, str, bool]] = [("prediction", labels, "behind", False)]
    if target is not None:
        views.append((f"ground truth ({gt_kind})", target, "behind", target_sparse))
    elif renderer is not None:
        views.append(("prediction from above", labels, "top", False))
    maps: List[Tuple[str, np.ndarray, Sequence[Tuple[str, Tuple[int, int, int]]]]] = [
        ("prediction, bird's-eye view", bev_image(labels, colors), ())]
    if target is not None:
        maps += [("ground truth, bird's-eye view", bev_image(target, colors), ()),
                 ("right / wrong per column" + (" (labelled voxels only)" if target_sparse else ""),
                  error_bev(labels, target, target_sparse), OUTCOMES[:3] if target_sparse else OUTCOMES)]
    maps.append(("occupancy of the prediction", occupancy_image(labels, grid, names),
                 (("free", BACKGROUND), ("occupied", (0, 0, 0)), ("unknown", UNSEEN))))

    # row heights in inches for a 16-inch-wide figure: each row as tall as its panels at their own aspect
    width = 16.0
    rows = ([width * 0.96 * image.shape[0] / image.shape[1]] if image is not None else []) + \
        [width * 0.96 / len(views) * 0.64 + 0.2, width / 4 * 0.8 + 0.7]
    height = sum(rows) + 1.3
    fig = plt.figure(figsize=(width, height))
    outer = fig.add_gridspec(len(rows), 1, height_ratios=rows, hspace=0.1, left=0.04, right=0.98,
                             top=1 - 0.5 / height, bottom=0.8 / height)
    row = 0
    if image is not None:
        ax = fig.add_subplot(outer[0])
        ax.imshow(image)
        ax.set_axis_off()
        row = 1
    top = outer[row].subgridspec(1, len(views), wspace=0.02)
    for k, (name, grid_labels, view, sparse) in enumerate(views):
        ax = fig.add_subplot(top[k])
        ax.set_axis_off()
        ax.set_anchor("N")  # right under its title
        ax.set_title(name, fontsize=10)
        if renderer is not None:
            ax.imshow(renderer.render(grid_labels, colors, grid, camera, view, sparse=sparse))
        else:
            _draw_isometric(ax, fig, grid_labels, colors, voxel_size, max_points)
    bottom = outer[row + 1].subgridspec(1, 4, wspace=0.3)
    ext = (grid.upper[1], grid.origin[1], grid.origin[0], grid.upper[0])  # left = +y, far = up
    for k, (name, rgb, legend) in enumerate(maps):
        ax = fig.add_subplot(bottom[k])
        ax.imshow(rgb, extent=ext, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.set_xlabel("y (m, left positive)", fontsize=8)
            ax.set_ylabel("x (m, forward)", fontsize=8)
        if legend:
            ax.legend(handles=[Patch(facecolor=np.asarray(c) / 255.0, edgecolor="k", linewidth=0.3, label=n)
                               for n, c in legend], fontsize=6, loc="upper right", framealpha=0.8)
    present = sorted({int(c) for g in (labels, target) if g is not None for c in np.unique(g)
                      if c not in (EMPTY, IGNORE) and c < min(len(colors), len(names))})
    if present:
        handles = [Patch(color=colors[c] / 255.0, label=names[c]) for c in present]
        handles.append(Patch(color=np.asarray(UNSEEN) / 255.0, label="unseen / unknown"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _draw_isometric(ax, fig, labels: np.ndarray, colors: np.ndarray, voxel_size: float, max_points: int) -> None:
    u, v, idx = isometric_points(labels, voxel_size, max_points=max_points)
    ax.set_aspect("equal")
    if not len(u):
        return
    shade = 0.55 + 0.45 * (idx[:, 2] + 0.5) / labels.shape[2]
    rgb = colors[labels[idx[:, 0], idx[:, 1], idx[:, 2]]] / 255.0 * shade[:, None]
    span = max(np.ptp(u), np.ptp(v), voxel_size)
    ax.set_xlim(u.min() - voxel_size, u.max() + voxel_size)
    ax.set_ylim(v.min() - voxel_size, v.max() + voxel_size)
    width_pt = ax.get_position().width * fig.get_figwidth() * 72
    size = (1.6 * voxel_size / span * width_pt) ** 2
    ax.scatter(u, v, s=size, c=np.clip(rgb, 0, 1), marker="s", linewidths=0)
