"""The node's camera pipeline in-process: inputs -> worker -> grid / markers / cloud / diagnostics.

The model is either the real (untrained) tiny Predictor or a stand-in with a fixed scene and an injected delay;
the rosbag end-to-end runs of the installed executable with the lite model are in test_node_bag_e2e.py.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")

from nodeutil import (  # noqa: E402
    P_LEFT,
    P_RIGHT,
    FakePredictor,
    Graph,
    Probe,
    close_graphs,
    image_msg,
    info_msg,
    make_node,
    same_voxels,
    textured_pair,
    voxel_index,
    wait_for,
    write_camera_bag,
)
from rclpy.parameter import Parameter  # noqa: E402

from scanssc_ros.grid_codec import decode_grid  # noqa: E402


@pytest.fixture()
def graph_factory(ros_context):
    made = []

    def make(predictor, **params):
        node = make_node(ros_context, predictor, **params)
        probe = Probe(ros_context)
        graph = Graph(ros_context, node, probe.node)
        made.append((node, probe, graph))
        return node, probe

    yield make
    close_graphs(made)


def test_stereo_frames_give_one_output_each_with_input_stamp(graph_factory):
    from scanssc_ros.config import variant
    from scanssc_ros.predictor import Predictor

    node, probe = graph_factory(Predictor.from_config(variant("tiny")))
    assert wait_for(lambda: probe.connected(["left/image_rect", "right/image_rect"]), 10.0)
    stamps = [100.0, 100.1, 100.2]
    for i, t in enumerate(stamps):
        probe.send_stereo(t, seed=i)
        assert wait_for(lambda n=i + 1: all(len(probe.got[k]) >= n for k in ("grid", "markers", "cloud")), 60.0), \
            f"no output for frame {i}: drops {node.drops.snapshot()}"
    time.sleep(0.3)
    for key in ("grid", "markers", "cloud"):
        assert probe.stamps(key) == pytest.approx(stamps, abs=1e-9), key
    g = probe.got["grid"][-1]
    assert (g.size_x, g.size_y, g.size_z) == (64, 64, 8) and len(g.labels) == 64 * 64 * 8
    assert g.header.frame_id == "camera_left" and probe.got["cloud"][-1].header.frame_id == "camera_left"
    assert all(m.header.frame_id == "camera_left" for m in probe.got["markers"][-1].markers)
    assert g.label_set == "semantickitti" and len(g.confidence) == len(g.labels)
    same_voxels(g, probe.got["markers"][-1], probe.got["cloud"][-1], list(g.class_names))
    assert node.drops.total == 0


def test_fixed_scene_geometry_in_grid_frame(graph_factory):
    node, probe = graph_factory(FakePredictor(), depth_mode="mono", output_frame="scanssc_grid",
                                class_filter="car,building", confidence_threshold=0.5)
    assert wait_for(lambda: probe.connected(["left/image_rect"]), 10.0)
    left, _ = textured_pair(0)
    probe.pub["left/camera_info"].publish(info_msg(P_LEFT, 5.0, zero_k=True))  # K zero: taken from P
    probe.pub["left/image_rect"].publish(image_msg(left, 5.0))
    assert wait_for(lambda: probe.got["markers"] and probe.got["cloud"] and probe.got["grid"], 30.0)
    g, markers = probe.got["grid"][0], probe.got["markers"][0]
    assert g.header.frame_id == "scanssc_grid"
    assert (g.origin.position.x, g.origin.position.y, g.origin.position.z) == pytest.approx((0.0, -25.6, -2.0))
    # the grid keeps every label; the drawn voxels follow the class filter and the confidence threshold
    assert np.count_nonzero(np.frombuffer(bytes(g.labels), np.uint8) == 9) == 64 * 64
    assert [m.ns for m in markers.markers] == ["car"]  # building has confidence 90/255 < 0.5
    assert len(markers.markers[0].points) == 10 * 10 * 2
    assert probe.got["cloud"][0].width == 200
    call = node.predictor.calls[0]
    assert call["stereo"] is None and call["K"][0, 0] == pytest.approx(P_LEFT[0])


def test_slow_model_stays_on_newest_frames_and_answers_parameters(graph_factory):
    from rclpy.parameter_client import AsyncParameterClient

    node, probe = graph_factory(FakePredictor(delay=0.5), depth_mode="mono")
    assert wait_for(lambda: probe.connected(["left/image_rect"]), 10.0)
    client = AsyncParameterClient(probe.node, "scanssc_node")
    assert client.wait_for_services(10.0)
    left, _ = textured_pair(0)
    probe.pub["left/camera_info"].publish(info_msg(P_LEFT, 0.0))
    sent, answer_times = [], []
    t0 = time.monotonic()
    for i in range(30):  # 10 Hz for 3 s
        t = 200.0 + 0.1 * i
        probe.pub["left/image_rect"].publish(image_msg(left, t))
        sent.append(t)
        if i % 10 == 5:
            q = time.monotonic()
            fut = client.get_parameters(["confidence_threshold"])
            assert wait_for(fut.done, 5.0)
            answer_times.append(time.monotonic() - q)
            assert fut.result().values[0].double_value == 0.0
        time.sleep(max(0.0, t0 + 0.1 * (i + 1) - time.monotonic()))
    assert wait_for(lambda: not node.slot.pending and len(probe.got["grid"]) >= 5, 5.0)
    time.sleep(0.8)  # the frame in progress finishes
    out = probe.stamps("grid")
    assert all(b > a for a, b in zip(out, out[1:])), out
    assert out[-1] >= sent[-2] - 1e-9, (out[-1], sent[-3:])  # the newest frames, not a backlog
    assert 4 <= len(out) <= 9, out  # ~0.5 s per frame over 3 s
    drops = node.drops.snapshot()
    # every sent frame is accounted for: published, superseded by a newer one, or (should the middleware have
    # overwritten one the busy executor had not taken) counted lost before the callback
    received = node.stats.frames_in
    assert received + drops.get("lost_before_callback", 0) == len(sent), (received, drops)
    assert set(drops) <= {"superseded", "lost_before_callback"}, drops
    assert sum(drops.values()) + len(out) == len(sent), (drops, len(out), len(sent))
    assert max(answer_times) < 1.0, answer_times
    # the drops are reported on /diagnostics
    assert wait_for(lambda: any(kv.key == "frames_dropped" and int(kv.value) == sum(drops.values())
                                for d in probe.got["diag"][-3:] for s in d.status for kv in s.values), 3.0)


def test_bad_frames_are_skipped_and_the_next_good_frame_is_processed(graph_factory):
    node, probe = graph_factory(FakePredictor())
    assert wait_for(lambda: probe.connected(["left/image_rect", "right/image_rect"]), 10.0)
    probe.send_stereo(1.0, encoding="yuv422")  # unsupported encoding
    assert wait_for(lambda: node.drops.snapshot().get("rejected") == 1, 10.0)
    small = image_msg(np.zeros((10, 12, 3), np.uint8), 1.2)
    left, right = textured_pair(1)
    probe.pub["left/camera_info"].publish(info_msg(P_LEFT, 1.2))
    probe.pub["right/camera_info"].publish(info_msg(P_RIGHT, 1.2, frame="camera_right"))
    probe.pub["right/image_rect"].publish(image_msg(right, 1.2, frame="camera_right"))
    probe.pub["left/image_rect"].publish(small)  # size differs from camera_info
    assert wait_for(lambda: node.drops.snapshot().get("rejected") == 2, 10.0)
    assert not probe.got["grid"]
    probe.send_stereo(1.4)
    assert wait_for(lambda: len(probe.got["grid"]) == 1, 10.0)
    assert probe.stamps("grid") == [pytest.approx(1.4)]


def test_class_filter_update_is_checked_against_the_label_set(graph_factory):
    from rclpy.parameter import Parameter

    node, _ = graph_factory(FakePredictor(), depth_mode="mono")
    bad = node.set_parameters([Parameter("class_filter", value="car,spaceship")])[0]
    assert not bad.successful and "spaceship" in bad.reason
    good = node.set_parameters([Parameter("class_filter", value="car, 13")])[0]
    assert good.successful and node.output_opts.class_filter == frozenset({1, 13})


def test_images_missing_from_the_stream_are_counted_lost_and_reported(graph_factory):
    """Images the middleware lost never reach a callback; the node counts them from the holes they leave: a gap
    in the stamps (frames 3, 6 and 7) and a camera_info whose image never came (the newest frame, 11)."""
    from scanssc_ros.ros.frame_sync import WAIT_LIMIT

    node, probe = graph_factory(FakePredictor(), depth_mode="mono")
    assert wait_for(lambda: probe.connected(["left/image_rect", "left/camera_info"]), 10.0)
    left, _ = textured_pair(0)
    missing = {3, 6, 7, 11}
    t0 = time.monotonic()
    for i in range(12):
        t = 300.0 + 0.1 * i
        probe.pub["left/camera_info"].publish(info_msg(P_LEFT, t))
        if i not in missing:
            probe.pub["left/image_rect"].publish(image_msg(left, t))
        time.sleep(max(0.0, t0 + 0.1 * (i + 1) - time.monotonic()))
    assert wait_for(lambda: node.drops.snapshot().get("lost_before_callback") == 3, 5.0), node.drops.snapshot()
    assert wait_for(lambda: node.drops.snapshot().get("lost_before_callback") == 4, WAIT_LIMIT + 2.0), \
        node.drops.snapshot()
    # the 8 received frames are published, or superseded when a loaded machine makes the worker slower than 10 Hz
    superseded = lambda: node.drops.snapshot().get("superseded", 0)  # noqa: E731
    assert wait_for(lambda: len(probe.got["grid"]) + superseded() == 8 and not node.slot.pending, 5.0)
    drops = node.drops.snapshot()
    assert drops.pop("lost_before_callback") == 4 and set(drops) <= {"superseded"}
    received = [300.0 + 0.1 * i for i in range(12) if i not in missing]
    assert set(np.round(probe.stamps("grid"), 6)) <= set(np.round(received, 6))
    # in order, and the newest received frame is never superseded (nothing newer arrives)
    stamps = probe.stamps("grid")
    assert stamps == sorted(stamps) and stamps[-1] == pytest.approx(received[-1])
    assert wait_for(lambda: probe.diag_value("dropped/lost_before_callback") == "4", 3.0)
    assert wait_for(lambda: probe.logged("left images lost before the node's callback"), 3.0)
    line = next(m.msg for m in probe.logs if "lost before the node's callback" in m.msg)
    assert "camera period: 1 image missing" in line and "input QoS reliable, depth 5" in line, line


ACCOUNTED_DROPS = {"superseded", "lost_before_callback", "unpaired", "no_camera_info"}


def test_10hz_bag_at_1x_into_a_slower_model_accounts_for_every_frame(graph_factory, tmp_path):
    """scanssc-play, in another process like a camera driver, plays a 10 Hz stereo bag of KITTI-size images at 1x
    into the node with the default input QoS; the model takes 0.3 s a frame. Every frame is published,
    superseded by a newer one, or counted lost before the callback; none disappears."""
    n = 30
    bag = write_camera_bag(tmp_path / "camera_10hz", n)
    node, probe = graph_factory(FakePredictor(delay=0.3))
    remap = []
    for side in ("left", "right"):
        remap += [f"/camera_color_{side}/image_raw:=/{side}/image_rect",
                  f"/camera_color_{side}/camera_info:=/{side}/camera_info"]
    play = subprocess.run([sys.executable, "-m", "scanssc_ros.bag.play", str(bag), "--rate", "1",
                           "--wait-subscribers", "30", "--remap", *remap], capture_output=True, text=True,
                          timeout=180)
    assert play.returncode == 0, play.stdout + play.stderr

    def accounted() -> int:
        return node.stats.frames_out + node.drops.total

    assert wait_for(lambda: accounted() >= n and not node.slot.pending, 15.0), (accounted(), node.drops.snapshot())
    time.sleep(0.5)  # nothing more may come
    drops, published = node.drops.snapshot(), node.stats.frames_out
    print(f"\n[10 Hz bag at 1x, 0.3 s model] {n} frames: received {node.stats.frames_in}, published {published}, "
          f"dropped {drops}")
    assert published + sum(drops.values()) == n, (published, drops)
    # a right image or camera_info held up in the middleware (see WAIT_LIMIT) leaves its frame unpaired or without
    # camera_info: counted as such; nothing may fail or be rejected
    assert set(drops) <= ACCOUNTED_DROPS, drops
    assert node.stats.frames_in + drops.get("lost_before_callback", 0) == n
    assert published >= 3, published  # ~3 s of camera at 0.3 s a frame: about 10
    out = probe.stamps("grid")
    assert len(out) == published and all(b > a for a, b in zip(out, out[1:])), out
    assert wait_for(lambda: probe.diag_value("frames_dropped") == str(sum(drops.values())), 3.0)


def test_lockstep_player_sends_a_dropped_frame_again(ros_context, graph_factory):
    """The demo's player: a frame the node reports dropped (here: received while disabled) is sent again, and the
    second send gives the grid."""
    from rclpy.parameter import Parameter
    from rclpy.serialization import serialize_message

    from scanssc_ros.bag.lockstep import LockstepPlayer

    node, probe = graph_factory(FakePredictor(), depth_mode="mono", enable=False)

    class InProcess:  # what play_frame asks of a NodeProcess
        proc = type("P", (), {"poll": staticmethod(lambda: None)})()

        @staticmethod
        def alive() -> bool:
            return True

    left, _ = textured_pair(0)
    msgs = {"/left/camera_info": serialize_message(info_msg(P_LEFT, 70.0)),
            "/left/image_rect": serialize_message(image_msg(left, 70.0))}
    player = LockstepPlayer(ros_context, "scanssc_node", {"/left/camera_info": "sensor_msgs/msg/CameraInfo",
                                                          "/left/image_rect": "sensor_msgs/msg/Image"})
    said = []

    def log(text: str) -> None:  # called just before the resend: the node is back on by then
        said.append(text)
        node.set_parameters([Parameter("enable", value=True)])

    try:
        player.wait_ready(InProcess, list(msgs), timeout=10.0)
        player.spin_until(lambda: bool(player.diagnostics), 5.0)
        grid, _ = player.play_frame(msgs, InProcess, timeout=20.0, retries=2, log=log)
    finally:
        player.close()
    assert grid.header.stamp.sec == 70
    assert [r["why"] for r in player.resends] == ["the node dropped it (disabled=1)"], player.resends
    assert said == ["[lockstep] the node dropped it (disabled=1): sending the frame again (1/2)"]


def send_mono_frame(node, probe, t: float, *outputs: str) -> None:
    """One left image + camera_info at ``t`` once each of ``outputs`` has our subscriber; waits for them and the
    grid (each output is its own publish, so one arriving says nothing about the next)."""
    assert wait_for(lambda: probe.connected(["left/image_rect"])
                    and all(node.pubs[o].get_subscription_count() for o in outputs), 10.0)
    left, _ = textured_pair(0)
    probe.pub["left/camera_info"].publish(info_msg(P_LEFT, t))
    probe.pub["left/image_rect"].publish(image_msg(left, t))
    assert wait_for(lambda: all(probe.got[o] for o in outputs) and probe.got["grid"], 30.0), node.drops.snapshot()


def test_occupancy_grid_for_planners(graph_factory):
    node, probe = graph_factory(FakePredictor(), depth_mode="mono", output_frame="scanssc_grid")
    send_mono_frame(node, probe, 7.0, "occupancy", "obstacles")
    occ = probe.got["occupancy"][0]
    assert occ.header.frame_id == "scanssc_grid" and (occ.header.stamp.sec, occ.header.stamp.nanosec) == (7, 0)
    assert (occ.info.width, occ.info.height) == (64, 64) and occ.info.resolution == pytest.approx(0.8)
    assert (occ.info.origin.position.x, occ.info.origin.position.y, occ.info.origin.position.z) == \
        pytest.approx((0.0, -25.6, -1.73))
    cells = np.asarray(occ.data, np.int8).reshape(64, 64).T  # back to (x, y)
    # the stand-in scene: road everywhere, a car at x 10-19 / y 20-29 and a building at x 40-59 / y 50-63
    assert cells[15, 25] == 100 and cells[50, 55] == 100 and cells[0, 0] == 0 and cells[30, 5] == 0
    assert set(np.unique(cells)) == {0, 100}
    # ~/obstacles: the voxels behind the occupied cells, in the band and as clouds are read (x, y, z + label, conf)
    obstacles = probe.got["obstacles"][0]
    assert obstacles.header == occ.header
    assert [f.name for f in obstacles.fields][:3] == ["x", "y", "z"] and "label" in [f.name for f in obstacles.fields]
    grid = probe.got["grid"][0]
    idx = voxel_index(_cloud_xyz(obstacles), grid)
    labels = decode_grid(grid)[0]
    # road fills layer 0 (0.8 m voxels): layer 1 starts at the ground, layers 2-3 lie 0.8-1.6 m above it
    expect = {(x, y, z) for x, y, z in np.argwhere((labels == 1) | (labels == 13)).tolist() if z in (2, 3)}
    assert {tuple(v) for v in idx.tolist()} == expect and len(idx) == len(expect)
    assert set(_cloud_field(obstacles, "label").tolist()) == {1, 13}


def _cloud_xyz(cloud) -> np.ndarray:
    return np.stack([_cloud_field(cloud, k) for k in "xyz"], 1).astype(np.float64)


def _cloud_field(cloud, name: str) -> np.ndarray:
    f = next(f for f in cloud.fields if f.name == name)
    fmt = {7: "<f4", 2: "u1"}[f.datatype]
    dt = np.dtype({"names": [name], "formats": [fmt], "offsets": [f.offset], "itemsize": cloud.point_step})
    return np.frombuffer(bytes(cloud.data), dt)[name]


@pytest.mark.parametrize("encoding", ["sparse", "zlib"])
def test_compact_grid_and_obstacle_class_list(graph_factory, encoding):
    fake = FakePredictor()
    node, probe = graph_factory(fake, depth_mode="mono", output_frame="scanssc_grid", grid_encoding=encoding,
                                grid_confidence=encoding == "zlib", obstacle_classes="building",
                                obstacle_min_height=0.0, obstacle_max_height=6.0)
    send_mono_frame(node, probe, 8.0, "obstacles")
    grid = probe.got["grid"][0]
    assert grid.encoding == encoding
    labels, conf = decode_grid(grid)
    assert np.array_equal(labels, fake.labels)
    if encoding == "zlib":
        assert np.array_equal(conf, fake.confidence) and len(grid.labels) < labels.size / 10
    else:
        assert conf is None and len(grid.labels) == len(grid.indices) == np.count_nonzero(fake.labels)
    # only the building, from the ground (layer 1) up to 6 m: its whole height (layers 1-7)
    idx = voxel_index(_cloud_xyz(probe.got["obstacles"][0]), grid)
    assert {tuple(v) for v in idx.tolist()} == {tuple(v) for v in np.argwhere(fake.labels == 13).tolist()}


def test_obstacle_parameters_are_checked(graph_factory):
    node, _ = graph_factory(FakePredictor(), depth_mode="mono")
    for params, reason in (([Parameter("obstacle_classes", value="road")], "traversable"),
                           ([Parameter("obstacle_classes", value="lava")], "obstacle_classes: unknown class"),
                           ([Parameter("obstacle_min_height", value=3.0)], "must be below"),
                           ([Parameter("grid_encoding", value="png")], "grid_encoding")):
        result = node.set_parameters(params)[0]
        assert not result.successful and reason in result.reason, result.reason
    assert node.set_parameters([Parameter("grid_encoding", value="zlib")])[0].successful
    assert node.output_opts.grid_encoding == "zlib"
