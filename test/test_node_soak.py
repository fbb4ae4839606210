"""A short soak of the in-process node (bench/soak_node.py runs the long one): memory flat after the warm-up,
bounded queues, every frame published once with strictly increasing stamps and the predictor's labels."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "soak_node.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak_node", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_step_soak_300_frames() -> None:
    soak = _soak_module()
    result = soak.run_soak(frames=300, warmup=100, progress=False)
    print({k: result[k] for k in ("seconds", "rss_after_warmup_kb", "rss_change_pct", "partner_buffer_max")})
    assert soak.problems(result) == []
    assert result["outputs"] == 300 and result["drops"] == {}


def test_soak_checks_catch_violations() -> None:
    """problems() must flag what it is there to flag (a soak check that cannot fail proves nothing)."""
    soak = _soak_module()
    good = {"rss_change_pct": {"min": -1.0, "max": 2.0}, "partner_buffer_max": 3, "partner_buffer_bound": 8,
            "slot_items_max": 1, "repeated_stamps": 0, "backwards_stamps": 0, "wrong_labels": 0, "timeouts": 0,
            "output_counts": {"grid": 10, "markers": 10, "cloud": 10}, "outputs": 10, "drops": {},
            "frames_received": 10, "frames": 10, "rate_hz": 0.0}
    assert soak.problems(good) == []
    for key, value in [("rss_change_pct", {"min": 0.0, "max": 6.0}), ("partner_buffer_max", 9),
                       ("slot_items_max", 2), ("repeated_stamps", 1), ("backwards_stamps", 1), ("wrong_labels", 1),
                       ("timeouts", 1), ("output_counts", {"grid": 10, "markers": 9, "cloud": 10}),
                       ("drops", {"superseded": 1}), ("frames_received", 9),
                       ("drops", {"lost_before_callback": 1})]:
        assert soak.problems(dict(good, **{key: value})), key
