"""Drive a running scanssc_node with a bag one frame at a time and collect its grids (demo and end-to-end runs).

``ros2 bag play`` (and ``scanssc-play``) keep the recorded timing; a CPU model slower than the camera then drops
frames by design. To get one output per input frame, :class:`LockstepPlayer` publishes a frame's messages
(camera_info first) and waits for the node's grid before sending the next one. A frame the node dropped (its
``/diagnostics`` drop count rose) or that produced nothing for a long time is sent again, a bounded number of
times, so one lost or mis-timed message cannot stall a run.
:class:`NodeProcess` starts the installed executable the way a user does (params file + overrides + remaps).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from scanssc_ros.bag.play import bag_topics, iter_raw, message_class, open_bag

NODE_EXECUTABLE = Path("lib") / "scanssc_ros" / "scanssc_node"


def installed_executable() -> Path:
    """``scanssc_node`` of the sourced workspace: the first ``AMENT_PREFIX_PATH`` entry that has it, which is where
    ``ros2 run`` looks too, so the build of whichever distribution ``scripts/env.sh`` set up is the one started. With
    nothing sourced, this checkout's default (Kilted) install, which may not exist."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and (Path(prefix) / NODE_EXECUTABLE).is_file():
            return Path(prefix) / NODE_EXECUTABLE
    return Path(__file__).resolve().parents[2] / "install" / "scanssc_ros" / NODE_EXECUTABLE


def bag_frames(bag: Path, topics: Optional[Sequence[str]] = None
               ) -> Tuple[List[Tuple[int, Dict[str, bytes]]], Dict[str, str]]:
    """([(receive time ns, {topic: raw CDR})] grouped by receive time (= header stamp in scanssc-kitti2bag bags),
    {topic: message type})."""
    reader = open_bag(bag)
    try:
        types = {t.name: t.msgtype for t in bag_topics(reader)}
        names = list(types) if topics is None else list(topics)
        grouped: Dict[int, Dict[str, bytes]] = defaultdict(dict)
        for topic, t_ns, raw in iter_raw(reader, names):
            grouped[t_ns][topic] = raw
    finally:
        reader.close()
    return sorted(grouped.items()), {t: types[t] for t in names}


class NodeProcess:
    """The installed ``scanssc_node`` as a child process."""

    def __init__(self, executable: Path, params_file: Path, name: str, params: Dict[str, Any],
                 remaps: Dict[str, str], log_path: Optional[Path] = None, launcher: Sequence[str] = ()) -> None:
        """``launcher``: words put before the executable, e.g. a shell that sources another workspace first."""
        if not Path(executable).is_file():
            raise FileNotFoundError(f"{executable} not found: build the package first (make setup)")
        args = [*launcher, str(executable), "--ros-args", "--params-file", str(params_file), "-r", f"__node:={name}"]
        for src, dst in remaps.items():
            args += ["-r", f"{src}:={dst}"]
        for k, v in params.items():
            args += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.PIPE  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_path:
            self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        if self.log_path:
            return Path(self.log_path).read_text()
        return self.proc.communicate()[0] if self.proc.stdout else ""


# drops that a resent copy of a frame causes by itself (the node already published that stamp, or the next frame
# replaced the copy): they must not trigger another resend
_RESEND_ECHOES = ("duplicate", "superseded")


class LockstepPlayer:
    """Publishes bag frames to a node and waits for its ``~/voxels`` grid after each one. With no topics it is a
    plain watcher of the node's grids and ``/diagnostics`` (e.g. while ``scanssc-play`` plays to it)."""

    def __init__(self, context: Any, node_name: str, topic_types: Dict[str, str]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from scanssc_ros.msg import SemanticVoxelGrid

        self.node = Node(f"lockstep_{node_name}", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.grids: List[Any] = []
        self.diagnostics: Dict[str, str] = {}  # the node's newest /diagnostics values
        self.resends: List[Dict[str, Any]] = []
        self.node.create_subscription(SemanticVoxelGrid, f"/{node_name}/voxels", self.grids.append, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos)
        self.pubs = {t: self.node.create_publisher(message_class(mt), t, qos) for t, mt in topic_types.items()}
        self.node_name = node_name

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith(f"{self.node_name}:"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def drops(self) -> Dict[str, int]:
        """The node's drop counts by reason, as of its newest /diagnostics message."""
        return {k.split("/", 1)[1]: int(v) for k, v in self.diagnostics.items() if k.startswith("dropped/")}

    def accounted(self) -> int:
        """Frames the node has published or dropped by reason (its newest /diagnostics)."""
        return int(self.diagnostics.get("frames_published", 0)) + sum(self.drops().values())

    def _dropped_since(self, before: Dict[str, int]) -> Dict[str, int]:
        now = self.drops()
        return {k: v - before.get(k, 0) for k, v in now.items()
                if k not in _RESEND_ECHOES and v > before.get(k, 0)}

    def spin_until(self, cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
        return cond()

    def wait_ready(self, node: NodeProcess, topics: Sequence[str], timeout: float = 120.0) -> None:
        ok = self.spin_until(lambda: not node.alive() or (
            all((self.pubs[t].get_subscription_count() if t in self.pubs else self.node.count_subscribers(t)) > 0
                for t in topics) and self.node.count_publishers(f"/{self.node_name}/voxels") > 0), timeout)
        if not ok or not node.alive():
            raise RuntimeError(f"scanssc_node did not come up (exit code {node.proc.poll()}):\n{node.output()}")

    def play_frame(self, msgs: Dict[str, bytes], node: NodeProcess, timeout: float = 60.0, retries: int = 3,
                   log: Callable[[str], None] = print) -> Tuple[Any, float]:
        """Publish one frame; returns (its grid message, seconds from the last publishing to receiving the grid).

        The frame is sent again when the node reports a new drop (other than those a resent copy causes itself)
        or nothing came for ``timeout`` seconds, at most ``retries`` times; every resend is logged and kept in
        ``self.resends``."""
        n = len(self.grids)
        for attempt in range(retries + 1):
            before = self.drops()
            t0 = time.monotonic()
            for topic in sorted(msgs, key=lambda t: not t.endswith("camera_info")):
                self.pubs[topic].publish(msgs[topic])
            self.spin_until(lambda b=before: len(self.grids) > n or not node.alive() or bool(self._dropped_since(b)),
                            timeout)
            if len(self.grids) > n:
                return self.grids[-1], time.monotonic() - t0
            if not node.alive():
                raise RuntimeError(f"scanssc_node exited (code {node.proc.poll()}) during a frame")
            dropped = self._dropped_since(before)
            why = (f"the node dropped it ({', '.join(f'{k}={v}' for k, v in sorted(dropped.items()))})" if dropped
                   else f"no grid within {timeout:.0f} s")
            if attempt < retries:
                self.resends.append({"attempt": attempt + 1, "why": why})
                log(f"[lockstep] {why}: sending the frame again ({attempt + 1}/{retries})")
        raise RuntimeError(f"no grid after {retries + 1} sends: {why}")

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()
