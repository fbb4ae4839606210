"""The 3D pictures (issue 16): open3d ray-cast voxel renders of real seq 08 ground truth and a synthetic prediction,
the matplotlib fallback, the right/wrong map and the exposed-face geometry behind both."""
from __future__ import annotations

import numpy as np
import pytest

from scanssc_ros import render_o3d
from scanssc_ros.data.labels_io import load_label_config
from scanssc_ros.data.sparse_gt import sequence_sparse_gt
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec, kitti_camera, read_kitti_calib
from scanssc_ros.labels import IGNORE, SEMANTIC_KITTI
from scanssc_ros.render import OUTCOMES, error_bev, render_grid, renderer_line
from scanssc_ros.render_o3d import UNSEEN_FLOOR, SensorCamera
from scanssc_ros.voxel_mesh import exposed_faces, floor_quads

COLORS = SEMANTIC_KITTI.color_table()
ROAD, SIDEWALK, CAR, BUILDING, VEGETATION = (SEMANTIC_KITTI.classes.index(n) for n in
                                             ("road", "sidewalk", "car", "building", "vegetation"))


@pytest.fixture()
def renderer_choice(monkeypatch):
    """Set SCANSSC_RENDERER for one test; the process-wide decision is re-made before and after."""
    def choose(value: str):
        monkeypatch.setenv("SCANSSC_RENDERER", value)
        render_o3d.reset_renderer()
        return render_o3d.get_renderer()

    yield choose
    render_o3d.reset_renderer()


def _open3d_renderer(choose):
    pytest.importorskip("open3d", reason="open3d not installed (`make setup` installs open3d-cpu)")
    renderer, why = choose("auto")
    if renderer is None:
        pytest.skip(f"open3d present but unusable here: {why}")
    return renderer


def synthetic_prediction(grid: GridSpec = SEMANTIC_KITTI_GRID) -> np.ndarray:
    """A street: road with sidewalks on ground layer 1, a car, a building, a tree crown; out-of-view (x < 6 m)
    unknown, as the node publishes it."""
    g = np.zeros(grid.dims, np.uint8)
    g[:, 100:156, 1] = ROAD
    g[:, 80:100, 1] = SIDEWALK
    g[:, 156:176, 1] = SIDEWALK
    g[60:80, 110:120, 2:8] = CAR
    g[100:180, 60:80, 2:25] = BUILDING
    g[120:140, 180:200, 8:16] = VEGETATION
    g[:30] = IGNORE
    return g


def _class_pixels(img: np.ndarray, cls: int) -> int:
    """Pixels of the class's exact colour: the top faces (shade 1.0) of its voxels away from their edges."""
    return int(np.all(img == COLORS[cls], axis=-1).sum())


def test_exposed_faces_of_a_block_and_floor_runs():
    grid = GridSpec((0.0, 0.0, 0.0), 1.0, (4, 4, 4))
    occ = np.zeros(grid.dims, bool)
    occ[1:3, 1, 1] = True  # two voxels side by side: 12 faces minus the 2 they share
    faces = exposed_faces(occ, grid)
    assert len(faces) == 10 and faces.vertices.shape == (40, 3)
    assert len(exposed_faces(occ, grid, scale=0.5)) == 12  # shrunken cubes no longer touch
    occ[:] = True  # a full grid keeps its outside: 6 sides of 4x4 faces
    assert len(exposed_faces(occ, grid)) == 96
    cols = np.zeros((3, 5), bool)
    cols[0, 1:4] = cols[2, 0] = cols[2, 2:] = True
    quads = floor_quads(cols, grid)
    assert len(quads) == 3  # runs along y, one quad each
    assert np.isclose(np.abs(np.diff(quads[:, :, 1], axis=1)).max(axis=1).sum(), 3 + 1 + 3)


