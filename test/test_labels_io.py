"""Label configs and SemanticKITTI file formats: lookup tables, bit order, round trips."""
from __future__ import annotations

import numpy as np
import pytest

from scanssc_ros.data import labels_io as io
from scanssc_ros.labels import KITTI360, SEMANTIC_KITTI

TINY_YAML = """
labels: {0: unlabeled, 1: outlier, 10: car, 40: road, 52: other-structure, 99: other-object, 252: moving-car}
color_map: {0: [0, 0, 0], 1: [0, 0, 255], 10: [245, 150, 100], 40: [255, 0, 255], 52: [0, 150, 255],
            99: [255, 255, 50], 252: [245, 150, 100]}
learning_map: {0: 0, 1: 0, 10: 1, 40: 2, 52: 0, 99: 0, 252: 1}
learning_map_inv: {0: 0, 1: 10, 2: 40}
learning_ignore: {0: true, 1: false, 2: false}
split: {train: [0, 1], valid: [8], test: [11]}
"""


@pytest.fixture()
def tiny_cfg(tmp_path) -> io.LabelConfig:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return io.load_label_config(path)


def test_tiny_config_tables(tiny_cfg):
    assert tiny_cfg.num_classes == 3
    raw = np.array([0, 10, 40, 252, 7, 65535], np.uint16)
    assert tiny_cfg.to_train(raw).tolist() == [0, 1, 2, 1, 255, 255]
    assert tiny_cfg.to_train(raw, ignore_to_255=True).tolist() == [255, 1, 2, 1, 255, 255]
    assert tiny_cfg.to_raw(np.array([0, 1, 2, 255], np.uint8)).tolist() == [0, 10, 40, 0]
    assert tiny_cfg.train_colors_rgb().tolist() == [[0, 0, 0], [100, 150, 245], [255, 0, 255]]
    assert tiny_cfg.split["valid"] == [8]
    # instance bits in the upper half are dropped before the lookup
    assert tiny_cfg.to_train(np.array([(5 << 16) | 10], np.uint32)).tolist() == [1]
    with pytest.raises(ValueError):
        tiny_cfg.to_raw(np.array([3], np.uint8))


def test_voxel_and_point_mappings(tiny_cfg):
    """Voxels: only raw 0 is empty, the other raw ids learning_map sends to 0 are ignored (benchmark rule).
    Points: nothing maps to 0, since a labelled point never shows free space."""
    raw = np.array([0, 1, 52, 99, 10, 40, 252, 7, (3 << 16) | 99, (3 << 16) | 10], np.uint32)
    assert tiny_cfg.to_train(raw).tolist() == [0, 0, 0, 0, 1, 2, 1, 255, 0, 1]
    assert tiny_cfg.voxel_to_train(raw).tolist() == [0, 255, 255, 255, 1, 2, 1, 255, 255, 1]
    assert tiny_cfg.point_to_train(raw).tolist() == [255, 255, 255, 255, 1, 2, 1, 255, 255, 1]
    assert tiny_cfg.voxel_ignored_raw_ids() == [1, 52, 99]
    lut = tiny_cfg.voxel_learning_map
    assert lut.shape == (65536,) and lut[0] == 0 and lut[52] == 255 and tiny_cfg.learning_map[52] == 0
    grid = np.zeros(io.GRID_DIMS, np.uint16)
    grid[3, 4, 5], grid[6, 7, 8], grid[9, 10, 11], grid[1, 1, 1] = 1, 52, 99, 40
    mapped = tiny_cfg.voxel_to_train(grid)
    assert mapped.dtype == np.uint8 and mapped.shape == io.GRID_DIMS
    assert mapped[3, 4, 5] == mapped[6, 7, 8] == mapped[9, 10, 11] == 255 and mapped[1, 1, 1] == 2
    assert (mapped == 0).sum() == grid.size - 4


def test_point_mapping_without_learning_ignore(tmp_path):
    """A yaml without learning_ignore: points of train id 0 are still no evidence of empty space."""
    (tmp_path / "c.yaml").write_text("labels: {0: u, 1: o, 10: car}\ncolor_map: {0: [0,0,0]}\n"
                                     "learning_map: {0: 0, 1: 0, 10: 1}\nlearning_map_inv: {0: 0, 1: 10}\n")
    cfg = io.load_label_config(tmp_path / "c.yaml")
    assert not cfg.learning_ignore.any()
    assert cfg.to_train(np.array([0, 1, 10]), ignore_to_255=True).tolist() == [0, 0, 1]
    assert cfg.point_to_train(np.array([0, 1, 10])).tolist() == [255, 255, 1]


