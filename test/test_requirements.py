"""The Kilted and Jazzy requirement sets stay twins: the same ROS packages under each distribution's names, and the
same pin for everything that is not ROS (torch, numpy, colcon, pytest, ...), so a result that differs between the
two builds can only come from ROS itself."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

REQ = Path(__file__).resolve().parents[1] / "requirements"
# exists only from Kilted on; Jazzy's message generation instead needs the test helpers at configure time
KILTED_ONLY = {"ament-cmake-ros-core"}
JAZZY_ONLY = {"ament-cmake-gmock", "ament-cmake-gtest", "ament-cmake-pytest"}


def _lines(name: str) -> List[str]:
    return [ln.strip() for ln in (REQ / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _pins(name: str) -> Dict[str, str]:
    return dict(ln.split("==", 1) for ln in _lines(name))


def _non_ros(pins: Dict[str, str]) -> Dict[str, str]:
    # a ROS wheel installs its Python package under a second, unprefixed name (rclpy next to ros-rclpy)
    return {n: v for n, v in pins.items() if not n.startswith("ros-") and f"ros-{n}" not in pins}


def test_jazzy_requirements_mirror_kilted() -> None:
    kilted, jazzy = _lines("ros.txt"), _lines("ros-jazzy.txt")
    kilted_ros = {n[len("ros-"):] for n in kilted if n.startswith("ros-")}
    jazzy_ros = {n[len("ros-jazzy-"):] for n in jazzy if n.startswith("ros-jazzy-")}
    assert jazzy_ros == (kilted_ros - KILTED_ONLY) | JAZZY_ONLY
    assert [n for n in kilted if not n.startswith("ros-")] == [n for n in jazzy if not n.startswith("ros-")]


def test_non_ros_pins_identical() -> None:
    kilted, jazzy = _non_ros(_pins("constraints.txt")), _non_ros(_pins("constraints-jazzy.txt"))
    assert "torch" in kilted and "numpy" in kilted and "colcon-core" in kilted
    diff = {n: (kilted.get(n), jazzy.get(n)) for n in kilted.keys() | jazzy.keys() if kilted.get(n) != jazzy.get(n)}
    assert not diff, f"non-ROS pins differ between constraints.txt and constraints-jazzy.txt: {diff}"


def test_every_ros_requirement_pinned() -> None:
    for reqs, cons in (("ros.txt", "constraints.txt"), ("ros-jazzy.txt", "constraints-jazzy.txt")):
        pins = _pins(cons)
        missing = [n for n in _lines(reqs) if n not in pins]
        assert not missing, f"{reqs}: not pinned in {cons}: {missing}"
