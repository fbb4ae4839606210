"""Input pairing for the node: left image + camera_info (+ right image + camera_info, or a depth image), newest
first, with every discarded frame counted by reason.

Runs in the subscription callbacks, so it only stores message references and compares stamps; decoding happens in
the inference worker. Nothing here imports rclpy: messages only need ``header.stamp.{sec,nanosec}``.

Pairing rules (``tolerance`` in seconds):
- camera_info: the one stamped like the image when there is one (drivers and bags usually stamp both alike; on
  separate topics the info can arrive just after its image, so once infos have matched image stamps a frame
  waits for its own instead of taking the previous one, which may describe another camera setting); otherwise
  the latest (drivers that publish it at another rate or with other stamps). The frame waits while none exists;
- the partner image (right or depth) is the buffered one with the nearest stamp within ``tolerance``;
- a left image that cannot be paired yet stays pending; a newer left image replaces it (the old one is counted
  ``unpaired`` or ``no_camera_info``), and it is given up as soon as partner images newer than its stamp +
  tolerance have arrived (stamps are assumed to increase per topic).
A complete set goes into a :class:`LatestSlot`; an older set still waiting there is replaced (``superseded``).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterable, Optional

MODES = ("stereo", "depth", "mono")
PARTNER_TOPIC = {"stereo": "right/image_rect", "depth": "depth/image"}
PARTNER_BUFFER = 8  # partner images / infos kept for matching; a few frame periods of jitter at camera rates
INFO_WAIT_LIMIT = 1.0  # s: an image waits for its own camera_info only while the latest info is this recent


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
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + n

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


class InfoCache:
    """The recent camera_infos of one camera and the rule above for picking one for an image stamp."""

    def __init__(self) -> None:
        self._buf: Deque[Any] = deque(maxlen=PARTNER_BUFFER)
        self.stamped_like_images = False

    def add(self, msg: Any) -> None:
        self._buf.append(msg)

    @property
    def latest(self) -> Any:
        return self._buf[-1] if self._buf else None

    def for_stamp(self, t: float, tolerance: float) -> Any:
        """The info to use for an image stamped ``t``, or None while the right one has not arrived."""
        best = nearest_within(self._buf, t, tolerance)
        if best is not None:
            self.stamped_like_images = True
            return best
        latest = self.latest
        if latest is None:
            return None
        if self.stamped_like_images and t - INFO_WAIT_LIMIT < stamp_seconds(latest) < t:
            return None  # this image's own info is on its way
        return latest


class FrameSync:
    def __init__(self, mode: str, slot: LatestSlot, drops: DropCounter, tolerance: float = 0.02,
                 clock=None) -> None:
        if mode not in MODES:
            raise ValueError(f"depth mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.slot = slot
        self.drops = drops
        self.tolerance = float(tolerance)
        self._clock = clock or time.monotonic
        self.left_infos = InfoCache()
        self.right_infos = InfoCache()
        self._pending: Any = None
        self._partners: Deque[Any] = deque(maxlen=PARTNER_BUFFER)
        self.frames_in = 0  # left images received
        self.sets_out = 0
        # why the last left image was given up as unpaired (cleared by the reader): pairing failures are
        # otherwise silent, and a clock offset between cameras makes every frame fail
        self.unpaired_reason: Optional[str] = None
        # set when a left image was replaced while it waited for its camera_info (cleared by the reader)
        self.lost_waiting_for_info = False

    @property
    def left_info(self) -> Any:
        """The latest left camera_info (None before the first)."""
        return self.left_infos.latest

    @property
    def right_info(self) -> Any:
        return self.right_infos.latest

    # ------------------------------------------------------------------------------------------ callbacks
    def on_left_info(self, msg: Any) -> None:
        self.left_infos.add(msg)
        self._try_emit()

    def on_right_info(self, msg: Any) -> None:
        self.right_infos.add(msg)
        self._try_emit()

    def on_left(self, msg: Any) -> None:
        self.frames_in += 1
        if self._pending is not None:
            if self._waiting_for() == "unpaired":
                self._give_up(self._pending)
            else:
                self.drops.add("no_camera_info")
                self.lost_waiting_for_info = True
        self._pending = msg
        self._try_emit()

    def on_partner(self, msg: Any) -> None:
        """A right image (stereo mode) or a depth image (depth mode)."""
        self._partners.append(msg)
        self._try_emit()

    # ------------------------------------------------------------------------------------------ matching
    def _infos(self, t: float):
        left = self.left_infos.for_stamp(t, self.tolerance)
        right = self.right_infos.for_stamp(t, self.tolerance) if self.mode == "stereo" else None
        ok = left is not None and (self.mode != "stereo" or right is not None)
        return ok, left, right

    def _waiting_for(self) -> str:
        if self._pending is not None and not self._infos(stamp_seconds(self._pending))[0]:
            return "no_camera_info"
        return "unpaired"

    def waiting_for_info(self) -> bool:
        """A left image is held back only because a camera_info has not arrived."""
        return self._pending is not None and self._waiting_for() == "no_camera_info"

    def _give_up(self, left: Any) -> None:
        self.drops.add("unpaired")
        topic = PARTNER_TOPIC[self.mode]
        if not self._partners:
            self.unpaired_reason = f"no {topic} message buffered"
            return
        t = stamp_seconds(left)
        nearest = min((stamp_seconds(m) - t for m in self._partners), key=abs)
        self.unpaired_reason = (f"the nearest {topic} stamp is {nearest:+.3f} s from the left image's "
                                f"(sync_tolerance {self.tolerance:g} s)")

    def _try_emit(self) -> None:
        left = self._pending
        if left is None:
            return
        t = stamp_seconds(left)
        have_infos, left_info, right_info = self._infos(t)
        if not have_infos:
            return
        fs = FrameSet(left=left, left_info=left_info)
        if self.mode != "mono":
            partner = nearest_within(self._partners, t, self.tolerance)
            if partner is None:
                if any(stamp_seconds(m) > t + self.tolerance for m in self._partners):
                    self._give_up(left)  # its partner would have arrived before these
                    self._pending = None
                return
            # the matched partner and older ones are no use to later (newer) left images
            while self._partners and self._partners.popleft() is not partner:
                pass
            if self.mode == "stereo":
                fs.right, fs.right_info = partner, right_info
            else:
                fs.depth = partner
        self._pending = None
        fs.received = self._clock()
        self.sets_out += 1
        self.slot.put(fs)