def test_open3d_renders_real_seq08_ground_truth_and_synthetic_prediction(kitti_seq, renderer_choice):
    renderer = _open3d_renderer(renderer_choice)
    cfg = load_label_config(kitti_seq.parents[1] / "semantic-kitti.yaml")
    truth, _ = sequence_sparse_gt(kitti_seq, 0, cfg, v1_z_shift=True)
    K, T = kitti_camera(read_kitti_calib(kitti_seq / "calib.txt"))
    camera = SensorCamera(K, T, (370, 1226))
    img = renderer.render(truth, COLORS, SEMANTIC_KITTI_GRID, camera, "behind", sparse=True)
    h, w = renderer.size[1], renderer.size[0]
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    drawn = ~np.all(img == 255, axis=-1)
    assert drawn.mean() > 0.3, "the render is mostly blank"
    # every big class of the scan shows up in its own colour; road and sidewalk fill a good part of the picture
    pixels = {c: _class_pixels(img, c) for c in (ROAD, SIDEWALK, CAR, BUILDING, VEGETATION)}
    assert all(n > 200 for n in pixels.values()), pixels
    assert pixels[ROAD] + pixels[SIDEWALK] > 0.015 * h * w, pixels
    assert np.all(img == UNSEEN_FLOOR.astype(np.uint8), axis=-1).sum() > 0.05 * h * w  # .invalid: grey floor
    assert (img.max(axis=-1) < 40).sum() > 500  # the frustum's dark lines

    pred = synthetic_prediction()
    for view in render_o3d.VIEWS:
        img = renderer.render(pred, COLORS, SEMANTIC_KITTI_GRID, camera, view)
        pixels = {c: _class_pixels(img, c) for c in (ROAD, SIDEWALK, CAR, BUILDING, VEGETATION)}
        assert all(n > 100 for n in pixels.values()), (view, pixels)
        assert np.all(img == UNSEEN_FLOOR.astype(np.uint8), axis=-1).sum() > 1000, view  # x < 6 m is unknown
    # the building stands 4.6 m tall: from behind and above, its shaded walls (not only its roof) are drawn
    img = renderer.render(pred, COLORS, SEMANTIC_KITTI_GRID, camera, "behind")
    walls = [np.all(np.abs(img.astype(int) - COLORS[BUILDING] * s) <= 1, axis=-1).sum() for s in (0.62, 0.80)]
    assert sum(walls) > 500, walls


def test_render_grid_png_with_ground_truth_panels(tmp_path, renderer_choice, kitti_seq):
    _open3d_renderer(renderer_choice)
    cv2 = pytest.importorskip("cv2")
    pred = synthetic_prediction()
    truth = np.where(pred == IGNORE, 0, pred)
    K, T = kitti_camera(read_kitti_calib(kitti_seq / "calib.txt"))
    png = render_grid(pred, COLORS, tmp_path / "f.png", 0.2, image=np.full((370, 1226, 3), 90, np.uint8),
                      title="t", class_names=SEMANTIC_KITTI.classes, target=truth,
                      camera=SensorCamera(K, T, (370, 1226)))
    img = cv2.imread(str(png))[..., ::-1]
    assert img.shape[1] == 1280 and img.shape[0] > 1000
    # road pixels in both 3D panels: the left (prediction) and right (ground truth) halves
    road = np.all(img == COLORS[ROAD], axis=-1)
    assert road[:, :640].sum() > 2000 and road[:, 640:].sum() > 2000
    assert "ray casting" in renderer_line()


def test_matplotlib_fallback_when_forced(tmp_path, renderer_choice):
    renderer, why = renderer_choice("matplotlib")
    assert renderer is None and "SCANSSC_RENDERER=matplotlib" in why
    assert renderer_line().startswith("3D views: matplotlib isometric fallback")
    pred = synthetic_prediction()[::4, ::4, ::4]
    png = render_grid(pred, COLORS, tmp_path / "m.png", 0.8, title="fallback", target=pred, target_sparse=True)
    assert png.stat().st_size > 10_000


def test_error_bev_outcomes_dense_and_sparse():
    truth = np.zeros((1, 5, 3), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 0, 0], pred[0, 0, 0] = ROAD, ROAD  # right
    truth[0, 1, 0], pred[0, 1, 0] = ROAD, CAR  # wrong class
    truth[0, 2, 0] = CAR  # missed
    pred[0, 3, 0] = CAR  # predicted where the truth is empty
    truth[0, 4, :] = IGNORE  # nothing known
    colours = {name: np.asarray(c, np.uint8) for name, c in OUTCOMES}
    dense = error_bev(pred, truth)[0, ::-1]  # undo the left-right flip of the picture
    assert [tuple(c) for c in dense[:4]] == [tuple(colours[n]) for n in
                                             ("right class", "wrong class", "missed", "false occupied")]
    assert tuple(dense[4]) == (190, 190, 190)
    sparse = error_bev(pred, truth, sparse=True)[0, ::-1]
    assert tuple(sparse[3]) == (255, 255, 255)  # a sparse truth's empty voxel was not seen free: not scored
    pred[0, 2, :] = IGNORE  # outside the camera's view: not a miss
    assert tuple(error_bev(pred, truth)[0, ::-1][2]) == (190, 190, 190)
