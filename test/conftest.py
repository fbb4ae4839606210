"""Shared fixtures: where the real sample data lives, and skip reasons when it does not."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("SCANSSC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"real sample data not found at {DATA_ROOT} (set SCANSSC_SHARED_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def kitti_seq(shared_data: Path) -> Path:
    seq = shared_data / "semantickitti-mini" / "sequences" / "08"
    if not (seq / "calib.txt").is_file():
        pytest.skip(f"SemanticKITTI sample sequence not found at {seq}")
    return seq
