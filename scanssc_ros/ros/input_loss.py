"""Left images that never reached the node's callback, counted as drop reason ``lost_before_callback``.

The middleware loses images before any node code runs: a KEEP_LAST reader history overwrites the oldest sample
when the executor falls behind, and on Fast DDS a large best-effort sample is fragmented and lost with any
fragment. The node cannot see those messages, only the holes they leave:

- a gap in the left image stamps: the camera period is learnt from the stream (the lower quartile of recent stamp
  differences, so that occasional losses and jitter do not inflate it) and a difference of about k periods
  means k - 1 images are missing. When the camera_infos carry their images' stamps, the infos that came for the
  gap count it too (the larger count wins): with most images lost the period estimate is too long, while the
  small infos still arrive. A jump in stamps much larger than the wall time that passed (a bag switched or
  skipped ahead, a camera restarted) is a discontinuity, not a loss, and time going back starts over;
- a left camera_info whose image never came: when the infos carry their images' stamps (learnt from the stream),
  an info with no image after ``wait_limit`` seconds is a lost image. This also catches the newest images, after
  which no later stamp would reveal a gap. Should the image turn up later after all, the count is taken back.

A gap seen before the period is known (the first few frames) counts its camera_infos at once and is judged by the
period as well once that is known (the larger count wins), so a stall right at the start that loses images together
with their infos is still counted. Images before the first received one are counted by the camera_infos that came
for them (a lost fragment of the first full-size image holds it and the images behind it until the writer's next
heartbeat, and the reader's KEEP_LAST history may drop the oldest meanwhile, while the small infos arrive), once
the images that follow show that the infos carry their images' stamps. Images lost together with their camera_info
before the first received image or after the last received frame cannot be counted. Nothing here imports rclpy.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, List, Optional, Tuple

from scanssc_ros.ros.frame_sync import WAIT_LIMIT, DropCounter, stamp_seconds

LOST = "lost_before_callback"
PERIOD_WINDOW = 32  # stamp differences kept for the period estimate
MIN_DIFFS = 3  # differences needed before gaps are judged (earlier ones are judged once the period is known)
JUMP_SLACK = 1.0  # s: a gap counts as losses only while it is under this + twice the wall time it took
FIT_TOLERANCE, FIT_SHARE = 0.2, 0.9  # a period fits when 90 % of the differences are within 0.2 of a multiple
NO_IMAGE_INFOS = 5  # camera_infos with no left image ever received before that is reported
# camera_infos that came ahead of the first image are dropped uncounted when, after this many images, the infos have
# not shown that they carry their images' stamps
BEFORE_FIRST_DECIDE = 10


def _skipped_ahead(gap: float, wall: float) -> bool:
    """A stamp gap of far more camera time than the wall time it took: a jump (bag switched or skipped ahead,
    camera restarted), not lost images."""
    return gap > JUMP_SLACK + 2.0 * max(wall, 0.0)


@dataclass
class _Expected:
    t: float
    since: float


class LossDetector:
    def __init__(self, drops: DropCounter, tolerance: float = 0.02, clock=None,
                 wait_limit: float = WAIT_LIMIT) -> None:
        self.drops = drops
        self.tolerance = float(tolerance)
        self.wait_limit = float(wait_limit)
        self._clock = clock or time.monotonic
        self.lost = 0
        self._last: Optional[float] = None  # newest stamp accounted for (received, or counted lost)
        self._last_wall = 0.0
        self._diffs: Deque[float] = deque(maxlen=PERIOD_WINDOW)
        # stamp gaps seen before the period was known, with the images already counted for them (by camera_info)
        self._unjudged: List[Tuple[float, int]] = []
        self._recent: Deque[List] = deque(maxlen=PERIOD_WINDOW)  # [stamp, its camera_info seen] per image
        self._expected: Deque[_Expected] = deque(maxlen=64)  # info stamps newer than any received image
        self._counted_by_info: Deque[float] = deque(maxlen=PERIOD_WINDOW)
        self._before_first: List[float] = []  # info stamps older than the first image, judged once stamps are known
        self.images_received = 0
        self._notes: List[str] = []

    # ------------------------------------------------------------------------------------------ inputs
    def on_image(self, msg: Any) -> None:
        """Every left image that reached the callback (also while processing is disabled)."""
        t, now = stamp_seconds(msg), self._clock()
        self.images_received += 1
        late = next((c for c in self._counted_by_info if abs(c - t) <= self.tolerance), None)
        if late is not None:  # counted lost from its camera_info, but it was only late
            self._counted_by_info.remove(late)
            self._add_lost(-1)
            return
        matched = [e for e in self._expected if abs(e.t - t) <= self.tolerance]
        for e in matched:
            self._expected.remove(e)
        if self._last is None:
            self._take_infos_before_first(t, now)
        self._recent.append([t, bool(matched)])
        self._advance(t, now)
        self._judge_before_first()

    def on_info(self, msg: Any) -> None:
        """Every left camera_info."""
        t, now = stamp_seconds(msg), self._clock()
        entry = next((r for r in self._recent if abs(r[0] - t) <= self.tolerance), None)
        if entry is not None:  # it came after its image
            entry[1] = True
            self._judge_before_first()
            return
        if self._last is None or t > self._last + self.tolerance:
            self._expected.append(_Expected(t, now))

    @property
    def infos_stamped_like_images(self) -> bool:
        """Nearly every received image had a camera_info with its stamp. Judged from the images that arrived, so
        lost images do not change it, and a driver stamping infos with its own clock (an occasional coincidence
        within the tolerance) does not pass."""
        return len(self._recent) >= MIN_DIFFS and sum(r[1] for r in self._recent) >= 0.9 * len(self._recent)

    def poll(self) -> None:
        """Count images whose camera_info came but which did not, once the wait is over."""
        now = self._clock()
        if self._last is None:
            if len(self._expected) >= NO_IMAGE_INFOS and now - self._expected[0].since >= self.wait_limit:
                self._notes.append(f"{len(self._expected)} left camera_infos arrived but no left image at all: the "
                                   "images are lost before the callback, or nobody publishes them")
                self._expected.clear()
            return
        if not self.infos_stamped_like_images:
            return
        while self._expected and now - self._expected[0].since >= self.wait_limit:
            e = self._expected.popleft()
            if e.t <= self._last + self.tolerance:
                continue
            self._advance(e.t, e.since)
            self._counted_by_info.append(e.t)
            self._add_lost(1)
            self._notes.append(f"its camera_info (stamp {e.t:.3f} s) arrived {self.wait_limit:g} s ago, the image did "
                               "not")

    def _take_infos_before_first(self, t: float, now: float) -> None:
        """At the first image (stamp t): the camera_infos already waiting with older stamps are of images that will
        not come (a writer delivers its topic in order), unless their stamps are far older than the wall time since
        (infos of an earlier stream, a jump)."""
        older = [e for e in self._expected if e.t < t - self.tolerance]
        self._before_first = [e.t for e in older if not _skipped_ahead(t - e.t, now - e.since)]
        self._expected = deque((e for e in self._expected if e.t >= t - self.tolerance), maxlen=64)

    def _judge_before_first(self) -> None:
        if not self._before_first:
            return
        if len(self._recent) >= MIN_DIFFS and self.infos_stamped_like_images:
            n = len(self._before_first)
            self._counted_by_info.extend(self._before_first)
            self._add_lost(n)
            self._notes.append(f"{n} camera_info{'s' if n > 1 else ''} (stamps {self._before_first[0]:.3f}-"
                               f"{self._before_first[-1]:.3f} s) arrived before the first left image, "
                               f"{'their images' if n > 1 else 'its image'} did not")
            self._before_first = []
        elif self.images_received >= BEFORE_FIRST_DECIDE:
            self._before_first = []  # the infos carry stamps of their own: nothing to tell from them

    def notes(self) -> List[str]:
        notes, self._notes = self._notes, []
        return notes

    @property
    def period(self) -> Optional[float]:
        """The observed camera period in seconds (None until enough frames were seen)."""
        if len(self._diffs) < MIN_DIFFS:
            return None
        quartile = sorted(self._diffs)[len(self._diffs) // 4]
        # with most images lost even the lower quartile spans several periods; stamp differences are whole
        # multiples of the true period, so take the longest fraction of it that they all fit (jittery stamps
        # fit no fraction and keep the quartile)
        for k in range(2, 5):
            p = quartile / k
            fits = sum(abs(d / p - round(d / p)) < FIT_TOLERANCE for d in self._diffs)
            if fits >= FIT_SHARE * len(self._diffs) and sum(
                    abs(d / quartile - round(d / quartile)) < FIT_TOLERANCE for d in self._diffs) < fits:
                return p
        return quartile

    # ------------------------------------------------------------------------------------------ gaps
    def _advance(self, t: float, now: float) -> None:
        if self._last is None:
            self._last, self._last_wall = t, now
            return
        gap = t - self._last
        if gap < -self.tolerance:  # time went back (a bag restarted): a new stream
            self._diffs.clear()
            self._unjudged.clear()
            self._expected = deque((e for e in self._expected if e.t > t + self.tolerance), maxlen=64)
            self._last, self._last_wall = t, now
            return
        if gap <= self.tolerance:  # the same frame again (republished) or not newer than one accounted for
            return
        # camera_infos stamped like images that came for the gap: an exact count even when most images are lost
        # (then the period estimate is too long), though infos can be lost as well
        by_info = sum(1 for e in self._expected if self._last + self.tolerance < e.t < t - self.tolerance) \
            if self.infos_stamped_like_images else 0
        wall = now - self._last_wall
        self._last, self._last_wall = t, now
        self._expected = deque((e for e in self._expected if e.t > t + self.tolerance), maxlen=64)
        if _skipped_ahead(gap, wall):
            self._judge([(gap, by_info, 0)], None)
            return
        self._diffs.append(gap)
        period = self.period
        if period is None:
            # the camera_infos' count now; the period's, if larger, once it is known (a stall in the first frames
            # can lose many images together with their infos)
            self._judge([(gap, by_info, 0)], None)
            self._unjudged.append((gap, by_info))
            return
        self._judge([(g, counted, counted) for g, counted in self._unjudged] + [(gap, by_info, 0)], period)
        self._unjudged.clear()

    def _judge(self, gaps: List[Tuple[float, int, int]], period: Optional[float]) -> None:
        """gaps: (stamp gap, images counted for it by camera_info, images already counted for it)."""
        for g, by_info, already in gaps:
            by_period = int(round(g / period)) - 1 if period is not None and g > 0 else 0
            missing = max(by_period, by_info) - already
            if missing <= 0:
                continue
            self._add_lost(missing)
            how = (f"the observed {period:.3f} s camera period" if by_period >= by_info else
                   f"{by_info} camera_info{'s' if by_info > 1 else ''} stamped in it")
            more = f" ({already} counted before the period was known)" if already else ""
            self._notes.append(f"a {g:.3f} s gap in the left image stamps at {how}: {missing + already} "
                               f"image{'s' if missing + already > 1 else ''} missing{more}")

    def _add_lost(self, n: int) -> None:
        self.lost += n
        self.drops.add(LOST, n)
