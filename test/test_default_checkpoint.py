"""The bundled checkpoint's recorded metrics on held-out synthetic scenes, reproduced by scanssc-eval."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanssc_ros.cli.evaluate import main as evaluate
from scanssc_ros.data.synthetic import write_sequence

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "scanssc_lite_synth.pt"
RECORD = REPO / "models" / "scanssc_lite_synth.json"


def test_bundled_checkpoint_metrics_reproduce(tmp_path):
    short = json.loads(RECORD.read_text())["short_eval"]
    root = tmp_path / "synth"
    write_sequence(root, short["sequence"], short["frames"], short["seed"])
    frames = ",".join(f"{short['sequence']}/{i:06d}" for i in range(short["frames"]))
    out = tmp_path / "eval"
    evaluate(["--checkpoint", str(MODEL), "--data-root", str(root), "--frames", frames,
              "--target-source", "voxel_label", "--out", str(out), "--threads", "2", "--no-progress"])
    got = json.loads((out / "results.json").read_text())
    for key in ("iou", "miou"):
        assert got[key] == pytest.approx(short[key], abs=0.005), (key, got[key], short[key])
    assert got["iou"] > 2 * short["constant_iou"]
