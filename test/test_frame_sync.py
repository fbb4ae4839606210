"""Input pairing and the newest-only mailbox (ROS-free: messages are plain objects with a header stamp)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from scanssc_ros.ros.frame_sync import DropCounter, FrameSync, LatestSlot


def msg(t: float, name: str = "") -> SimpleNamespace:
    sec = int(t)
    stamp = SimpleNamespace(sec=sec, nanosec=round((t - sec) * 1e9))
    return SimpleNamespace(name=name, header=SimpleNamespace(stamp=stamp))


def make(mode: str, tol: float = 0.02):
    drops = DropCounter()
    slot = LatestSlot(drops)
    return FrameSync(mode, slot, drops, tol), slot, drops


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


def test_left_replaced_while_waiting_for_info_is_counted():
    sync, slot, drops = make("mono")
    sync.on_left(msg(1.0))
    sync.on_left(msg(1.1))
    assert drops.snapshot() == {"no_camera_info": 1}


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


def test_image_waits_for_its_own_camera_info_once_infos_are_stamped_like_images():
    sync, slot, drops = make("stereo")
    sync.on_left_info(msg(1.0, "li1"))
    sync.on_right_info(msg(1.0, "ri1"))
    sync.on_partner(msg(1.0))
    sync.on_left(msg(1.0))
    assert slot.take(0).right_info.name == "ri1"
    # next frame: both images first (callback order across topics is not guaranteed), then the infos
    sync.on_partner(msg(1.1, "r2"))
    sync.on_left(msg(1.1, "l2"))
    assert slot.take(0) is None and sync.waiting_for_info()
    sync.on_left_info(msg(1.1, "li2"))
    assert slot.take(0) is None  # the right info is still on its way
    sync.on_right_info(msg(1.1, "ri2"))
    fs = slot.take(0)
    assert (fs.left_info.name, fs.right_info.name, fs.right.name) == ("li2", "ri2", "r2")
    assert drops.total == 0


def test_infos_with_unrelated_stamps_use_the_latest():
    sync, slot, _ = make("mono")
    sync.on_left_info(msg(0.0, "a"))
    sync.on_left_info(msg(0.5, "b"))
    sync.on_left(msg(7.3))
    assert slot.take(0).left_info.name == "b"


def test_stamped_infos_that_stop_do_not_hold_frames_forever():
    sync, slot, _ = make("mono")
    sync.on_left_info(msg(1.0, "a"))
    sync.on_left(msg(1.0))
    assert slot.take(0) is not None
    sync.on_left(msg(1.5))  # its info may still come: wait
    assert slot.take(0) is None
    sync.on_left(msg(3.0))  # the latest info is over INFO_WAIT_LIMIT old: use it
    assert slot.take(0).left_info.name == "a"
