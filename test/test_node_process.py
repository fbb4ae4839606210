"""The installed scanssc_node executable: starts from the params file, joins the graph, stops on SIGINT (idle, during
start-up, and in the middle of an inference, then starts again), and refuses bad parameters with a clear message.

Stop times measured on a loaded 2-core machine (docs/reliability.md): idle 0.6-0.75 s after SIGINT (0.1 s to notice
the signal between spin_once calls, ~0.5 s of interpreter teardown), during an inference 1.2 s (the worker's 1 s
grace period, then os._exit), during start-up 0.1-0.3 s. The bounds leave a margin for a busier machine and still
catch the 7-10 s stops seen before start-up could be interrupted.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from scanssc_ros.bag.lockstep import installed_executable

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EXECUTABLE = installed_executable()  # the build of the sourced distribution (scripts/env.sh)
PARAMS = REPO / "config" / "scanssc.yaml"
# generous: importing rclpy + torch and building the lite model on a loaded 2-core machine can take tens of seconds
STARTUP_TIMEOUT = 120.0


def _slowness() -> float:
    """How much slower this machine runs plain Python than the one the bound was set on (>= 1)."""
    t = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    return max(1.0, (time.perf_counter() - t) / 0.16)  # 0.16 s there (a 10^7 loop: 0.78 s)


# seconds from SIGINT to exit, idle or busy: 2 s (issue #6) where Python runs as fast as on the machine the
# stop path was measured on (0.6-0.8 s idle, 0.7-1.2 s busy there), proportionally more on slower CI machines
STOP_LIMIT = 2.0 * _slowness()


class NodeProcess:
    """The executable with its stderr read line by line in the background (timestamped)."""

    def __init__(self, *ros_args: str, name: str) -> None:
        if not EXECUTABLE.is_file():
            pytest.skip(f"{EXECUTABLE} not built; run `make test`")
        cmd = [str(EXECUTABLE), "--ros-args", "--params-file", str(PARAMS), "-r", f"__node:={name}",
               "-p", "allow_untrained:=true", *ros_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: List[Tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for_line(self, text: str, timeout: float = STARTUP_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for _, line in self.lines):
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        return any(text in line for _, line in self.lines)

    def interrupt(self, timeout: float = 30.0) -> Tuple[int, float]:
        """SIGINT, then (exit code, seconds until the process was gone)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"no exit {timeout:.0f} s after SIGINT\nstderr:\n{self.stderr}")
        elapsed = time.monotonic() - t0
        self._reader.join(5.0)
        return rc, elapsed

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _node_names(ctx, timeout: float, wanted: str) -> bool:
    from rclpy.node import Node

    probe = Node("graph_probe", context=ctx)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted in probe.get_node_names():
                return True
            time.sleep(0.1)
        return False
    finally:
        probe.destroy_node()


def test_node_starts_joins_graph_and_stops_on_sigint(ros_context):
    name = f"scanssc_it_{os.getpid()}"
    node = NodeProcess(name=name)
    try:
        assert node.wait_for_line("scanssc_node ready"), f"not ready (exit {node.proc.poll()})\n{node.stderr}"
        assert _node_names(ros_context, 30.0, name), "node never appeared in the graph"
        rc, elapsed = node.interrupt()
    finally:
        node.kill()
    assert rc == 0, f"exit code {rc}\n{node.stderr}"
    print(f"idle: stopped {elapsed:.2f} s after SIGINT")
    assert elapsed < STOP_LIMIT, f"took {elapsed:.2f} s to stop\n{node.stderr}"
    assert "Traceback" not in node.stderr


def test_sigint_during_startup_stops_at_once():
    # this warning comes before the model is built and warmed up (seconds for 'lite' on a slow CPU)
    node = NodeProcess("-p", "variant:=lite", name=f"scanssc_early_{os.getpid()}")
    try:
        assert node.wait_for_line("running an UNTRAINED"), node.stderr
        rc, elapsed = node.interrupt()
    finally:
        node.kill()
    print(f"start-up: stopped {elapsed:.2f} s after SIGINT")
    assert rc == 0 and "interrupted during start-up" in node.stderr, f"exit {rc}\n{node.stderr}"
    assert elapsed < STOP_LIMIT, f"took {elapsed:.2f} s to stop\n{node.stderr}"
    assert "Traceback" not in node.stderr and "scanssc_node ready" not in node.stderr


def _kitti_size_inputs():
    from nodeutil import P_LEFT, P_RIGHT, image_msg, info_msg

    w, h = 1226, 370
    rows = lambda P: [v * 2 if i < 8 else v for i, v in enumerate(P)]  # noqa: E731 - nodeutil's P are half size
    wide = np.random.default_rng(0).integers(0, 256, size=(h, w + 30, 3), dtype=np.uint8)
    left, right = np.ascontiguousarray(wide[:, 30:]), np.ascontiguousarray(wide[:, :w])

    def frame(t: float):
        return {"left/camera_info": info_msg(rows(P_LEFT), t, w=w, h=h),
                "right/camera_info": info_msg(rows(P_RIGHT), t, frame="camera_right", w=w, h=h),
                "right/image_rect": image_msg(right, t, frame="camera_right"),
                "left/image_rect": image_msg(left, t)}
    return frame


