"""`make demo`'s engine on one synthetic frame: bag -> installed node -> grid -> PNG and summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scanssc_ros.bag.lockstep import installed_executable

pytestmark = [pytest.mark.ros, pytest.mark.slow]
pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")

REPO = Path(__file__).resolve().parents[1]


def test_demo_writes_png_and_summary_for_each_frame(tmp_path):
    if not installed_executable().is_file():
        pytest.skip("scanssc_node not built; run `make test`")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "scanssc_ros.demo", "--out", str(out), "--synthetic-frames", "1",
                           "--kitti", str(tmp_path / "no_kitti")], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ), cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    (source,) = summary["sources"]
    assert source["name"] == "synthetic" and len(source["frames"]) == 1
    frame = source["frames"][0]
    assert (out / frame["png"]).stat().st_size > 10_000
    assert frame["latency_ms"] > 0 and 0.0 <= frame["iou"] <= 100.0
    assert (out / "bags" / "synthetic").is_dir() and "synthetic: 1 frames" in (out / "summary.txt").read_text()
    # the pictures' renderer is named once; each frame has its prediction and ground truth as .ply
    assert "3D views:" in (out / "summary.txt").read_text() and frame["render_ms"] > 0
    assert frame["ply"] == ["synthetic_00.ply", "synthetic_00_gt.ply"]
    assert all((out / name).stat().st_size > 1000 for name in frame["ply"])


DEMO_RUNS = 3


def test_demo_kitti_part_runs_several_times_in_a_row(tmp_path, kitti_seq):
    """Issue 12: `make demo` failed on a cold run when a KITTI right image was paired with the synthetic scene's
    right camera_info (the two cameras differ in size). Each run here starts a fresh node, sends a synthetic frame
    and then KITTI frames, as the demo does; every run must give every frame its grid with nothing rejected."""
    if not installed_executable().is_file():
        pytest.skip("scanssc_node not built; run `make test`")
    for run in range(DEMO_RUNS):
        out = tmp_path / f"demo_{run}"
        proc = subprocess.run([sys.executable, "-m", "scanssc_ros.demo", "--out", str(out), "--synthetic-frames", "1",
                               "--kitti", str(kitti_seq.parents[1]), "--kitti-frames", "0-2"],
                              capture_output=True, text=True, timeout=900, env=dict(os.environ), cwd=REPO)
        log = (out / "node.log").read_text() if (out / "node.log").is_file() else ""
        assert proc.returncode == 0, f"run {run}:\n{proc.stdout}\n{proc.stderr}\n{log}"
        summary = json.loads((out / "summary.json").read_text())
        frames = {s["name"]: len(s["frames"]) for s in summary["sources"]}
        assert frames == {"synthetic": 1, "kitti08": 3}, (run, frames)
        assert not {"rejected", "failed"} & set(summary["node_drops"]), (run, summary["node_drops"], log)
        assert "does not describe" not in log and "frame skipped" not in log, (run, log)
        print(f"\n[demo run {run}] node drops {summary['node_drops']}, resends {summary['resends']}")
