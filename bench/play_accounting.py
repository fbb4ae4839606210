"""Play a camera bag with ``scanssc-play`` into the installed node and account for every frame.

    python bench/play_accounting.py BAG [--rate 1] [--runs 3] [--param input_depth:=1 ...] [--best-effort-player]
                                        [--checkpoint models/scanssc_lite_synth.pt] [--out bench/results/x.json]

The node is started the way a user does: ``config/scanssc.yaml``, the checkpoint, the bag's camera topics remapped
(``.../camera_color_{left,right}/{image_raw,camera_info}``, as ``scanssc-kitti2bag`` writes them) and only the
``--param`` overrides. After playback, the node's own ``/diagnostics`` account for the frames: received by the
callback, published, and dropped by reason (``lost_before_callback`` = never reached the callback). One JSON line
per run; with ``--out`` the list is written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

from scanssc_ros.bag.lockstep import installed_executable

REPO = Path(__file__).resolve().parents[1]
EXECUTABLE = installed_executable()  # the build of the sourced distribution (scripts/env.sh)


def camera_remaps(bag: Path) -> Dict[str, str]:
    from scanssc_ros.bag.play import bag_topics, open_bag

    reader = open_bag(bag)
    try:
        names = [t.name for t in bag_topics(reader)]
    finally:
        reader.close()
    remaps = {}
    for side in ("left", "right"):
        for kind, ours in (("image_raw", "image_rect"), ("camera_info", "camera_info")):
            found = [n for n in names if n.endswith(f"camera_color_{side}/{kind}")]
            if len(found) != 1:
                raise SystemExit(f"{bag}: expected one .../camera_color_{side}/{kind} topic, found {found}")
            remaps[f"{side}/{ours}"] = found[0]
    return remaps


def frame_count(bag: Path, topic: str) -> int:
    from scanssc_ros.bag.play import bag_topics, open_bag

    reader = open_bag(bag)
    try:
        return next(t.count for t in bag_topics(reader) if t.name == topic)
    finally:
        reader.close()


def run_once(ctx: Any, bag: Path, args: argparse.Namespace, run: int) -> Dict[str, Any]:
    from scanssc_ros.bag.lockstep import LockstepPlayer, NodeProcess

    remaps = camera_remaps(bag)
    frames = frame_count(bag, remaps["left/image_rect"])
    params: Dict[str, Any] = {"checkpoint": str(Path(args.checkpoint).resolve())}
    for item in args.param:
        key, _, value = item.partition(":=")
        params[key] = value
    name = f"play_accounting_{os.getpid()}_{run}"
    log = Path(args.log_dir) / f"{name}.log"
    node = NodeProcess(EXECUTABLE, REPO / "config" / "scanssc.yaml", name, params, remaps, log_path=log)
    watch = LockstepPlayer(ctx, name, {})
    try:
        watch.wait_ready(node, list(remaps.values()))
        cmd = [sys.executable, "-m", "scanssc_ros.bag.play", str(bag), "--rate", str(args.rate),
               "--wait-subscribers", "60"] + (["--best-effort"] if args.best_effort_player else [])
        play = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watch.spin_until(lambda: play.poll() is not None, 600.0)
        play_out = play.communicate(timeout=30)[0].strip().splitlines()
        # every frame the node received ends published or dropped; those it never received can only be counted
        # lost once a later one arrives, so a run whose last frames vanish ends on the timeout
        watch.spin_until(lambda: watch.accounted() >= frames, args.settle)
        watch.diagnostics = {}
        watch.spin_until(lambda: bool(watch.diagnostics), 5.0)
    finally:
        node.stop()
        watch.close()
    diag = watch.diagnostics
    drops = watch.drops()
    published = int(diag.get("frames_published", 0))
    return {"run": run, "bag": str(bag), "frames": frames, "params": params, "player": play_out[-1:],
            "received": int(diag.get("frames_in", 0)), "published": published, "grids": len(watch.grids),
            "drops": drops, "accounted": published + sum(drops.values()),
            "warnings": [line for line in log.read_text().splitlines() if "[WARN]" in line and "tf2_msgs" not in line]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bag", type=Path)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE")
    p.add_argument("--checkpoint", default=str(REPO / "models" / "scanssc_lite_synth.pt"))
    p.add_argument("--best-effort-player", action="store_true", help="scanssc-play --best-effort")
    p.add_argument("--log-dir", default="/tmp")
    p.add_argument("--settle", type=float, default=120.0, help="seconds to wait for the last frames after playback")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import rclpy

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ctx = rclpy.context.Context()
    rclpy.init(args=[sys.argv[0]], context=ctx)  # our --param items are not ROS arguments
    results: List[Dict[str, Any]] = []
    try:
        for run in range(args.runs):
            r = run_once(ctx, args.bag, args, run)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "warnings"}), flush=True)
            for w in r["warnings"][:3]:
                print("   ", w[:300], flush=True)
    finally:
        rclpy.try_shutdown(context=ctx)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
