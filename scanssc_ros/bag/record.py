"""Record topics to a rosbag2 (MCAP or sqlite3) without ros2cli: ``scanssc-record``.

    scanssc-record [TOPIC ...] [--all] [--exclude REGEX] [-o OUT] [--storage mcap|sqlite3] [--duration SEC]
                   [--max-messages N] [--version 8|9]

Messages are taken as the serialized CDR the publisher sent (raw subscriptions) and written as they arrive, so
nothing is deserialized. Each topic's type comes from the graph and its definition from the ``.msg`` file of the
installed package (``share/<pkg>/msg``: what the publisher really uses), written into the bag so any reader can
decode it, our ``scanssc_ros/SemanticVoxelGrid`` included. Topics that appear later are picked up while recording.

Subscriptions follow the publishers' offer, as ``ros2 bag record`` does: reliable unless a publisher is best
effort, transient-local when every publisher is (``/tf_static``), and that offer is stored for ``scanssc-play``.
SIGINT or SIGTERM (or ``--duration`` / ``--max-messages``) stops it cleanly: messages already received by the
middleware are drained and written, then the bag is closed; every stop path leaves a readable bag.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from scanssc_ros.bag.play import message_class

EXIT_ERROR = 2
HIDDEN_TOPICS = ("/rosout", "/parameter_events")  # --all leaves these out, as ros2 bag record does by default


class RecordError(RuntimeError):
    """Bad arguments, an output that exists, or a type whose definition cannot be found."""


@dataclass
class RecordStats:
    counts: Dict[str, int] = field(default_factory=dict)
    types: Dict[str, str] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)  # topic -> why it is not recorded
    seconds: float = 0.0
    stopped_by: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ------------------------------------------------------------------------------------- type definitions
def find_msg_file(msgtype: str, prefixes: Optional[Sequence[str]] = None) -> Optional[Path]:
    """'pkg/msg/Name' -> share/pkg/msg/Name.msg in the first prefix of AMENT_PREFIX_PATH that has it."""
    pkg, _, name = msgtype.split("/")
    if prefixes is None:
        prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        prefixes.append(sys.prefix)  # the wheels install share/ into the environment
    for prefix in prefixes:
        path = Path(prefix) / "share" / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path
    return None


def _referenced(fields: Iterable[Any]) -> List[str]:
    """Nested message type names in a rosbags field list."""
    out: List[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str) and node.count("/") == 2:
            out.append(node)
        elif isinstance(node, (tuple, list)):
            for item in node:
                walk(item)

    for _, desc in fields:
        walk(desc)
    return out


def build_typestore(msgtypes: Iterable[str], prefixes: Optional[Sequence[str]] = None) -> Any:
    """A rosbags typestore holding ``msgtypes`` and everything they contain, from the installed ``.msg`` files;
    a type without one falls back to rosbags' own store of the latest distro."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    fallback = get_typestore(Stores.LATEST)

    def add(msgtype: str) -> None:
        if msgtype in store.types:
            return
        path = find_msg_file(msgtype, prefixes)
        if path is not None:
            types = get_types_from_msg(path.read_text(), msgtype)
        elif msgtype in fallback.fielddefs:
            types = {msgtype: fallback.fielddefs[msgtype]}
        else:
            pkg, _, name = msgtype.split("/")
            raise RecordError(f"no definition of {msgtype}: no share/{pkg}/msg/{name}.msg under AMENT_PREFIX_PATH "
                              "(source the workspace that builds it)")
        for nested in _referenced(types[msgtype][1]):  # rosbags resolves nested types when registering
            add(nested)
        store.register(types)

    for msgtype in msgtypes:
        add(msgtype)
    return store


