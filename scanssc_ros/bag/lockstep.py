"""Drive a running scanssc_node with a bag one frame at a time and collect its grids (demo and end-to-end runs).

``ros2 bag play`` (and ``scanssc-play``) keep the recorded timing; a CPU model slower than the camera then drops
frames by design. To get one output per input frame, :class:`LockstepPlayer` publishes a frame's messages
(camera_info first) and waits for the node's grid with that frame's stamp before sending the next one.
:class:`NodeProcess` starts the installed executable the way a user does (params file + overrides + remaps).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from scanssc_ros.bag.play import bag_topics, iter_raw, message_class, open_bag


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
                 remaps: Dict[str, str], log_path: Optional[Path] = None) -> None:
        if not Path(executable).is_file():
            raise FileNotFoundError(f"{executable} not found: build the package first (make setup)")
        args = [str(executable), "--ros-args", "--params-file", str(params_file), "-r", f"__node:={name}"]
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


class LockstepPlayer:
    """Publishes bag frames to a node and waits for its ``~/voxels`` grid after each one."""

    def __init__(self, context: Any, node_name: str, topic_types: Dict[str, str]) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from scanssc_ros.msg import SemanticVoxelGrid

        self.node = Node(f"lockstep_{node_name}", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.grids: List[Any] = []
        self.node.create_subscription(SemanticVoxelGrid, f"/{node_name}/voxels", self.grids.append, qos)
        self.pubs = {t: self.node.create_publisher(message_class(mt), t, qos) for t, mt in topic_types.items()}
        self.node_name = node_name

    def spin_until(self, cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
        return cond()

    def wait_ready(self, node: NodeProcess, topics: Sequence[str], timeout: float = 120.0) -> None:
        ok = self.spin_until(lambda: not node.alive() or (
            all(self.pubs[t].get_subscription_count() > 0 for t in topics)
            and self.node.count_publishers(f"/{self.node_name}/voxels") > 0), timeout)
        if not ok or not node.alive():
            raise RuntimeError(f"scanssc_node did not come up (exit code {node.proc.poll()}):\n{node.output()}")

    def play_frame(self, msgs: Dict[str, bytes], node: NodeProcess, timeout: float = 120.0) -> Tuple[Any, float]:
        """Publish one frame; returns (its grid message, seconds from publishing to receiving the grid)."""
        n = len(self.grids)
        t0 = time.monotonic()
        for topic in sorted(msgs, key=lambda t: not t.endswith("camera_info")):
            self.pubs[topic].publish(msgs[topic])
        if not self.spin_until(lambda: len(self.grids) > n or not node.alive(), timeout) or not node.alive():
            raise RuntimeError(f"no grid within {timeout:.0f} s (node alive: {node.alive()})")
        return self.grids[-1], time.monotonic() - t0

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()