def test_sigint_while_inferring_exits_within_2s_and_restarts(ros_context):
    """The real (untrained) lite model on KITTI-size stereo frames at 10 Hz: the node is always busy (a newer frame
    waits whenever an inference ends; at 2 Hz the faster lite model of 2026-12-05, 0.4-0.7 s here, could sit idle
    between frames, and SIGINT then missed the inference in all 3 tries once in CI). SIGINT inside an inference
    must end the process with status 0 within STOP_LIMIT; a new start works."""
    from nodeutil import Graph, Probe, wait_for

    name = f"scanssc_busy_{os.getpid()}"
    args = ("-p", "variant:=lite", "-p", "warmup:=false", "-p", "diagnostics_period:=0.2")
    frame = _kitti_size_inputs()
    feeding = threading.Event()
    probe = None

    def feed() -> None:
        i = 0
        while feeding.is_set():
            for topic, msg in frame(100.0 + 0.1 * i).items():
                probe.pub[topic].publish(msg)
            i += 1
            time.sleep(0.1)

    # frames come faster than the model runs, so right after publishing a grid the worker starts on the newest
    # frame: a SIGINT within 0.15 s of a grid's arrival lands in that frame's processing (lite: decode, SGBM and
    # inference 0.5-0.7 s on an idle machine; the worker gets 0.3 s to finish). Delays of 0.15-0.55 s landed in 4
    # of 10 tries once the node's inference got faster (2026-12-05 evening), these in 10 of 10. Where one does
    # not land the stop is still checked and the run repeated with another delay.
    landed = False
    delays = (0.05, 0.0, 0.1, 0.15, 0.02)
    for attempt, delay in enumerate(delays):
        node = NodeProcess(*args, name=f"{name}_{attempt}")
        probe = Probe(ros_context, node_name=f"{name}_{attempt}")
        graph = Graph(ros_context, probe.node)
        feeder = threading.Thread(target=feed, daemon=True)
        try:
            assert node.wait_for_line("scanssc_node ready"), node.stderr
            assert wait_for(lambda p=probe: p.connected(["left/image_rect", "right/image_rect"]), 30.0)
            feeding.set()
            feeder.start()
            assert wait_for(lambda p=probe: len(p.got["grid"]) >= 1, 120.0), node.stderr
            n = len(probe.got["grid"])
            assert wait_for(lambda p=probe, n=n: len(p.got["grid"]) > n, 60.0), node.stderr
            time.sleep(delay)
            rc, elapsed = node.interrupt()
        finally:
            feeding.clear()
            node.kill()
            feeder.join(2.0)
            graph.close()
            probe.node.destroy_node()
        print(f"busy: stopped {elapsed:.2f} s after SIGINT; inference "
              f"{probe.diag_value('latency_ms/model/total') or probe.diag_value('latency_ms/inference')} ms")
        assert rc == 0, f"exit code {rc}\n{node.stderr}"
        assert elapsed < STOP_LIMIT, f"took {elapsed:.2f} s to stop\n{node.stderr}"
        assert "Traceback" not in node.stderr
        if "an inference was still running" in node.stderr:
            landed = True
            break
    assert landed, f"SIGINT never landed in an inference in {len(delays)} runs\n{node.stderr}"

    again = NodeProcess(*args, name=name)
    try:
        assert again.wait_for_line("scanssc_node ready"), f"restart failed\n{again.stderr}"
        rc, elapsed = again.interrupt()
    finally:
        again.kill()
    print(f"restart: ready, stopped {elapsed:.2f} s after SIGINT")
    assert rc == 0 and elapsed < STOP_LIMIT, f"exit {rc} after {elapsed:.2f} s\n{again.stderr}"


@pytest.mark.parametrize("override, needle", [
    ("sync_tolerance:=5.0", "sync_tolerance"),
    ("device:=gpu0", "device"),
    ("precision:=int4", "precision"),
    ("max_voxels:=-3", "max_voxels"),
])
def test_out_of_range_parameter_is_a_clear_error(override, needle):
    node = NodeProcess("-p", override, name=f"scanssc_bad_{os.getpid()}")
    try:
        rc = node.proc.wait(timeout=STARTUP_TIMEOUT)
        node._reader.join(5.0)
    finally:
        node.kill()
    assert rc == 2, f"exit {rc}\n{node.stderr}"
    assert "invalid parameters" in node.stderr and needle in node.stderr, node.stderr
    assert "Traceback" not in node.stderr
