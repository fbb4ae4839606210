"""visible_voxels (open3d ray casting) against a slow, obvious voxel walk (Amanatides & Woo) on small grids."""
from __future__ import annotations

import math

import numpy as np
import pytest

from scanssc_ros.geometry import GridSpec
from scanssc_ros.visibility import visible_voxels

pytest.importorskip("open3d", reason="open3d not installed (`make setup` installs open3d-cpu)")


def walk_visible(occ: np.ndarray, grid: GridSpec, sensor, target) -> bool:
    """Step voxel by voxel from the sensor towards the target's centre; hidden at the first occupied voxel that
    is not the target."""
    o = (np.asarray(sensor, float) - grid.origin) / grid.voxel_size
    d = np.asarray(target, float) + 0.5 - o
    cur = [math.floor(v) for v in o]
    step = [1 if v > 0 else -1 for v in d]
    t_max = [((c + (s > 0)) - ov) / dv if dv != 0 else math.inf for c, s, ov, dv in zip(cur, step, o, d)]
    t_delta = [1 / abs(dv) if dv != 0 else math.inf for dv in d]
    while tuple(cur) != tuple(target):
        inside = all(0 <= c < n for c, n in zip(cur, occ.shape))
        if inside and occ[tuple(cur)]:
            return False
        k = min(range(3), key=lambda i: t_max[i])
        if t_max[k] > 1.0:  # passed the centre without entering the target: cannot happen, but never loop forever
            raise AssertionError("walk missed its target")
        cur[k] += step[k]
        t_max[k] += t_delta[k]
    return True


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_voxel_walk(seed):
    rng = np.random.default_rng(seed)
    grid = GridSpec((0.0, -1.6, -0.8), 0.2, (16, 16, 8))
    occ = rng.random(grid.dims) < 0.08
    sensor = np.array([-0.37, 0.013, 0.161]) + rng.normal(0, 0.05, 3)  # just outside, not on a voxel boundary
    got = visible_voxels(occ, grid, sensor)
    want = np.zeros(grid.dims, bool)
    for v in np.ndindex(*grid.dims):
        want[v] = walk_visible(occ, grid, sensor, v)
    assert 0.2 < want.mean() < 0.9  # both outcomes well represented
    assert np.array_equal(got, want), np.argwhere(got != want)[:10]


def test_wall_hides_what_is_behind_it_and_query_limits_rays():
    grid = GridSpec((0.0, 0.0, 0.0), 1.0, (10, 5, 5))
    occ = np.zeros(grid.dims, bool)
    occ[5] = True  # a wall across the whole grid
    sensor = (-0.5, 2.5, 2.5)
    vis = visible_voxels(occ, grid, sensor)
    assert vis[:6].all() and not vis[6:].any()
    query = np.zeros(grid.dims, bool)
    query[2, 2, 2] = query[8, 2, 2] = True
    assert np.argwhere(visible_voxels(occ, grid, sensor, query)).tolist() == [[2, 2, 2]]
    assert visible_voxels(np.zeros(grid.dims, bool), grid, sensor).all()
