"""Soak the node: many stereo frames through an in-process ScanSSCNode (the test suite's FakePredictor, so the
run measures the node, not the model), watching memory, queues and the published stamps.

    python bench/soak_node.py [--frames 2000] [--rate 0] [--warmup 200] [--out bench/results/soak.json]

``--rate 0`` (default) is lock-step: the next frame is published as soon as the previous one's outputs arrived,
i.e. as fast as the node consumes. ``--rate HZ`` publishes at a fixed rate instead (the node may drop frames).
Every frame sends both camera_infos, the right image and the left image, through real topics.

Checks (also run by test/test_node_soak.py on a shorter soak): resident memory (VmRSS) after the warm-up stays
within +-5 % of its first post-warm-up sample; the pairing buffer never exceeds its bound and the one-slot mailbox
never holds more than one set; no stamp is published twice on any output; output stamps strictly increase; every
grid carries the predictor's labels; every frame is accounted for (published, dropped by reason, or counted lost
before the callback).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))  # nodeutil: FakePredictor and the message builders

RSS_TOLERANCE = 0.05


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class OutputWatch:
    """Subscribes to the node's outputs and keeps only counts and stamps (storing messages would itself grow)."""

    def __init__(self, node: Any, expected_labels: np.ndarray, node_name: str = "scanssc_node") -> None:
        from nav_msgs.msg import OccupancyGrid
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from scanssc_ros.msg import SemanticVoxelGrid
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import MarkerArray

        self.expected = expected_labels.tobytes()
        self.count = {"grid": 0, "markers": 0, "cloud": 0, "occupancy": 0, "obstacles": 0}
        self.last: Dict[str, int] = {}
        self.seen: Dict[str, set] = {k: set() for k in self.count}
        self.repeated = 0  # a stamp published twice on one output
        self.backwards = 0  # a stamp not newer than the previous one on the same output
        self.wrong_labels = 0
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for key, typ, topic in (("grid", SemanticVoxelGrid, "voxels"), ("markers", MarkerArray, "voxel_markers"),
                                ("cloud", PointCloud2, "voxel_cloud"), ("occupancy", OccupancyGrid, "occupancy"),
                                ("obstacles", PointCloud2, "obstacles")):
            node.create_subscription(typ, f"/{node_name}/{topic}", lambda m, k=key: self._on(k, m), qos)

    def _on(self, key: str, msg: Any) -> None:
        header = msg.markers[0].header if key == "markers" else msg.header
        t = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        if t in self.seen[key]:
            self.repeated += 1
        if key in self.last and t <= self.last[key]:
            self.backwards += 1
        self.seen[key].add(t)
        self.last[key] = t
        if key == "grid" and bytes(msg.labels) != self.expected:
            self.wrong_labels += 1
        self.count[key] += 1

    def outputs(self) -> int:
        return min(self.count.values())


def run_soak(frames: int = 2000, rate_hz: float = 0.0, warmup: Optional[int] = None, sample_every: int = 20,
             progress: bool = True, width: int = 320, height: int = 96) -> Dict[str, Any]:
    """Run the soak in a fresh rclpy context and return its measurements (see :func:`problems`)."""
    import rclpy
    from nodeutil import P_LEFT, P_RIGHT, FakePredictor, Graph, image_msg, info_msg, make_node, stamp, wait_for
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from scanssc_ros.ros.frame_sync import PARTNER_BUFFER

    warmup = max(50, frames // 10) if warmup is None else warmup
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    predictor = FakePredictor()
    node = make_node(ctx, predictor, depth_mode="stereo")
    feeder = Node("soak_feeder", context=ctx)
    watch = OutputWatch(feeder, predictor.labels)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {name: feeder.create_publisher(typ, name, qos) for name, typ in (
        ("left/image_rect", Image), ("left/camera_info", CameraInfo), ("right/image_rect", Image),
        ("right/camera_info", CameraInfo))}
    graph = Graph(ctx, node, feeder)

    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(2):  # two scenes, alternating; messages are reused with new stamps
        wide = rng.integers(0, 256, size=(height, width + 16, 3), dtype=np.uint8)
        pairs.append((image_msg(np.ascontiguousarray(wide[:, 16:]), 0.0),
                      image_msg(np.ascontiguousarray(wide[:, :width]), 0.0, frame="camera_right")))
    infos = (info_msg(P_LEFT, 0.0, w=width, h=height), info_msg(P_RIGHT, 0.0, frame="camera_right", w=width, h=height))

    result: Dict[str, Any] = {"frames": frames, "rate_hz": rate_hz, "warmup_frames": warmup,
                              "image": f"{width}x{height} stereo", "rss_kb": [], "timeouts": 0}
    partner_max = slot_max = stats_queue_max = 0
    try:
        ready = wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values())
                         and all(p.get_subscription_count() > 0 for p in node.pubs.values()), 10.0)
        if not ready:
            raise RuntimeError("the node and the feeder did not discover each other")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=frames, unit="frame", desc="soak")
        t_start = time.perf_counter()
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        for i in range(frames):
            t = 1000.0 + 0.1 * i
            left, right = pairs[i % 2]
            for msg in (*infos, left, right):
                msg.header.stamp = stamp(t)
            pubs["left/camera_info"].publish(infos[0])
            pubs["right/camera_info"].publish(infos[1])
            pubs["right/image_rect"].publish(right)
            pubs["left/image_rect"].publish(left)
            if period:
                time.sleep(max(0.0, t_start + period * (i + 1) - time.perf_counter()))
            elif not wait_for(lambda n=i + 1: watch.outputs() + node.drops.total >= n, 10.0, poll=0.001):
                result["timeouts"] += 1
            partner_max = max(partner_max, len(node.sync._partners))
            slot_max = max(slot_max, int(node.slot.pending))
            stats_queue_max = max(stats_queue_max, len(node.stats._in), len(node.stats._out))
            if i % sample_every == 0 or i == frames - 1:
                result["rss_kb"].append((i, rss_kb()))
            if bar is not None:
                bar.update(1)
        # the last frames of a rate-driven run may still be in flight
        wait_for(lambda: watch.outputs() + node.drops.total - node.drops.snapshot().get("lost_before_callback", 0)
                 >= node.stats.frames_in and not node.slot.pending, 10.0)
        result["seconds"] = time.perf_counter() - t_start
        if bar is not None:
            bar.close()
    finally:
        node.close()
        graph.close()
        node.destroy_node()
        feeder.destroy_node()
        rclpy.try_shutdown(context=ctx)

    after = [kb for i, kb in result["rss_kb"] if i >= warmup]
    base = after[0] if after else None
    slope = np.polyfit([i for i, _ in result["rss_kb"] if i >= warmup], after, 1)[0] if len(after) > 2 else 0.0
    result.update({
        "frames_received": node.stats.frames_in, "outputs": watch.outputs(), "output_counts": watch.count,
        "drops": node.drops.snapshot(), "repeated_stamps": watch.repeated, "backwards_stamps": watch.backwards,
        "wrong_labels": watch.wrong_labels, "partner_buffer_max": partner_max, "partner_buffer_bound": PARTNER_BUFFER,
        "slot_items_max": slot_max, "rate_window_queue_max": stats_queue_max,
        "fps": frames / result["seconds"],
        "rss_after_warmup_kb": {"first": base, "min": min(after, default=None), "max": max(after, default=None),
                                "last": after[-1] if after else None},
        "rss_change_pct": {"min": 100.0 * (min(after) - base) / base, "max": 100.0 * (max(after) - base) / base}
        if after else None,
        "rss_slope_kb_per_1000_frames": 1000.0 * float(slope),
    })
    return result