# -------------------------------------------------------------------------------------------------- QoS
def offered_qos(node: Any, topic: str) -> Tuple[Any, List[Any]]:
    """(rclpy QoS to subscribe with, rosbags Qos profiles the publishers offer)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infos = node.get_publishers_info_by_topic(topic)
    best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
    latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    qos = QoSProfile(depth=100,
                     reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
    zero = QosTime(sec=0, nsec=0)
    profiles = [Qos(history=QosHistory.KEEP_LAST, depth=max(1, int(i.qos_profile.depth or 1)),
                    reliability=(QosReliability.BEST_EFFORT
                                 if i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                                 else QosReliability.RELIABLE),
                    durability=(QosDurability.TRANSIENT_LOCAL
                                if i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                                else QosDurability.VOLATILE),
                    deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
                    liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False) for i in infos]
    return qos, profiles


# ---------------------------------------------------------------------------------------------- recorder
class Recorder:
    """Subscribes to the selected topics as they appear and writes every message to one open bag."""

    def __init__(self, node: Any, writer: Any, topics: Sequence[str], record_all: bool,
                 exclude: Optional[str], stats: RecordStats,
                 prefixes: Optional[Sequence[str]] = None, on_message: Optional[Callable[[], None]] = None) -> None:
        self.node, self.writer, self.stats = node, writer, stats
        self.topics = [t if t.startswith("/") else "/" + t for t in topics]
        self.record_all = record_all
        self.exclude = re.compile(exclude) if exclude else None
        self.prefixes = prefixes
        self.on_message = on_message
        self._subs: Dict[str, Any] = {}
        self._conns: Dict[str, Any] = {}

    def wanted(self, topic: str) -> bool:
        if self.exclude is not None and self.exclude.search(topic):
            return False
        if topic in self.topics:
            return True
        return self.record_all and topic not in HIDDEN_TOPICS

    def discover(self) -> None:
        """Subscribe to every wanted topic that has a publisher now and is not subscribed yet."""
        for topic, types in self.node.get_topic_names_and_types():
            if topic in self._subs or topic in self.stats.skipped or not self.wanted(topic):
                continue
            if not self.node.get_publishers_info_by_topic(topic):
                continue  # only subscribers so far: its type and QoS are not known yet
            if len(types) != 1:
                self._skip(topic, f"{len(types)} types on one topic ({', '.join(types)})")
                continue
            msgtype = types[0]
            try:
                store = build_typestore([msgtype], self.prefixes)
                cls = message_class(msgtype)
            except (RecordError, ImportError, AttributeError, ValueError) as exc:
                self._skip(topic, str(exc))
                continue
            qos, profiles = offered_qos(self.node, topic)
            conn = self.writer.add_connection(topic, msgtype, typestore=store, offered_qos_profiles=profiles)
            self._conns[topic] = conn
            self.stats.counts[topic] = 0
            self.stats.types[topic] = msgtype
            self._subs[topic] = self.node.create_subscription(
                cls, topic, lambda raw, t=topic: self._write(t, raw), qos, raw=True)

    def missing(self) -> List[str]:
        return [t for t in self.topics if t not in self._subs and t not in self.stats.skipped]

    def _write(self, topic: str, raw: bytes) -> None:
        self.writer.write(self._conns[topic], time.time_ns(), bytes(raw))
        self.stats.counts[topic] += 1
        if self.on_message is not None:
            self.on_message()

    def _skip(self, topic: str, why: str) -> None:
        self.stats.skipped[topic] = why
        print(f"scanssc-record: not recording {topic}: {why}", file=sys.stderr)


def record(out: Path, topics: Sequence[str] = (), *, record_all: bool = False, exclude: Optional[str] = None,
           storage: str = "mcap", version: int = 8, duration: Optional[float] = None,
           max_messages: Optional[int] = None, context: Any = None, stop: Optional[Callable[[], bool]] = None,
           progress: bool = True, drain_seconds: float = 0.5) -> RecordStats:
    """Record until ``stop()`` is true, SIGINT/SIGTERM (when run from the CLI), ``duration`` s or
    ``max_messages``; then drain what the middleware already holds, and close the bag."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    out = Path(out)
    if not topics and not record_all:
        raise RecordError("nothing to record: name topics or use --all")
    if out.exists():
        raise RecordError(f"{out} exists already; choose a new output directory")
    if storage not in ("mcap", "sqlite3"):
        raise RecordError(f"storage {storage!r}: mcap or sqlite3")
    stats = RecordStats()
    node = rclpy.create_node(f"scanssc_record_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    bar = tqdm(unit="msg", desc="recording", disable=not progress, mininterval=1.0, file=sys.stderr)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(out, version=version, storage_plugin=plugin)
    writer.open()
    try:
        rec = Recorder(node, writer, topics, record_all, exclude, stats, on_message=lambda: bar.update(1))
        t0 = time.monotonic()
        next_discovery = 0.0
        warned_missing = False
        stop = stop or (lambda: False)
        while not stop():
            now = time.monotonic()
            if duration is not None and now - t0 >= duration:
                stats.stopped_by = "duration"
                break
            if max_messages is not None and stats.total >= max_messages:
                stats.stopped_by = "max-messages"
                break
            if now >= next_discovery:
                rec.discover()
                next_discovery = now + 0.5
                if not warned_missing and now - t0 > 5.0 and rec.missing():
                    print(f"scanssc-record: waiting for publishers on {', '.join(rec.missing())}", file=sys.stderr)
                    warned_missing = True
            executor.spin_once(timeout_sec=0.05)
        stats.stopped_by = stats.stopped_by or "signal"
        # messages the middleware has received but not handed over yet: take them until it has none left
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and (max_messages is None or stats.total < max_messages):
            executor.spin_once(timeout_sec=0.05)
        stats.seconds = time.monotonic() - t0
    finally:
        bar.close()
        writer.close()
        executor.remove_node(node)
        node.destroy_node()
    return stats


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scanssc-record", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("topics", nargs="*", help="topics to record, e.g. /scanssc_node/voxels /scanssc_node/occupancy")
    p.add_argument("-a", "--all", action="store_true", help="every topic with a publisher (not /rosout and "
                   "/parameter_events unless named)")
    p.add_argument("--exclude", default=None, metavar="REGEX", help="leave out topics matching this")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="bag directory to create (default: scanssc_YYYYmmdd-HHMMSS)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--version", type=int, choices=(8, 9), default=8,
                   help="rosbag2 metadata version (8: Humble and later read it; 9: Jazzy and later)")
    p.add_argument("--duration", type=float, default=None, metavar="SEC", help="stop after this many seconds")
    p.add_argument("--max-messages", type=int, default=None, metavar="N", help="stop after N messages")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    out = args.output or Path(time.strftime("scanssc_%Y%m%d-%H%M%S"))
    try:
        import rclpy
        from rclpy.signals import SignalHandlerOptions
    except ImportError as exc:
        print(f"scanssc-record: needs rclpy ({exc}); source the ROS 2 workspace", file=sys.stderr)
        return EXIT_ERROR
    # our own handlers: rclpy's would shut the context down mid-write, and the drain needs it alive
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stopping = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stopping["signal"] = signal.Signals(signum).name

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = record(out, args.topics, record_all=args.all, exclude=args.exclude, storage=args.storage,
                       version=args.version, duration=args.duration, max_messages=args.max_messages,
                       stop=lambda: stopping["signal"] is not None, progress=not args.quiet)
    except RecordError as exc:
        print(f"scanssc-record: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        rclpy.try_shutdown()
    why = stopping["signal"] or stats.stopped_by
    print(f"scanssc-record: {stats.total} messages on {len(stats.counts)} topics in {stats.seconds:.1f} s "
          f"(stopped by {why}) -> {out}")
    for topic in sorted(stats.counts):
        print(f"  {topic} [{stats.types[topic]}]: {stats.counts[topic]}")
    for topic, why_not in sorted(stats.skipped.items()):
        print(f"  {topic}: not recorded ({why_not})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
