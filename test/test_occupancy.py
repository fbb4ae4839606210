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


def occupancy_reference(labels: np.ndarray, grid: GridSpec, rule: OccupancyRule, confidence=None) -> np.ndarray:
    """The rule column by column and voxel by voxel, with metric heights: slow and obvious."""
    X, Y, Z = labels.shape
    vs, z0 = grid.voxel_size, grid.origin[2]
    out = np.full((X, Y), UNKNOWN, np.int16)
    for x in range(X):
        for y in range(Y):
            col = labels[x, y].tolist()
            trav = [z for z in range(Z) if col[z] in rule.traversable]
            ground = z0 + (max(trav) + 1) * vs if trav else rule.ground_z
            best = None
            for z in range(Z):
                if col[z] in (0, 255) or col[z] in rule.traversable:
                    continue
                height = z0 + z * vs - ground  # the voxel's bottom face above the ground
                if rule.band[0] - 1e-6 * vs <= height <= rule.band[1] + 1e-6 * vs:
                    c = 255 if confidence is None else int(confidence[x, y, z])
                    best = c if best is None else max(best, c)
            if best is not None:
                out[x, y] = min(100, max(1, round(best * 100 / 255))) if rule.use_confidence else OCCUPIED
            elif trav:
                out[x, y] = 0
    f = rule.factor
    cells = np.full((X // f, Y // f), UNKNOWN, np.int16)
    for i in range(X // f):
        for j in range(Y // f):
            cells[i, j] = out[i * f:(i + 1) * f, j * f:(j + 1) * f].max()
    return cells.astype(np.int8)


def _random_grid(Z: int):
    rng = np.random.default_rng(Z)
    grid = GridSpec((0.0, 0.0, -1.7), 0.2, (16, 12, Z))
    # sparse columns, so single voxels at the band's edges decide cells; a fifth of the columns empty
    labels = rng.choice([ROAD, 10, 17, CAR, VEG, POLE, 255], size=grid.dims).astype(np.uint8)
    labels[rng.random(grid.dims) < 0.85] = 0
    labels[rng.random(grid.dims[:2]) < 0.2] = 0
    return grid, labels, rng.integers(0, 256, grid.dims, dtype=np.uint8)


@pytest.mark.parametrize("Z", [32, 20, 64])  # packed columns of whole bytes, padded ones, the 64-bit limit
def test_fast_paths_equal_the_reference_on_random_grids(Z):
    grid, labels, conf = _random_grid(Z)
    for kw in ({}, {"use_confidence": True}, {"factor": 2}, {"band": (-0.3, 5.0), "ground_z": -5.0},
               {"band": (0.0, 100.0)}):
        rule = _rule(**kw)
        np.testing.assert_array_equal(occupancy(labels, grid, rule, conf),
                                      occupancy_reference(labels, grid, rule, conf), err_msg=str(kw))


def test_column_bits_and_highest_bit():
    from scanssc_ros.occupancy import column_bits, highest_bit

    rng = np.random.default_rng(3)
    for Z in (1, 8, 13, 32, 64):
        mask = rng.random((50, Z)) < 0.3
        mask[0] = False
        expect = [sum(1 << z for z in range(Z) if m[z]) for m in mask]
        bits = column_bits(mask)
        assert bits.tolist() == expect
        assert highest_bit(bits).tolist() == [(v.bit_length() - 1) for v in expect]
    # around 2^53, where a float64 stops holding every integer: the exponent path below, bit smearing above
    for values in ([0, 1, 2**53 - 1, 2**52 + 1], [2**53, 2**53 + 1, 2**64 - 1, 2**60 - 1, 0, 3]):
        assert highest_bit(np.array(values, np.uint64)).tolist() == [v.bit_length() - 1 for v in values]
    assert highest_bit(np.zeros(0, np.uint64)).tolist() == []


def obstacle_reference(labels, grid, rule, band, classes=None):
    """Voxel by voxel: obstacle class (and in ``classes``), bottom face within ``band`` above the column's ground."""
    X, Y, Z = labels.shape
    out = []
    for x in range(X):
        for y in range(Y):
            col = labels[x, y].tolist()
            trav = [z for z in range(Z) if col[z] in rule.traversable]
            ground = grid.origin[2] + (max(trav) + 1) * grid.voxel_size if trav else rule.ground_z
            for z in range(Z):
                c = col[z]
                if c in (0, 255) or c in rule.traversable or (classes is not None and c not in classes):
                    continue
                h = grid.origin[2] + z * grid.voxel_size - ground
                if band[0] - 1e-6 * grid.voxel_size <= h <= band[1] + 1e-6 * grid.voxel_size:
                    out.append((x * Y + y) * Z + z)
    return np.array(sorted(out), np.int64)


@pytest.mark.parametrize("Z", [32, 20])
def test_obstacle_voxels_equal_the_reference(Z):
    from scanssc_ros.occupancy import GroundColumns, obstacle_voxels

    grid, labels, _ = _random_grid(Z)
    rule = _rule()
    shared = GroundColumns(labels, grid, rule.traversable, rule.ground_z)
    for band, classes in (((0.1, 2.0), None), ((0.0, 1.0), frozenset({CAR, POLE})), ((-1.0, 9.0), None)):
        got = obstacle_voxels(labels, grid, rule, band, classes, columns=shared)
        np.testing.assert_array_equal(got, obstacle_reference(labels, grid, rule, band, classes))
        assert np.array_equal(got, obstacle_voxels(labels, grid, rule, band, classes))  # its own columns


def test_grids_taller_than_64_layers_are_refused():
    grid = GridSpec((0.0, 0.0, 0.0), 0.2, (4, 4, 65))
    with pytest.raises(ValueError, match="64 bits"):
        occupancy(np.zeros(grid.dims, np.uint8), grid, _rule())
