"""Time the voxel -> message encoders (and their CDR serialization) for 10k / 60k / 200k occupied voxels.

    python bench/bench_encode.py [--sizes 10000 60000 200000] [--reps 7] [--out bench/results/encode.json]

Also times the alternatives the encoders chose between: how PointCloud2.data is filled, and how Marker points
are built (public constructor, slot-level construction, per-voxel cache). Reports the minimum and the median
over ``--reps`` runs of both wall-clock and thread CPU time: on a shared, oversubscribed machine the CPU time
is the cost of the code and the wall-clock median includes the waiting.
"""
from __future__ import annotations

import argparse
import array
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from geometry_msgs.msg import Point
from rclpy.serialization import serialize_message
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec, quaternion_to_rotation, voxel_center_of_flat
from scanssc_ros.labels import SEMANTIC_KITTI
from scanssc_ros.occupancy import (
    DEFAULT_TRAVERSABLE,
    GroundColumns,
    ObstacleFilter,
    OccupancyRule,
    obstacle_voxels,
    occupancy,
)
from scanssc_ros.ros.grid_cdr import grid_message_cdr
from scanssc_ros.ros.grid_message import to_grid_message
from scanssc_ros.ros.marker_cdr import marker_array_cdr
from scanssc_ros.ros.outputs import OutputBuilder, OutputOptions
from scanssc_ros.ros.voxel_encode import (
    PointCache,
    _slot_point_factory,
    cloud_dtype,
    diagnostics_message,
    select_voxels,
    to_marker_array,
    to_pointcloud2,
)


def timed(fn: Callable[[], object], reps: int) -> Dict[str, float]:
    """Wall and CPU (this thread) time; on an oversubscribed machine the CPU time is the reproducible one."""
    wall: List[float] = []
    cpu: List[float] = []
    for _ in range(reps):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return {"min_ms": min(wall), "median_ms": statistics.median(wall), "cpu_min_ms": min(cpu),
            "cpu_median_ms": statistics.median(cpu)}


