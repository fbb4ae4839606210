"""`make demo`'s engine on one synthetic frame: bag -> installed node -> grid -> PNG and summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]
pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")

REPO = Path(__file__).resolve().parents[1]


def test_demo_writes_png_and_summary_for_each_frame(tmp_path):
    if not (REPO / "install" / "scanssc_ros" / "lib" / "scanssc_ros" / "scanssc_node").is_file():
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