def test_semantic_kitti_yaml(shared_data):
    cfg = io.load_label_config(shared_data / "semantickitti-mini" / "semantic-kitti.yaml")
    assert cfg.num_classes == SEMANTIC_KITTI.num_classes
    assert cfg.to_train(np.array([10, 252, 52, 99, 60, 81])).tolist() == [1, 1, 0, 0, 9, 19]
    assert cfg.to_train(np.array([0, 1, 52]), ignore_to_255=True).tolist() == [255, 255, 255]
    # the official completion remap: raw 0 empty; outlier, other-structure, other-object ignored
    assert cfg.voxel_ignored_raw_ids() == [1, 52, 99]
    assert cfg.voxel_to_train(np.array([0, 1, 52, 99, 10, 252, 60, 81])).tolist() == [0, 255, 255, 255, 1, 1, 9, 19]
    assert cfg.train_colors_rgb().tolist() == [list(c) for c in SEMANTIC_KITTI.colors_rgb]
    assert cfg.split["valid"] == [8]


def test_kitti360_yaml(shared_data):
    cfg = io.load_label_config(shared_data / "kitti360" / "kitti360.yaml")
    assert cfg.num_classes == KITTI360.num_classes == 19
    assert cfg.to_train(np.array([10, 52, 71, 99])).tolist() == [1, 17, 0, 18]
    # SSCBench's yaml sends other raw ids to 0 (trunk, bicyclist, motorcyclist, ...): the same voxel rule holds
    assert cfg.voxel_ignored_raw_ids() == [1, 31, 32, 71, 253, 255]
    assert cfg.voxel_to_train(np.array([0, 71, 52, 99])).tolist() == [0, 255, 17, 18]
    assert cfg.train_colors_rgb().tolist() == [list(c) for c in KITTI360.colors_rgb]


def test_packed_voxels_msb_first_and_round_trip(tmp_path):
    mask = np.zeros(io.GRID_DIMS, bool)
    mask[0, 0, 0] = True  # flat index 0 -> most significant bit of byte 0
    mask[0, 0, 9] = True  # flat index 9 -> bit 6 of byte 1
    io.write_packed_voxels(tmp_path / "a.bin", mask)
    raw = np.fromfile(tmp_path / "a.bin", np.uint8)
    assert raw.size == 256 * 256 * 32 // 8 and raw[0] == 0x80 and raw[1] == 0x40 and raw[2:].sum() == 0
    rng = np.random.default_rng(0)
    mask = rng.random(io.GRID_DIMS) < 0.3
    io.write_packed_voxels(tmp_path / "b.invalid", mask)
    assert np.array_equal(io.read_packed_voxels(tmp_path / "b.invalid"), mask)
    with pytest.raises(ValueError):
        io.read_packed_voxels(tmp_path / "b.invalid", (8, 8, 8))


def test_export_round_trips_through_learning_map(tmp_path, tiny_cfg):
    rng = np.random.default_rng(1)
    pred = rng.integers(0, tiny_cfg.num_classes, size=io.GRID_DIMS).astype(np.uint8)
    io.export_prediction(tmp_path / "000000.label", pred, tiny_cfg)
    assert (tmp_path / "000000.label").stat().st_size == 256 * 256 * 32 * 2
    raw = io.read_voxel_labels(tmp_path / "000000.label")
    assert raw.dtype == np.uint16 and set(np.unique(raw)) <= {0, 10, 40}
    assert np.array_equal(tiny_cfg.to_train(raw), pred)
    assert np.array_equal(tiny_cfg.voxel_to_train(raw), pred)  # learning_map_inv never writes an ignored id


def test_export_round_trip_official_config(tmp_path, shared_data):
    cfg = io.load_label_config(shared_data / "semantickitti-mini" / "semantic-kitti.yaml")
    pred = np.random.default_rng(2).integers(0, 20, size=io.GRID_DIMS).astype(np.uint8)
    io.export_prediction(tmp_path / "p.label", pred, cfg)
    assert np.array_equal(cfg.voxel_to_train(io.read_voxel_labels(tmp_path / "p.label")), pred)


def test_point_labels_split_semantic_and_instance(tmp_path):
    lab = np.array([(3 << 16) | 10, 40, (65535 << 16) | 252], np.uint32)
    lab.tofile(tmp_path / "x.label")
    sem, inst = io.read_point_labels(tmp_path / "x.label")
    assert sem.tolist() == [10, 40, 252] and inst.tolist() == [3, 0, 65535]


def test_shift_down_one_layer():
    g = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    s = io.shift_down_one_layer(g, -1)
    assert np.array_equal(s[..., :3], g[..., 1:]) and (s[..., 3] == -1).all()


def test_real_v1_voxels_have_empty_bottom_layer(kitti_seq):
    occ = io.read_packed_voxels(kitti_seq / "voxels" / "000000.bin")
    assert occ.shape == (256, 256, 32) and occ.sum() > 10000
    assert not occ[..., 0].any()  # the v1.0 offset: nothing is stored in layer 0
    scan = io.read_scan(kitti_seq / "velodyne" / "000000.bin")
    sem, _ = io.read_point_labels(kitti_seq / "labels" / "000000.label")
    assert scan.shape == (sem.shape[0], 4)
