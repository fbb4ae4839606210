"""Which voxels of a label grid are occupied, and which of those can be seen: shared by the ROS encoders and the
ROS-free renders."""
from __future__ import annotations

import numpy as np

from scanssc_ros.labels import EMPTY, IGNORE


def occupied_mask(labels: np.ndarray) -> np.ndarray:
    """Class ids other than empty (0) and unknown (255)."""
    return (labels != EMPTY) & (labels != IGNORE)


def exposed_mask(occupied: np.ndarray) -> np.ndarray:
    """Occupied voxels with at least one face that can be seen.

    A face is exposed when the 6-neighbour behind it is not occupied (empty *or* unknown: unknown voxels are not
    drawn either, so a face next to one is visible) or lies outside the grid (the volume can be viewed from
    outside, so cutting off the border would leave holes in the rendered box).
    """
    occ = np.asarray(occupied, bool)
    covered = np.ones_like(occ)
    for axis in range(occ.ndim):
        # covered along an axis when both neighbours exist and are occupied
        lo = np.zeros_like(occ)
        hi = np.zeros_like(occ)
        src = [slice(None)] * occ.ndim
        dst = [slice(None)] * occ.ndim
        src[axis], dst[axis] = slice(None, -1), slice(1, None)
        lo[tuple(dst)] = occ[tuple(src)]
        hi[tuple(src)] = occ[tuple(dst)]
        covered &= lo & hi
    return occ & ~covered


def surface_mask(labels: np.ndarray) -> np.ndarray:
    """Occupied voxels of a label grid with a visible face (see :func:`exposed_mask`)."""
    return exposed_mask(occupied_mask(labels))
