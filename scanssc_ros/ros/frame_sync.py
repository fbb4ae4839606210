"""Input pairing for the node: left image + camera_info (+ right image + camera_info, or a depth image), newest
first, with every discarded frame counted by reason.

Runs in the subscription callbacks (and a short timer that calls :meth:`FrameSync.poll`), so it only stores
message references and compares stamps; decoding happens in the inference worker. Nothing here imports rclpy:
messages only need ``header.stamp.{sec,nanosec}`` (and ``width``/``height``/``header.frame_id`` where present).

Pairing rules (``tolerance`` in seconds, ``wait_limit`` in wall-clock seconds):
- camera_info: the one stamped within ``tolerance`` of the image; otherwise the newest one before the image that
  plainly belongs to the same camera stream (same width, height and frame_id as the image it describes): drivers
  that publish camera_info at their own rate or with their own stamps, and infos that lag their images (with
  full-size images on the same transport, Fast DDS delivered the small infos in bursts up to 2.5 s late here).
  An info of another camera (another size or frame: a different bag, another resolution) is never used: the
  frame waits up to ``wait_limit`` for one that fits and is then dropped as ``no_camera_info`` with the reason
  spelled out;
- the partner image (right or depth) is the buffered one with the nearest stamp within ``tolerance``; a frame is
  given up (``unpaired``) when partner images newer than its stamp + tolerance have arrived (stamps increase per
  topic) or after ``wait_limit``;
- several left images may wait at once (a bounded queue), so an image whose camera_info or partner arrives after
  the next left image is still paired. When a newer frame is complete, older waiting ones are dropped: as
  ``superseded`` when they were complete too, otherwise by what they still lacked.
A complete set goes into a :class:`LatestSlot`; an older set still waiting there is replaced (``superseded``).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

MODES = ("stereo", "depth", "mono")
PARTNER_TOPIC = {"stereo": "right/image_rect", "depth": "depth/image"}
PARTNER_BUFFER = 8  # partner images / infos kept for matching; a few frame periods of jitter at camera rates
PENDING_LIMIT = 8  # left images waiting at once (0.8 s of a 10 Hz camera)
# wall-clock seconds a left image waits for a camera_info or partner that fits it. Longer than a message that is
# merely late: on loopback a small sample sent right behind a full-size image is often lost, and Fast DDS delivers
# it and every later sample of its topic only after the writer's next heartbeat (3 s by default; lags of 0.4-2.5 s
# measured); short enough that a frame whose input never comes is reported within seconds.
WAIT_LIMIT = 3.5


def stamp_seconds(msg: Any) -> float:
    s = msg.header.stamp
    return float(s.sec) + 1e-9 * float(s.nanosec)


def nearest_within(msgs: Iterable[Any], t: float, tolerance: float) -> Any:
    """The message stamped nearest to ``t`` if within ``tolerance`` seconds (the first on ties), else None."""
    best, best_dt = None, None
    for m in msgs:
        dt = abs(stamp_seconds(m) - t)
        if dt <= tolerance and (best_dt is None or dt < best_dt):
            best, best_dt = m, dt
    return best


@dataclass
class FrameSet:
    """What the worker needs for one inference: raw messages, decoded later."""

    left: Any
    left_info: Any
    right: Any = None
    right_info: Any = None
    depth: Any = None
    received: float = 0.0  # time.monotonic() when the set was completed

    @property
    def stamp(self) -> float:
        return stamp_seconds(self.left)


class DropCounter:
    """Thread-safe counts of discarded frames by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {}

    def add(self, reason: str, n: int = 1) -> None:
        """Count ``n`` more (a negative ``n`` takes back a count that turned out wrong)."""
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + n
            if self._counts[reason] <= 0:
                del self._counts[reason]

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class LatestSlot:
    """A one-item mailbox: ``put`` replaces what the consumer has not taken yet (counted as superseded), so the
    consumer always gets the newest item and a slow consumer never builds a backlog."""

    def __init__(self, drops: DropCounter) -> None:
        self._cond = threading.Condition()
        self._item: Optional[FrameSet] = None
        self._closed = False
        self._drops = drops

    def put(self, item: FrameSet) -> None:
        with self._cond:
            if self._item is not None:
                self._drops.add("superseded")
            self._item = item
            self._cond.notify()

    def take(self, timeout: Optional[float] = None) -> Optional[FrameSet]:
        """The newest item, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._item is not None


def _size_frame(msg: Any) -> Tuple[Any, Any, Any]:
    return getattr(msg, "width", None), getattr(msg, "height", None), getattr(msg.header, "frame_id", None)


def describe(msg: Any) -> str:
    w, h, frame = _size_frame(msg)
    return f"{w}x{h}, frame {frame!r}"


class InfoCache:
    """The recent camera_infos of one camera and the rule above for picking one for an image."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._buf: Deque[Any] = deque(maxlen=PARTNER_BUFFER)

    def add(self, msg: Any) -> None:
        self._buf.append(msg)

    @property
    def latest(self) -> Any:
        return self._buf[-1] if self._buf else None

    def pick(self, image: Any, t: float, tolerance: float) -> Tuple[Any, str]:
        """(info, "") for ``image`` (stamped ``t``), or (None, why) while none here fits it."""
        best = nearest_within(self._buf, t, tolerance)
        if best is not None:
            return best, ""
        if not self._buf:
            return None, f"no {self.topic} message received"
        same = [m for m in self._buf if _size_frame(m) == _size_frame(image)]
        if same:
            before = [m for m in same if stamp_seconds(m) <= t]
            # the calibration in force when the image was taken: the newest one before it
            return (before[-1] if before else same[0]), ""
        latest = self._buf[-1]
        return None, (f"no {self.topic} stamped within sync_tolerance ({tolerance:g} s) of the image, and the latest "
                      f"one ({describe(latest)}, stamped {stamp_seconds(latest) - t:+.3f} s from the image) does not "
                      f"describe this {describe(image)} image")


