"""Input pairing and the newest-only mailbox (ROS-free: messages are plain objects with a header stamp)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from scanssc_ros.ros.frame_sync import WAIT_LIMIT, DropCounter, FrameSync, LatestSlot


def msg(t: float, name: str = "", size=None, frame=None) -> SimpleNamespace:
    """A stamped message; ``size`` (w, h) and ``frame`` make it an image or camera_info of a given camera."""
    sec = int(t)
    stamp = SimpleNamespace(sec=sec, nanosec=round((t - sec) * 1e9))
    m = SimpleNamespace(name=name, header=SimpleNamespace(stamp=stamp))
    if size is not None:
        m.width, m.height = size
    if frame is not None:
        m.header.frame_id = frame
    return m


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(mode: str, tol: float = 0.02, clock=None):
    drops = DropCounter()
    slot = LatestSlot(drops)
    return FrameSync(mode, slot, drops, tol, clock=clock), slot, drops


KITTI_LEFT = dict(size=(1226, 370), frame="camera_color_left")
KITTI_RIGHT = dict(size=(1226, 370), frame="camera_color_right")
SYNTH_LEFT = dict(size=(1241, 376), frame="camera_color_left")
SYNTH_RIGHT = dict(size=(1241, 376), frame="camera_color_right")


def test_mono_needs_camera_info_then_emits_each_left():
    sync, slot, drops = make("mono")
    sync.on_left(msg(1.0, "a"))
    assert slot.take(0) is None and sync.waiting_for_info()
    sync.on_left_info(msg(0.0, "info"))  # the held image goes out as soon as the info arrives
    fs = slot.take(0)
    assert fs.left.name == "a" and fs.left_info.name == "info" and fs.right is None and fs.depth is None
    sync.on_left(msg(1.1, "b"))
    assert slot.take(0).left.name == "b"
    assert drops.snapshot() == {}


def test_frames_without_camera_info_are_dropped_after_the_wait_with_the_cause():
    clock = Clock()
    sync, slot, drops = make("mono", clock=clock)
    sync.on_left(msg(1.0))
    clock.now = 0.1
    sync.on_left(msg(1.1))
    assert drops.snapshot() == {} and sync.waiting_for_info()  # both wait, neither is lost yet
    clock.now = WAIT_LIMIT + 0.05
    sync.poll()
    assert drops.snapshot() == {"no_camera_info": 1}  # the first one's wait is over, the second still waits
    clock.now = WAIT_LIMIT + 0.1
    sync.poll()
    assert drops.snapshot() == {"no_camera_info": 2} and not sync.waiting_for_info()
    assert sync.notes() == [("no_camera_info", "no left/camera_info message received")] * 2
    assert slot.take(0) is None


def test_info_arriving_after_the_next_left_image_does_not_make_a_frame_lack_its_info():
    """Callback order across topics is not guaranteed: the next left image can be taken before this frame's
    camera_info. Such frames were reported as ``no_camera_info`` although each had its info."""
    sync, slot, drops = make("stereo")
    for t in (1.0, 1.1):
        sync.on_partner(msg(t, f"r{t}", **KITTI_RIGHT))
        sync.on_left(msg(t, f"l{t}", **KITTI_LEFT))
    assert slot.take(0) is None and sync.waiting_for_info()
    sync.on_left_info(msg(1.0, "li1", **KITTI_LEFT))
    sync.on_right_info(msg(1.0, "ri1", **KITTI_RIGHT))
    # both frames are complete now (1.1 with the same camera's info of 1.0): the newest goes out
    fs = slot.take(0)
    assert (fs.left.name, fs.left_info.name, fs.right.name, fs.right_info.name) == ("l1.1", "li1", "r1.1", "ri1")
    assert drops.snapshot() == {"superseded": 1}
    sync.on_left_info(msg(1.1, "li2", **KITTI_LEFT))
    sync.on_right_info(msg(1.1, "ri2", **KITTI_RIGHT))
    assert slot.take(0) is None and drops.snapshot() == {"superseded": 1}


@pytest.mark.parametrize("partner_first", [True, False])
def test_stereo_pairs_nearest_stamp_within_tolerance(partner_first):
    sync, slot, drops = make("stereo", tol=0.02)
    sync.on_left_info(msg(0, "li"))
    sync.on_right_info(msg(0, "ri"))
    events = [lambda: sync.on_partner(msg(2.015, "r_near")), lambda: sync.on_partner(msg(1.99, "r_nearer"))]
    left = lambda: sync.on_left(msg(2.0, "l"))  # noqa: E731
    for e in (events + [left] if partner_first else [left] + events):
        e()
    fs = slot.take(0)
    # left first: the first partner within tolerance completes the set at once; partner first: the nearest wins
    assert fs.right.name == ("r_nearer" if partner_first else "r_near")
    assert fs.right_info.name == "ri" and drops.total == 0


def test_unmatched_left_is_given_up_when_newer_partners_arrive():
    sync, slot, drops = make("stereo", tol=0.02)
    sync.on_left_info(msg(0))
    sync.on_right_info(msg(0))
    sync.on_left(msg(3.0))
    sync.on_partner(msg(3.5))  # newer than 3.0 + tol: the left image's partner is not coming
    assert slot.take(0) is None
    assert drops.snapshot() == {"unpaired": 1}
    sync.on_left(msg(3.5))
    assert slot.take(0) is not None


def test_depth_mode_and_partner_consumed_once():
    sync, slot, drops = make("depth", tol=0.05)
    sync.on_left_info(msg(0))
    sync.on_partner(msg(5.0, "d"))
    sync.on_left(msg(5.0, "l1"))
    assert slot.take(0).depth.name == "d"
    sync.on_left(msg(5.01, "l2"))  # within tolerance of the used depth image, which must not pair twice
    assert slot.take(0) is None


def test_slot_keeps_newest_and_counts_superseded():
    sync, slot, drops = make("mono")
    sync.on_left_info(msg(0))
    for i in range(5):
        sync.on_left(msg(1 + i * 0.1, str(i)))
    assert slot.take(0).left.name == "4"
    assert drops.snapshot() == {"superseded": 4}
    assert sync.frames_in == 5 and sync.sets_out == 5


def test_slot_take_wakes_on_put_and_on_close():
    drops = DropCounter()
    slot = LatestSlot(drops)
    got = []
    t = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    t.start()
    slot.put("x")
    t.join(2.0)
    assert got == ["x"]
    t = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    t.start()
    slot.close()
    t.join(2.0)
    assert not t.is_alive() and got[-1] is None


def test_bad_mode_rejected():
    with pytest.raises(ValueError, match="depth mode"):
        make("lidar")


def test_image_without_its_own_camera_info_uses_the_previous_one_of_the_same_camera():
    """Infos lag their images (seen up to 2.5 s with full-size images on Fast DDS): the previous info of the same
    camera (size and frame) is used rather than holding the frame."""
    sync, slot, drops = make("stereo")
    sync.on_left_info(msg(1.0, "li1", **KITTI_LEFT))
    sync.on_right_info(msg(1.0, "ri1", **KITTI_RIGHT))
    sync.on_partner(msg(1.0, **KITTI_RIGHT))
    sync.on_left(msg(1.0, **KITTI_LEFT))
    assert slot.take(0).right_info.name == "ri1"
    sync.on_partner(msg(1.1, "r2", **KITTI_RIGHT))
    sync.on_left(msg(1.1, "l2", **KITTI_LEFT))
    fs = slot.take(0)
    assert (fs.left.name, fs.left_info.name, fs.right.name, fs.right_info.name) == ("l2", "li1", "r2", "ri1")
    assert drops.total == 0


def test_infos_with_unrelated_stamps_use_the_latest():
    sync, slot, _ = make("mono")
    sync.on_left_info(msg(0.0, "a"))
    sync.on_left_info(msg(0.5, "b"))
    sync.on_left(msg(7.3))
    assert slot.take(0).left_info.name == "b"


def test_an_older_camera_info_of_another_camera_is_never_used():
    """The demo's cold-run failure: the synthetic scene's right camera_info (1241x376) was still the latest when
    the first KITTI right image (1226x370) arrived before its own info."""
    clock = Clock()
    sync, slot, drops = make("stereo", clock=clock)
    sync.on_left_info(msg(10.0, "synth_li", **SYNTH_LEFT))
    sync.on_right_info(msg(10.0, "synth_ri", **SYNTH_RIGHT))
    sync.on_partner(msg(10.0, **SYNTH_RIGHT))
    sync.on_left(msg(10.0, **SYNTH_LEFT))
    assert slot.take(0).right_info.name == "synth_ri"
    # KITTI frame 100 s later: left info first, then both images, the right info last (later than the next left
    # image would come from a 10 Hz camera, within the wait)
    clock.now = 1.0
    sync.on_left_info(msg(110.0, "kitti_li", **KITTI_LEFT))
    sync.on_partner(msg(110.0, "kitti_r", **KITTI_RIGHT))
    sync.on_left(msg(110.0, "kitti_l", **KITTI_LEFT))
    assert slot.take(0) is None and sync.waiting_for_info()
    clock.now = 1.0 + WAIT_LIMIT - 0.1
    sync.poll()
    assert drops.total == 0
    sync.on_right_info(msg(110.0, "kitti_ri", **KITTI_RIGHT))
    fs = slot.take(0)
    assert (fs.left_info.name, fs.right.name, fs.right_info.name) == ("kitti_li", "kitti_r", "kitti_ri")
    assert drops.total == 0


def test_camera_info_of_another_camera_after_the_wait_is_dropped_naming_the_cause():
    clock = Clock()
    sync, slot, drops = make("mono", clock=clock)
    sync.on_left_info(msg(10.0, "synth", **SYNTH_LEFT))
    sync.on_left(msg(110.0, **KITTI_LEFT))
    clock.now = WAIT_LIMIT
    sync.poll()
    assert slot.take(0) is None and drops.snapshot() == {"no_camera_info": 1}
    ((reason, why),) = sync.notes()
    assert reason == "no_camera_info"
    assert why == ("no left/camera_info stamped within sync_tolerance (0.02 s) of the image, and the latest one "
                   "(1241x376, frame 'camera_color_left', stamped -100.000 s from the image) does not describe "
                   "this 1226x370, frame 'camera_color_left' image")


def test_same_camera_info_newest_before_the_image_is_used():
    sync, slot, drops = make("mono")
    sync.on_left_info(msg(1.0, "a", **KITTI_LEFT))
    sync.on_left_info(msg(1.2, "c", **KITTI_LEFT))  # 1.1's info never came
    sync.on_left(msg(1.1, **KITTI_LEFT))
    assert slot.take(0).left_info.name == "a" and drops.total == 0
    sync.on_left(msg(0.5, **KITTI_LEFT))  # none before the image: the oldest one
    assert slot.take(0).left_info.name == "a"


def test_right_image_that_never_comes_is_given_up_after_the_wait():
    clock = Clock()
    sync, slot, drops = make("stereo", clock=clock)
    sync.on_left_info(msg(1.0))
    sync.on_right_info(msg(1.0))
    sync.on_left(msg(1.0))
    clock.now = WAIT_LIMIT - 0.01
    sync.poll()
    assert drops.total == 0
    clock.now = WAIT_LIMIT
    sync.poll()
    assert drops.snapshot() == {"unpaired": 1}
    assert sync.notes() == [("unpaired", "no right/image_rect message buffered")]


def test_older_waiting_frames_are_dropped_by_what_they_lacked_when_a_newer_one_completes():
    sync, slot, drops = make("stereo")
    sync.on_right_info(msg(1.0))
    sync.on_right_info(msg(1.1))
    sync.on_left(msg(1.0))  # has neither its left info nor its right image
    sync.on_partner(msg(1.05))  # an unmatched right image between the two frames
    sync.on_left_info(msg(1.1))
    sync.on_partner(msg(1.1))
    sync.on_left(msg(1.1))
    assert slot.take(0).stamp == pytest.approx(1.1)
    assert drops.snapshot() == {"unpaired": 1}  # the right image newer than 1.0 + tolerance settles it


def test_waiting_queue_is_bounded():
    from scanssc_ros.ros.frame_sync import PENDING_LIMIT

    sync, slot, drops = make("mono")
    for i in range(PENDING_LIMIT + 3):
        sync.on_left(msg(1.0 + 0.1 * i))
    assert len(sync._pending) == PENDING_LIMIT and drops.snapshot() == {"no_camera_info": 3}