def synthetic_labels(n: int, grid: GridSpec, seed: int = 0) -> np.ndarray:
    """``n`` occupied voxels with 19 classes, lower layers denser (like a street scene), a few unknowns."""
    rng = np.random.default_rng(seed)
    z_weight = np.linspace(2.0, 0.2, grid.dims[2])
    p = np.broadcast_to(z_weight, grid.dims).reshape(-1)
    flat = rng.choice(grid.num_voxels, n, replace=False, p=p / p.sum())
    labels = np.zeros(grid.num_voxels, np.uint8)
    labels[flat] = rng.integers(1, 20, n)
    free = np.flatnonzero(labels == 0)
    labels[rng.choice(free, n // 50, replace=False)] = 255
    return labels.reshape(grid.dims)


def bench_size(n: int, reps: int, grid: GridSpec) -> Dict[str, Dict[str, float]]:
    labels = synthetic_labels(n, grid)
    conf = np.random.default_rng(1).integers(0, 256, grid.dims, dtype=np.uint8)
    colors = SEMANTIC_KITTI.color_table()
    header = Header(frame_id="camera")
    pose = np.eye(4)
    pose[:3, :3] = quaternion_to_rotation((0.5, -0.5, 0.5, -0.5))
    out: Dict[str, Dict[str, float]] = {}

    out["select"] = timed(lambda: select_voxels(labels), reps)
    out["select_surface"] = timed(lambda: select_voxels(labels, surface_only=True), reps)
    idx = select_voxels(labels)

    out["cloud_build"] = timed(lambda: to_pointcloud2(idx, labels, grid, header, pose, colors, conf), reps)
    cloud = to_pointcloud2(idx, labels, grid, header, pose, colors, conf)
    out["cloud_serialize"] = timed(lambda: serialize_message(cloud), reps)

    # how to hand the packed records to the message (the encoder uses the constructor with bytes)
    rec = np.zeros(idx.size, cloud_dtype(True))
    raw = rec.tobytes()
    out["cloud_data/ctor_bytes"] = timed(lambda: PointCloud2(data=raw), reps)
    out["cloud_data/ctor_array"] = timed(lambda: PointCloud2(data=array.array("B", raw)), reps)

    def frombytes_memoryview():
        a = array.array("B")
        a.frombytes(memoryview(rec).cast("B"))
        return PointCloud2(data=a)

    def assign_bytes():
        msg = PointCloud2()
        msg.data = raw
        return msg

    out["cloud_data/array_frombytes_memoryview"] = timed(frombytes_memoryview, reps)
    out["cloud_data/assign_bytes"] = timed(assign_bytes, reps)
    out["cloud_data/tobytes"] = timed(rec.tobytes, reps)

    # Marker points: the options, cold (every Point created) and warm (all cached)
    xyz = voxel_center_of_flat(idx, grid).tolist()
    out["points/public_ctor"] = timed(lambda: [Point(x=x, y=y, z=z) for x, y, z in xyz], max(1, reps // 2))
    make = _slot_point_factory()
    if make is not None:
        out["points/slot_ctor"] = timed(lambda: [make(x, y, z) for x, y, z in xyz], max(1, reps // 2))
    out["points/cache_cold"] = timed(lambda: PointCache(grid).points(idx), max(1, reps // 2))
    cache = PointCache(grid)
    cache.points(idx)
    out["points/cache_warm"] = timed(lambda: cache.points(idx), reps)

    names, present = SEMANTIC_KITTI.classes, set()
    out["markers_build_cold"] = timed(
        lambda: to_marker_array(idx, labels, grid, header, names, colors, present, 0.5, pose,
                                point_cache=PointCache(grid)), max(1, reps // 2))
    out["markers_build_warm"] = timed(
        lambda: to_marker_array(idx, labels, grid, header, names, colors, present, 0.5, pose, point_cache=cache),
        reps)
    markers, _ = to_marker_array(idx, labels, grid, header, names, colors, present, 0.5, pose, point_cache=cache)
    out["markers_serialize"] = timed(lambda: serialize_message(markers), max(1, reps // 2))
    # what the node publishes: the same MarkerArray serialized from numpy (marker_cdr), no Point objects
    out["markers_cdr"] = timed(lambda: marker_array_cdr(idx, labels, grid, header, names, colors, present, 0.5, pose),
                               reps)

    grid_msg = to_grid_message(labels, grid, header, SEMANTIC_KITTI, pose, conf)
    out["grid_build"] = timed(lambda: to_grid_message(labels, grid, header, SEMANTIC_KITTI, pose, conf), reps)
    out["grid_serialize"] = timed(lambda: serialize_message(grid_msg), reps)
    # what the node publishes: the same bytes with the payload spliced in (grid_cdr), one copy instead of three
    out["grid_cdr"] = timed(lambda: grid_message_cdr(labels, grid, header, SEMANTIC_KITTI, pose, conf), reps)

    # everything the node does per frame after inference for these voxels: select, build the three outputs,
    # serialize them (what publish() does before handing bytes to the middleware)
    builder = OutputBuilder(grid, SEMANTIC_KITTI, pose)
    # the node's defaults include ~/occupancy (bird's-eye grid for planners)
    rule = OccupancyRule.from_names(DEFAULT_TRAVERSABLE, SEMANTIC_KITTI.classes)
    out["occupancy_build"] = timed(lambda: occupancy(labels, grid, rule, conf), reps)
    cols = GroundColumns(labels, grid, rule.traversable, rule.ground_z)
    out["obstacles_select"] = timed(lambda: obstacle_voxels(labels, grid, rule, rule.band, columns=cols), reps)
    # ... and ~/obstacles (obstacle voxels in the band above the ground, sharing the occupancy's column masks)
    opts = OutputOptions(surface_only=False, max_voxels=0, occupancy=rule, obstacles=ObstacleFilter(rule))

    def all_outputs():
        msgs, _ = builder.build(labels, conf, header.stamp, "camera", opts)
        return [m if isinstance(m, bytes) else serialize_message(m) for m in msgs.values()]

    out["all_outputs_serialized"] = timed(all_outputs, reps)

    stats = {"latency_ms": {"decode": 1.0, "model": 50.0}, "input_rate_hz": 10.0, "output_rate_hz": 9.5,
             "frames_in": 100, "frames_dropped": 3, "device": "cpu"}
    out["diagnostics_build"] = timed(lambda: diagnostics_message(stats, header), reps)

    out["_sizes"] = {"voxels": float(idx.size), "cloud_bytes": float(len(serialize_message(cloud))),
                     "markers_bytes": float(len(serialize_message(markers))), "classes": float(len(markers.markers))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 200_000])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "encode.json")
    args = parser.parse_args()

    grid = SEMANTIC_KITTI_GRID
    results = {str(n): bench_size(n, args.reps, grid) for n in args.sizes}

    rows = [k for k in results[str(args.sizes[0])] if not k.startswith("_")]
    print(f"{'ms: cpu min / wall min':38s}" + "".join(f"{n:>22,d}" for n in args.sizes))
    for row in rows:
        cells = "".join(f"{results[str(n)][row]['cpu_min_ms']:>12.2f} / {results[str(n)][row]['min_ms']:>7.2f}"
                        for n in args.sizes)
        print(f"{row:38s}{cells}")
    for n in args.sizes:
        s = results[str(n)]["_sizes"]
        print(f"{n:>7,d} voxels: cloud {s['cloud_bytes'] / 1e6:.2f} MB, markers {s['markers_bytes'] / 1e6:.2f} MB "
              f"in {int(s['classes'])} CUBE_LISTs")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "reps": args.reps, "note": "cpu_* = thread CPU time; min/median = wall clock"}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
