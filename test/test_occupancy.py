"""Bird's-eye occupancy (Nav2 convention) from voxel grids: the rule on hand-built columns, coarser cells, and
the real sequence-08 LiDAR-labelled voxels."""
from __future__ import annotations

import numpy as np
import pytest

from scanssc_ros.geometry import GridSpec
from scanssc_ros.labels import SEMANTIC_KITTI
from scanssc_ros.occupancy import DEFAULT_TRAVERSABLE, OCCUPIED, UNKNOWN, OccupancyRule, occupancy, occupancy_data

GRID = GridSpec((0.0, -1.0, -2.0), 0.2, (10, 10, 32))  # 2 m x 2 m, z from -2 m in 0.2 m layers
ROAD, CAR, VEG, POLE = 9, 1, 15, 18


def _rule(**kw) -> OccupancyRule:
    return OccupancyRule.from_names(DEFAULT_TRAVERSABLE, SEMANTIC_KITTI.classes, **kw)


def _layer(z: float) -> int:
    return int(round((z - GRID.origin[2]) / GRID.voxel_size))


def test_rule_on_hand_built_columns():
    labels = np.zeros(GRID.dims, np.uint8)
    road_top = _layer(-1.8)  # road voxels fill [-2.0, -1.8): ground at -1.8 m
    labels[:, :, :road_top] = ROAD
    labels[1, 1, _layer(-1.6):_layer(-0.4)] = CAR  # a car standing 0.2 m above the road: occupied
    labels[2, 2, _layer(1.0):_layer(2.0)] = VEG  # a tree canopy 2.8 m above the road, no trunk: above the band
    labels[3, 3, road_top] = POLE  # a kerb-like obstacle right on the road, under the 0.1 m band start
    labels[4, 4, :] = 255  # a column the camera never saw
    labels[5, 5, :] = 0  # nothing at all: no evidence of ground either
    labels[6, 6, :road_top] = 255  # no ground seen, a pole in the band above the default ground
    labels[6, 6, _layer(-1.6):_layer(0.0)] = POLE
    cells = occupancy(labels, GRID, _rule(ground_z=-1.8))
    assert cells.dtype == np.int8 and cells.shape == (10, 10)
    assert cells[1, 1] == OCCUPIED and cells[6, 6] == OCCUPIED
    assert cells[2, 2] == 0 and cells[3, 3] == 0 and cells[0, 0] == 0
    assert cells[4, 4] == UNKNOWN and cells[5, 5] == UNKNOWN
    # the band is a parameter: a low robot passes under nothing, a tall one is blocked by the canopy
    assert occupancy(labels, GRID, _rule(ground_z=-1.8, band=(0.1, 3.5)))[2, 2] == OCCUPIED


def test_confidence_cells_and_coarser_resolution():
    labels = np.zeros(GRID.dims, np.uint8)
    labels[:, :, :1] = ROAD
    labels[1, 1, 2:5] = CAR
    conf = np.full(GRID.dims, 255, np.uint8)
    conf[1, 1, 2:5] = 128
    assert occupancy(labels, GRID, _rule(use_confidence=True), conf)[1, 1] == 50
    labels[9, 9, :] = 255
    coarse = occupancy(labels, GRID, _rule(factor=2))
    assert coarse.shape == (5, 5) and coarse[0, 0] == OCCUPIED and coarse[4, 4] == 0  # free beats unknown
    labels[8:10, 8:10, :] = 255
    assert occupancy(labels, GRID, _rule(factor=2))[4, 4] == UNKNOWN
    with pytest.raises(ValueError, match="does not divide"):
        occupancy(labels, GRID, _rule(factor=3))
    with pytest.raises(ValueError, match="unknown traversable classes"):
        OccupancyRule.from_names(["road", "lava"], SEMANTIC_KITTI.classes)


def test_occupancy_grid_data_order_is_x_fastest():
    cells = np.arange(6, dtype=np.int8).reshape(3, 2)  # (X=3, Y=2)
    assert occupancy_data(cells).tolist() == [0, 2, 4, 1, 3, 5]  # row y=0: x = 0, 1, 2


def test_real_sequence_08_road_free_and_cars_occupied(shared_data, kitti_seq):
    from scanssc_ros.data.labels_io import load_label_config
    from scanssc_ros.data.sparse_gt import sequence_sparse_gt
    from scanssc_ros.geometry import SEMANTIC_KITTI_GRID

    cfg = load_label_config(shared_data / "semantickitti-mini" / "semantic-kitti.yaml")
    gt, _ = sequence_sparse_gt(kitti_seq, 0, cfg, offsets=range(10), v1_z_shift=True)
    cells = occupancy(gt, SEMANTIC_KITTI_GRID, _rule())
    car_cols = (gt == CAR).any(axis=2)
    road_only = (gt == ROAD).any(axis=2) & ~((gt != 0) & (gt != 255) & (gt != ROAD)).any(axis=2)
    assert car_cols.sum() > 200 and road_only.sum() > 2000
    assert (cells[car_cols] == OCCUPIED).mean() > 0.9
    assert (cells[road_only] == 0).mean() > 0.99
    # a few cells by metric position: the road straight ahead, and the parked car nearest the ego car
    def cell(x: float, y: float):
        return cells[int((x - 0.0) / 0.2), int((y + 25.6) / 0.2)]
    assert cell(8.0, 0.0) == 0 and cell(15.0, 0.0) == 0
    ix, iy = np.argwhere(car_cols)[np.argmin(np.hypot(*(np.argwhere(car_cols) * 0.2 - [0, 25.6]).T))]
    assert cells[ix, iy] == OCCUPIED and ix * 0.2 < 20.0
