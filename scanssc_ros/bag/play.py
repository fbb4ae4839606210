"""Replay a rosbag2 through rclpy without ros2cli: ``scanssc-play``.

    scanssc-play BAG [--rate 1.0] [--loop] [--remap OLD:=NEW ...] [--start-delay 1.0] [--topics T ...]
                 [--clock [HZ]] [--best-effort] [--depth 10] [--wait-subscribers SEC]

The bag is read with rosbags (``AnyReader``, MCAP or sqlite3) and every message is published as the raw CDR bytes
stored in the bag: rclpy's ``Publisher.publish`` accepts serialized bytes, and bags hold exactly the CDR a ROS 2
publisher puts on the wire, so nothing is deserialized. Only the message *class* is needed, to create the
publisher; it is imported by name (``sensor_msgs/msg/Image`` -> ``sensor_msgs.msg.Image``).

Timing: message i is published at ``start + (t_i - t_0) / rate`` on the monotonic clock (bag receive times).
``--topics`` filters on the recorded names, ``--remap`` renames after filtering. Publishers are reliable
(``--best-effort`` to change) with KEEP_LAST ``--depth``; topics recorded with a transient-local profile
(``/tf_static``) are republished transient-local. ``--clock`` publishes /clock (sim time = bag time) at HZ
(default 40, like ``ros2 bag play --clock``) and drops a recorded /clock. A bag that cannot be read gives one
error line and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

EXIT_BAG_ERROR = 2
EXIT_INTERRUPTED = 130


class BagError(RuntimeError):
    """A bag that is missing, corrupt, truncated or otherwise unreadable."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int
    transient_local: bool


@dataclass
class PlayStats:
    published: Dict[str, int] = field(default_factory=dict)
    clock_ticks: int = 0
    loops: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------- bag access
def open_bag(path: Path) -> Any:
    """An opened rosbags AnyReader, or :class:`BagError` with a one-line reason."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.LATEST))
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags, sqlite3, mcap and zstd raise many types; all mean "bad bag"
        raise BagError(f"{path}: cannot open bag: {_reason(exc)}") from exc
    return reader


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def bag_topics(reader: Any) -> List[TopicInfo]:
    from rosbags.interfaces import QosDurability

    out: Dict[str, TopicInfo] = {}
    for conn in reader.connections:
        profiles = getattr(conn.ext, "offered_qos_profiles", None) or []
        transient = any(getattr(q, "durability", None) == QosDurability.TRANSIENT_LOCAL for q in profiles)
        prev = out.get(conn.topic)
        if prev is not None and prev.msgtype != conn.msgtype:
            raise BagError(f"topic {conn.topic} has two message types: {prev.msgtype}, {conn.msgtype}")
        count = conn.msgcount + (prev.count if prev else 0)
        out[conn.topic] = TopicInfo(conn.topic, conn.msgtype, count, transient or bool(prev and prev.transient_local))
    return sorted(out.values(), key=lambda t: t.name)


def iter_raw(reader: Any, topics: Iterable[str]) -> Iterator[Tuple[str, int, bytes]]:
    """(topic, receive time ns, CDR bytes) in time order; read errors become :class:`BagError`."""
    wanted = set(topics)
    conns = [c for c in reader.connections if c.topic in wanted]
    try:
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, int(t_ns), bytes(raw)
    except BagError:
        raise
    except Exception as exc:  # noqa: BLE001 - see open_bag
        raise BagError(f"bag is corrupt or truncated: {_reason(exc)}") from exc


def message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> the rclpy class sensor_msgs.msg.Image."""
    parts = msgtype.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"not a ROS 2 message type name: {msgtype!r}")
    module = importlib.import_module(f"{parts[0]}.{parts[1]}")
    return getattr(module, parts[2])


