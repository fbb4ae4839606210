"""Shared fixtures: where the real sample data lives, and skip reasons when it does not."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("SCANSSC_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_ROOT = Path(os.environ.get("SCANSSC_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"real sample data not found at {DATA_ROOT} (set SCANSSC_SHARED_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def official_manifest_root() -> Path:
    """The shared/ folder holding the official checkpoint's state-dict manifest (spec/official_checkpoint)."""
    if not (SHARED_ROOT / "spec" / "official_checkpoint").is_dir():
        pytest.skip(f"official checkpoint manifest not found under {SHARED_ROOT} (set SCANSSC_SHARED)")
    return SHARED_ROOT


@pytest.fixture(scope="session")
def kitti_seq(shared_data: Path) -> Path:
    seq = shared_data / "semantickitti-mini" / "sequences" / "08"
    if not (seq / "calib.txt").is_file():
        pytest.skip(f"SemanticKITTI sample sequence not found at {seq}")
    return seq


def pytest_configure(config: pytest.Config) -> None:
    # Keep every ROS participant of this test run on loopback and in its own domain, also in child processes,
    # so parallel runs on one machine do not see each other.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """CLI tests run ``main([... "--threads", "1"])`` in this process; torch's thread count is process-wide, so
    without this every later test (the fast-path comparisons among them) would run single-threaded."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture()
def ros_context():
    """An initialised rclpy context, shut down after the test. Skips when rclpy is not importable."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.try_shutdown(context=ctx)


_EXIT_STATUS = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # After the summary, the interpreter's final garbage collection walked the whole heap the suite left behind
    # (torch, rclpy, cached fixtures) for about five minutes on a slow 2-core machine (py-spy: gc_collect_main), long
    # enough to threaten the CI time limit. The results are printed and flushed by now, so the process ends here
    # with pytest's exit status; SCANSSC_TEST_NORMAL_EXIT=1 keeps the normal interpreter shutdown.
    if not _EXIT_STATUS or os.environ.get("SCANSSC_TEST_NORMAL_EXIT") == "1":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
