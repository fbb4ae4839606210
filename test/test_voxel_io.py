from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scanssc_ros.data.voxel_io import pack_bits, read_voxel_file, unpack_bits, write_voxel_file


def _pack_reference(mask: np.ndarray) -> bytes:
    """Bit by bit, most significant first: the obvious version of pack_bits."""
    flat = mask.reshape(-1)
    out = bytearray()
    for i in range(0, flat.size, 8):
        byte = 0
        for b in flat[i:i + 8]:
            byte = (byte << 1) | int(b)
        out.append(byte)
    return bytes(out)


def test_pack_matches_reference_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((4, 6, 8)) < 0.3
    packed = pack_bits(mask)
    assert packed == _pack_reference(mask)
    assert np.array_equal(unpack_bits(packed, mask.shape), mask)


def test_msb_first_and_c_order() -> None:
    mask = np.zeros((2, 2, 8), bool)
    mask[0, 0, 0] = True  # first voxel in C order -> top bit of byte 0
    mask[1, 1, 7] = True  # last voxel -> bottom bit of the last byte
    assert pack_bits(mask) == bytes([0x80, 0, 0, 0x01])


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError):
        pack_bits(np.ones(7, bool))
    with pytest.raises(ValueError):
        unpack_bits(b"\x00" * 3, (4, 4, 4))


def test_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    shape = (8, 8, 4)
    mask = rng.random(shape) < 0.5
    labels = rng.integers(0, 300, shape).astype(np.uint16)
    for suffix in (".bin", ".invalid", ".occluded"):
        write_voxel_file(tmp_path / f"a{suffix}", mask)
        assert np.array_equal(read_voxel_file(tmp_path / f"a{suffix}", shape), mask)
    write_voxel_file(tmp_path / "a.label", labels)
    assert (tmp_path / "a.label").stat().st_size == labels.size * 2
    assert np.array_equal(read_voxel_file(tmp_path / "a.label", shape), labels)
    with pytest.raises(ValueError):
        write_voxel_file(tmp_path / "a.txt", mask)
    with pytest.raises(ValueError):
        read_voxel_file(tmp_path / "a.label", (8, 8, 8))


def test_real_voxel_files(kitti_seq: Path) -> None:
    occupied = read_voxel_file(kitti_seq / "voxels" / "000000.bin")
    invalid = read_voxel_file(kitti_seq / "voxels" / "000000.invalid")
    assert occupied.shape == (256, 256, 32) and occupied.dtype == bool
    # a street scene fills well under 5% of the grid but thousands of voxels; observed voxels are never invalid
    assert 2_000 < occupied.sum() < 0.05 * occupied.size
    assert 0.05 < invalid.mean() < 0.6
    assert not (occupied & invalid).any()
    # the ground lies in the lowest layers: most occupied voxels sit below the LiDAR (z < 0 m -> iz < 10)
    assert occupied[:, :, :10].sum() > 0.5 * occupied.sum()
    # the raw bytes come back unchanged
    raw = (kitti_seq / "voxels" / "000000.bin").read_bytes()
    assert pack_bits(occupied) == raw
