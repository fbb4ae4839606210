"""Counting left images lost before the node's callback (ROS-free: plain stamped objects, a fake clock)."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from scanssc_ros.ros.frame_sync import WAIT_LIMIT, DropCounter
from scanssc_ros.ros.input_loss import LOST, LossDetector


def msg(t: float) -> SimpleNamespace:
    sec = int(t)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=round((t - sec) * 1e9))))


class Stream:
    """A camera at ``period`` s driving a detector in real time (wall clock = stamp - t0)."""

    def __init__(self, period: float = 0.1, t0: float = 100.0) -> None:
        self.now = 0.0
        self.drops = DropCounter()
        self.det = LossDetector(self.drops, clock=lambda: self.now)
        self.period, self.t0 = period, t0

    def frames(self, indices, info=False, image=True, jitter=None):
        for i in indices:
            t = self.t0 + i * self.period + (jitter(i) if jitter else 0.0)
            self.now = max(self.now, i * self.period)
            if info:
                self.det.on_info(msg(t))
            if image:
                self.det.on_image(msg(t))
            self.det.poll()

    def lost(self) -> int:
        return self.drops.snapshot().get(LOST, 0)


def test_no_loss_no_count_even_with_jittery_stamps():
    s = Stream()
    rng = random.Random(0)
    offsets = [rng.uniform(-0.015, 0.015) for _ in range(200)]  # stamps +-15 ms off a 100 ms grid
    s.frames(range(200), jitter=lambda i: offsets[i])
    assert s.lost() == 0 and s.det.period == pytest.approx(0.1, abs=0.02)


def test_gaps_count_the_missing_images_including_those_before_the_period_was_known():
    s = Stream()
    received = [0, 2, 3, 4, 5, 9, 10, 11, 13]  # 1, 6-8 and 12 lost
    s.frames(received)
    assert s.lost() == 5 and s.det.lost == 5
    notes = s.det.notes()
    assert any("a 0.400 s gap in the left image stamps at the observed 0.100 s camera period: 3 images missing" in n
               for n in notes), notes


def test_a_stall_before_the_period_is_known_is_counted_by_the_period_once_it_is():
    """The node's first frames, then 2.4 s in which 23 images and all but one of their camera_infos are lost (CI saw
    this once: the one info counted 1 image and the rest of the gap went uncounted), then a steady stream."""
    s = Stream()
    s.frames([0, 1], info=True)
    s.frames([12], info=True, image=False)  # the one camera_info that came through the stall
    s.frames([25, 26, 27, 28, 29], info=True)
    assert s.lost() == 23 and s.det.lost == 23
    assert any("a 2.400 s gap in the left image stamps at the observed 0.100 s camera period: 23 images missing "
               "(1 counted before the period was known)" in n for n in s.det.notes())


def test_heavy_loss_still_finds_the_period():
    s = Stream()
    received = [0, 1, 2, 5, 6, 9, 13, 14, 18, 22, 23, 27, 31]  # 69 % of the gaps are losses
    s.frames(received)
    assert s.lost() == 31 - len(received) + 1


def test_a_jump_far_ahead_of_the_wall_clock_is_not_a_loss():
    """The demo: the synthetic bag, then the KITTI bag 100 s later in stamps but a second later in wall time."""
    s = Stream()
    s.frames(range(5))
    s.now += 1.0
    s.det.on_image(msg(s.t0 + 100.0))
    s.det.poll()
    assert s.lost() == 0


def test_time_going_back_starts_over_and_resends_are_not_gaps():
    s = Stream()
    s.frames(range(6))
    s.frames([5, 5])  # the same frame again (lock-step resend)
    s.now += 0.5
    s.t0 -= 50.0  # the bag restarted
    s.frames(range(6, 12))
    assert s.lost() == 0


def test_camera_info_without_its_image_counts_the_newest_images_too():
    s = Stream()
    s.frames(range(5), info=True)
    s.frames([5, 6], info=True, image=False)  # the last two images never arrive, their camera_infos do
    assert s.lost() == 0  # not yet: the images may be late
    s.now += WAIT_LIMIT + 0.01
    s.det.poll()
    assert s.lost() == 2
    assert any("its camera_info (stamp 100.600 s) arrived" in n for n in s.det.notes())
    # one of them was only late: taken back, not counted twice with the next gap
    s.det.on_image(msg(s.t0 + 0.6))
    assert s.lost() == 1
    s.frames([7], info=True)
    assert s.lost() == 1


def test_images_before_the_first_received_one_are_counted_by_their_camera_infos():
    """The first full-size images are held back (a lost fragment waits for the writer's heartbeat) and the reader's
    history drops the oldest; their small camera_infos arrive on time (a CI run of the 1x bag replay received 6 of
    10 frames and could not account for the other 4: gaps and infos after the first image would have counted them)."""
    s = Stream()
    s.frames(range(4), info=True, image=False)
    s.frames([4], info=True)
    assert s.lost() == 0  # the infos' stamps are not known to be their images' yet
    s.frames([5], info=True)
    s.frames([6], info=True)
    assert s.lost() == 4
    assert any("4 camera_infos (stamps 100.000-100.300 s) arrived before the first left image" in n
               for n in s.det.notes())
    s.frames(range(7, 12), info=True)
    assert s.lost() == 4


def test_camera_infos_before_the_first_image_count_only_when_stamped_like_images():
    # infos on their own clock ahead of the images: never taken for lost images
    s = Stream()
    s.now = 0.0
    for i in range(4):
        s.det.on_info(msg(s.t0 + i * 0.1 - 0.05))
    s.frames(range(4, 20))
    assert s.lost() == 0
    # infos of an earlier stream, minutes older than the first image, are a discontinuity, not losses
    s = Stream()
    for i in range(3):
        s.det.on_info(msg(s.t0 - 300.0 + i * 0.1))
    s.frames(range(10), info=True)
    assert s.lost() == 0


def test_camera_infos_with_their_own_stamps_are_not_taken_for_lost_images():
    s = Stream()
    for i in range(30):  # infos at 30 Hz on another clock, images at 10 Hz
        s.now = i / 30
        s.det.on_info(msg(7.0 + i / 30))
        if i % 3 == 0:
            s.det.on_image(msg(s.t0 + i / 30))
        s.det.poll()
    s.now += 5.0
    s.det.poll()
    assert s.lost() == 0 and not s.det.infos_stamped_like_images


def test_camera_infos_but_never_an_image_are_reported_not_counted():
    s = Stream()
    s.frames(range(10), info=True, image=False)
    s.now += WAIT_LIMIT + 0.01
    s.det.poll()
    assert s.lost() == 0
    assert any("10 left camera_infos arrived but no left image at all" in n for n in s.det.notes())


def test_camera_infos_count_the_gaps_when_most_images_are_lost():
    """Best-effort full-size images on Fast DDS: most are lost, their small camera_infos arrive. The stamp gaps
    alone would learn a period of 0.5 s here and see no loss."""
    s = Stream()
    received = [0, 1, 2] + list(range(7, 43, 5))
    for i in range(max(received) + 1):
        s.frames([i], info=True, image=i in received)
    assert s.det.period == pytest.approx(0.5)
    assert s.lost() == max(received) + 1 - len(received)
    assert any("camera_infos stamped in it: 4 images missing" in n for n in s.det.notes())


def test_period_found_when_three_quarters_of_the_images_are_lost():
    s = Stream()
    received = [0, 2, 5, 7, 10, 13, 15, 18, 20, 23, 26, 28, 31]  # every gap 2 or 3 periods
    s.frames(received)
    assert s.det.period == pytest.approx(0.1)
    assert s.lost() == 31 + 1 - len(received)