@dataclass
class _Held:
    """A left image waiting for the rest of its set."""

    msg: Any
    t: float
    since: float  # clock() at arrival


@dataclass
class _Status:
    """What a held image's set looks like now: ``fs`` when complete; else the drop ``reason`` it would get and
    ``why`` in words; ``final`` when waiting longer cannot complete it."""

    fs: Optional[FrameSet] = None
    reason: str = ""
    why: str = ""
    final: bool = False


class FrameSync:
    def __init__(self, mode: str, slot: LatestSlot, drops: DropCounter, tolerance: float = 0.02,
                 clock=None, wait_limit: float = WAIT_LIMIT) -> None:
        if mode not in MODES:
            raise ValueError(f"depth mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.slot = slot
        self.drops = drops
        self.tolerance = float(tolerance)
        self.wait_limit = float(wait_limit)
        self._clock = clock or time.monotonic
        self.left_infos = InfoCache("left/camera_info")
        self.right_infos = InfoCache("right/camera_info")
        self._pending: Deque[_Held] = deque()
        self._partners: Deque[Any] = deque(maxlen=PARTNER_BUFFER)
        self._waiting_reasons: set = set()
        self.frames_in = 0  # left images received
        self.sets_out = 0
        # (drop reason, why) of frames given up since the reader last called notes(): pairing failures are
        # otherwise silent, and a clock offset between cameras or a wrong remap makes every frame fail
        self._notes: List[Tuple[str, str]] = []

    @property
    def left_info(self) -> Any:
        """The latest left camera_info (None before the first)."""
        return self.left_infos.latest

    @property
    def right_info(self) -> Any:
        return self.right_infos.latest

    def notes(self) -> List[Tuple[str, str]]:
        """(drop reason, why) for each frame given up since the last call."""
        notes, self._notes = self._notes, []
        return notes

    # ------------------------------------------------------------------------------------------ callbacks
    def on_left_info(self, msg: Any) -> None:
        self.left_infos.add(msg)
        self._update()

    def on_right_info(self, msg: Any) -> None:
        self.right_infos.add(msg)
        self._update()

    def on_left(self, msg: Any) -> None:
        self.frames_in += 1
        self._pending.append(_Held(msg, stamp_seconds(msg), self._clock()))
        self._update()

    def on_partner(self, msg: Any) -> None:
        """A right image (stereo mode) or a depth image (depth mode)."""
        self._partners.append(msg)
        self._update()

    def poll(self) -> None:
        """Give up frames whose wait is over (call it periodically: nothing else may arrive to trigger that)."""
        if self._pending:
            self._update()

    def waiting_for_info(self) -> bool:
        """A left image is held back because a camera_info has not arrived."""
        return "no_camera_info" in self._waiting_reasons

    # ------------------------------------------------------------------------------------------ matching
    def _unpaired_why(self, t: float) -> str:
        topic = PARTNER_TOPIC[self.mode]
        if not self._partners:
            return f"no {topic} message buffered"
        nearest = min((stamp_seconds(m) - t for m in self._partners), key=abs)
        return (f"the nearest {topic} stamp is {nearest:+.3f} s from the left image's "
                f"(sync_tolerance {self.tolerance:g} s)")

    def _status(self, held: _Held, now: float) -> _Status:
        t = held.t
        expired = now - held.since >= self.wait_limit
        left_info, why = self.left_infos.pick(held.msg, t, self.tolerance)
        if left_info is None and expired:
            return _Status(reason="no_camera_info", why=why, final=True)
        waiting = None if left_info is not None else _Status(reason="no_camera_info", why=why)
        fs = FrameSet(left=held.msg, left_info=left_info)
        if self.mode == "mono":
            return waiting or _Status(fs=fs)
        partner = nearest_within(self._partners, t, self.tolerance)
        if partner is None:
            overtaken = any(stamp_seconds(m) > t + self.tolerance for m in self._partners)
            status = _Status(reason="unpaired", why=self._unpaired_why(t), final=overtaken or expired)
            return status if status.final or waiting is None else waiting
        if self.mode == "depth":
            fs.depth = partner
            return waiting or _Status(fs=fs)
        right_info, why = self.right_infos.pick(partner, t, self.tolerance)
        if right_info is None:
            return _Status(reason="no_camera_info", why=why, final=expired)
        fs.right, fs.right_info = partner, right_info
        return waiting or _Status(fs=fs)

    def _drop(self, status: _Status) -> None:
        self.drops.add(status.reason)
        if status.reason != "superseded":
            self._notes.append((status.reason, status.why))

    def _update(self) -> None:
        now = self._clock()
        statuses = [self._status(h, now) for h in self._pending]
        newest = max((i for i, s in enumerate(statuses) if s.fs is not None), default=None)
        keep: List[Tuple[_Held, _Status]] = []
        for i, (held, status) in enumerate(zip(self._pending, statuses)):
            if newest is not None and i < newest:
                # a newer frame is complete; this one would have to be processed before it, out of order
                if status.fs is None:
                    status.why += " when a newer frame was complete"
                self._drop(_Status(reason="superseded") if status.fs is not None else status)
            elif i == newest:
                self._emit(status.fs, now)
            elif status.final:
                self._drop(status)
            else:
                keep.append((held, status))
        for _, status in keep[:-PENDING_LIMIT]:  # the oldest beyond the bound, by what they still lack
            self._drop(status)
        keep = keep[-PENDING_LIMIT:]
        self._pending = deque(held for held, _ in keep)
        self._waiting_reasons = {status.reason for _, status in keep}

    def _emit(self, fs: FrameSet, now: float) -> None:
        partner = fs.right if self.mode == "stereo" else fs.depth
        if partner is not None:
            # the matched partner and older ones are no use to later (newer) left images
            while self._partners and self._partners.popleft() is not partner:
                pass
        fs.received = now
        self.sets_out += 1
        self.slot.put(fs)