def problems(r: Dict[str, Any], rss_tolerance: float = RSS_TOLERANCE) -> List[str]:
    """What the soak run violated (empty when it passed)."""
    out = []
    change = r["rss_change_pct"]
    if change is None:
        out.append("no memory samples after the warm-up")
    elif max(abs(change["min"]), abs(change["max"])) > 100.0 * rss_tolerance:
        out.append(f"RSS moved {change['min']:+.1f} % / {change['max']:+.1f} % after the warm-up "
                   f"(limit +-{100 * rss_tolerance:.0f} %)")
    if r["partner_buffer_max"] > r["partner_buffer_bound"]:
        out.append(f"partner buffer reached {r['partner_buffer_max']} > {r['partner_buffer_bound']}")
    if r["slot_items_max"] > 1:
        out.append(f"mailbox held {r['slot_items_max']} sets")
    if r["repeated_stamps"]:
        out.append(f"{r['repeated_stamps']} outputs repeated a stamp")
    if r["backwards_stamps"]:
        out.append(f"{r['backwards_stamps']} outputs were not newer than the previous one")
    if r["wrong_labels"]:
        out.append(f"{r['wrong_labels']} grids did not carry the predictor's labels")
    if r["timeouts"]:
        out.append(f"{r['timeouts']} frames got neither an output nor a drop within 10 s")
    if len(set(r["output_counts"].values())) != 1:
        out.append(f"outputs differ in count: {r['output_counts']}")
    lost = r["drops"].get("lost_before_callback", 0)
    if r["outputs"] + sum(r["drops"].values()) - lost != r["frames_received"]:
        out.append(f"{r['frames_received']} frames received but {r['outputs']} published + "
                   f"{sum(r['drops'].values()) - lost} dropped after the callback")
    if r["frames_received"] + lost != r["frames"]:
        out.append(f"{r['frames']} frames sent but {r['frames_received']} received + {lost} counted lost before "
                   "the callback")
    if r["rate_hz"] == 0 and (r["outputs"] != r["frames"] or r["drops"]):
        out.append(f"lock-step: {r['outputs']} outputs for {r['frames']} frames, drops {r['drops']}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=0.0, help="publish rate in Hz (0 = lock-step)")
    ap.add_argument("--warmup", type=int, default=None, help="frames before the memory baseline (default 10 %%)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args(argv)

    r = run_soak(args.frames, args.rate, args.warmup)
    found = problems(r)
    change = r["rss_change_pct"]
    rss = r["rss_after_warmup_kb"]
    pace = f"{r['rate_hz']:g} Hz" if r["rate_hz"] else "lock-step"
    print(f"{r['frames']} frames ({r['image']}, {pace}) in {r['seconds']:.1f} s = {r['fps']:.1f} frames/s")
    print(f"outputs {r['outputs']} (grid/markers/cloud {r['output_counts']}), drops {r['drops'] or 'none'}, "
          f"repeated stamps {r['repeated_stamps']}, non-increasing stamps {r['backwards_stamps']}")
    print(f"RSS after {r['warmup_frames']} warm-up frames: first {rss['first'] / 1024:.1f} MiB, "
          f"min {rss['min'] / 1024:.1f}, max {rss['max'] / 1024:.1f}, last {rss['last'] / 1024:.1f} MiB "
          f"({change['min']:+.2f} % / {change['max']:+.2f} %), slope {r['rss_slope_kb_per_1000_frames']:+.0f} kB "
          "per 1000 frames")
    print(f"partner buffer max {r['partner_buffer_max']} (bound {r['partner_buffer_bound']}), mailbox max "
          f"{r['slot_items_max']}, rate-window queue max {r['rate_window_queue_max']}")
    print("PASS" if not found else "FAIL: " + "; ".join(found))
    r.update({"problems": found, "python": platform.python_version(), "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