def parse_remaps(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        old, sep, new = item.partition(":=")
        if not sep or not old or not new:
            raise ValueError(f"bad remap {item!r}: use OLD:=NEW")
        out[old] = new
    return out


# ----------------------------------------------------------------------------------------------- timing
def play_messages(messages: Iterable[Tuple[str, int, bytes]], publish: Callable[[str, bytes], None], *,
                  rate: float = 1.0, clock: Optional[Callable[[int], None]] = None, clock_hz: float = 40.0,
                  now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                  stats: Optional[PlayStats] = None) -> PlayStats:
    """Publish ``messages`` (time-ordered) with their recorded spacing divided by ``rate``.

    ``clock(t_ns)`` is called every 1/``clock_hz`` wall seconds with the bag time at that instant. ``now`` and
    ``sleep`` are injectable so the schedule can be tested without waiting.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    stats = stats or PlayStats()
    period = 1.0 / clock_hz if clock is not None else None
    wall0: Optional[float] = None
    bag0 = 0
    next_tick = 0.0

    def wait_until(deadline: float) -> None:
        nonlocal next_tick
        while True:
            t = now()
            if period is not None and next_tick <= min(deadline, t):
                clock(bag0 + int(round((next_tick - wall0) * rate * 1e9)))
                stats.clock_ticks += 1
                next_tick = max(next_tick + period, t)  # after a stall: one catch-up tick, not a burst
                continue
            target = deadline if period is None else min(deadline, next_tick)
            if t >= deadline:
                return
            sleep(min(target - t, 0.1))  # short slices keep Ctrl-C responsive

    for topic, t_ns, raw in messages:
        if wall0 is None:
            wall0, bag0 = now(), t_ns
            next_tick = wall0
        wait_until(wall0 + (t_ns - bag0) / 1e9 / rate)
        publish(topic, raw)
        stats.published[topic] = stats.published.get(topic, 0) + 1
    return stats


# ------------------------------------------------------------------------------------------------- rclpy
def play_bag(node: Any, reader: Any, *, rate: float = 1.0, topics: Optional[Sequence[str]] = None,
             remap: Optional[Dict[str, str]] = None, reliable: bool = True, depth: int = 10,
             clock_hz: Optional[float] = None, loops: Optional[int] = 1, start_delay: float = 0.0,
             wait_subscribers: float = 0.0, log: Callable[[str], None] = print) -> PlayStats:
    """Publish the bag's messages from ``node``; ``loops=None`` repeats until interrupted.

    ``wait_subscribers`` (seconds) first waits until every volatile publisher has a subscriber, so nothing is published
    before discovery has matched it; at the end, reliable publishers wait (up to 5 s) until subscribers have
    acknowledged everything, so a short playback is not cut off by the process exiting.
    """
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    remap = remap or {}
    infos = {t.name: t for t in bag_topics(reader)}
    selected = list(infos) if topics is None else list(topics)
    unknown = [t for t in selected if t not in infos]
    if unknown:
        raise BagError(f"topics not in bag: {', '.join(unknown)} (bag has {', '.join(infos) or 'none'})")
    if clock_hz is not None and "/clock" in selected:
        selected.remove("/clock")  # the player's own /clock replaces the recorded one

    publishers = {}
    for name in selected:
        info = infos[name]
        try:
            cls = message_class(info.msgtype)
        except (ImportError, AttributeError, ValueError) as exc:
            log(f"scanssc-play: skipping {name}: message type {info.msgtype} not importable ({_reason(exc)})")
            continue
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if info.transient_local
                         else DurabilityPolicy.VOLATILE)
        publishers[name] = node.create_publisher(cls, remap.get(name, name), qos)
    if not publishers:
        raise BagError("no playable topics")

    clock_cb = None
    if clock_hz is not None:
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=1))

        def clock_cb(t_ns: int) -> None:
            clock_pub.publish(Clock(clock=Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)))

    if wait_subscribers > 0:
        # transient-local topics are kept for late joiners, so they need not wait
        volatile = {name: p for name, p in publishers.items() if not infos[name].transient_local}
        deadline = time.monotonic() + wait_subscribers
        while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in volatile.values()):
            time.sleep(0.05)
        lonely = [name for name, p in volatile.items() if p.get_subscription_count() == 0]
        if lonely:
            log(f"scanssc-play: no subscriber after {wait_subscribers:.1f} s on {', '.join(lonely)}; playing anyway")
    if start_delay > 0:
        time.sleep(start_delay)  # lets subscribers discover the publishers before the first message
    stats = PlayStats()
    t0 = time.perf_counter()
    while loops is None or stats.loops < loops:
        play_messages(iter_raw(reader, publishers), lambda topic, raw: publishers[topic].publish(raw), rate=rate,
                      clock=clock_cb, clock_hz=clock_hz or 40.0, stats=stats)
        stats.loops += 1
    if reliable:
        for pub in publishers.values():
            pub.wait_for_all_acked(Duration(seconds=5))
    stats.seconds = time.perf_counter() - t0
    return stats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanssc-play", description="Replay a rosbag2 through rclpy (no ros2cli).")
    p.add_argument("bag", type=Path, help="bag directory (or .mcap / .db3 file)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--loop", action="store_true", help="repeat until interrupted")
    p.add_argument("--remap", nargs="+", default=[], metavar="OLD:=NEW", help="rename topics")
    p.add_argument("--start-delay", type=float, default=1.0,
                   help="seconds between creating the publishers and the first message (default 1)")
    p.add_argument("--wait-subscribers", type=float, default=0.0, metavar="SEC",
                   help="wait up to SEC seconds until every topic has a subscriber (default 0: do not wait)")
    p.add_argument("--topics", nargs="+", default=None, help="only these recorded topics")
    p.add_argument("--clock", nargs="?", type=float, const=40.0, default=None, metavar="HZ",
                   help="publish /clock at HZ (default 40 when given without a value)")
    p.add_argument("--best-effort", action="store_true", help="best-effort publishers (default reliable)")
    p.add_argument("--depth", type=int, default=10, help="publisher queue depth (default 10)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0:
        print("scanssc-play: error: --rate must be > 0", file=sys.stderr)
        return EXIT_BAG_ERROR
    if args.clock is not None and args.clock <= 0:
        print("scanssc-play: error: --clock HZ must be > 0", file=sys.stderr)
        return EXIT_BAG_ERROR
    try:
        remap = parse_remaps(args.remap)
        reader = open_bag(args.bag)
    except (BagError, ValueError) as exc:
        print(f"scanssc-play: error: {exc}", file=sys.stderr)
        return EXIT_BAG_ERROR

    import rclpy  # only after the bag is known to be readable: a bad path fails fast and without ROS

    rclpy.init()
    node = rclpy.create_node("scanssc_play")
    try:
        stats = play_bag(node, reader, rate=args.rate, topics=args.topics, remap=remap,
                         reliable=not args.best_effort, depth=args.depth, clock_hz=args.clock,
                         loops=None if args.loop else 1, start_delay=args.start_delay,
                         wait_subscribers=args.wait_subscribers,
                         log=lambda s: print(s, file=sys.stderr))
    except BagError as exc:
        text = str(exc)
        print(f"scanssc-play: error: {text if str(args.bag) in text else f'{args.bag}: {text}'}", file=sys.stderr)
        return EXIT_BAG_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        reader.close()
        node.destroy_node()
        rclpy.try_shutdown()
    total = sum(stats.published.values())
    print(f"published {total} messages on {len(stats.published)} topics in {stats.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
