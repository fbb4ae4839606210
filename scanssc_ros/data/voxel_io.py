"""SemanticKITTI voxel files: bit-packed masks (.bin/.invalid/.occluded) and uint16 .label grids.

Masks are one bit per voxel, most significant bit first, in C order of the (x, y, z) grid. Labels are uint16 raw
SemanticKITTI ids (the learning map turns them into train ids), one per voxel, same order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

GRID_DIMS: Tuple[int, int, int] = (256, 256, 32)
MASK_SUFFIXES = (".bin", ".invalid", ".occluded")
PathLike = Union[str, Path]


def pack_bits(mask: np.ndarray) -> bytes:
    """Boolean array (any shape, C order) -> bytes, MSB first. The size must be a multiple of 8."""
    flat = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    if flat.size % 8:
        raise ValueError(f"cannot bit-pack {flat.size} values: not a multiple of 8")
    return np.packbits(flat, bitorder="big").tobytes()


def unpack_bits(data: bytes, shape: Tuple[int, ...] = GRID_DIMS) -> np.ndarray:
    """Bytes from :func:`pack_bits` -> boolean array of ``shape``."""
    n = int(np.prod(shape))
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size * 8 != n:
        raise ValueError(f"{raw.size} bytes hold {raw.size * 8} bits, expected {n} for shape {shape}")
    return np.unpackbits(raw, bitorder="big").astype(bool).reshape(shape)


def read_voxel_file(path: PathLike, shape: Tuple[int, ...] = GRID_DIMS) -> np.ndarray:
    """Read a voxel file, its type chosen by suffix: masks -> bool array, ``.label`` -> uint16 raw ids."""
    path = Path(path)
    if path.suffix == ".label":
        labels = np.fromfile(path, dtype="<u2")
        if labels.size != int(np.prod(shape)):
            raise ValueError(f"{path}: {labels.size} labels, expected shape {shape}")
        return labels.reshape(shape)
    if path.suffix in MASK_SUFFIXES:
        return unpack_bits(path.read_bytes(), shape)
    raise ValueError(f"{path}: unknown voxel file suffix {path.suffix!r}")


def write_voxel_file(path: PathLike, grid: np.ndarray) -> None:
    """Write a voxel grid, the format chosen by suffix (see :func:`read_voxel_file`)."""
    path = Path(path)
    if path.suffix == ".label":
        if grid.dtype.kind not in "ui" or grid.size and (grid.min() < 0 or grid.max() > 0xFFFF):
            raise ValueError(f"{path}: labels must be integers in 0..65535")
        path.write_bytes(np.ascontiguousarray(grid, dtype="<u2").tobytes())
    elif path.suffix in MASK_SUFFIXES:
        path.write_bytes(pack_bits(grid))
    else:
        raise ValueError(f"{path}: unknown voxel file suffix {path.suffix!r}")
