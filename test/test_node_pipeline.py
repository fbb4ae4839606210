"""The node's camera pipeline in-process: inputs -> worker -> grid / markers / cloud / diagnostics.

The model is either the real (untrained) tiny Predictor or a stand-in with a fixed scene and an injected delay;
the rosbag end-to-end runs of the installed executable with the lite model are in test_node_bag_e2e.py.
"""
from __future__ import annotations

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
    image_msg,
    info_msg,
    make_node,
    same_voxels,
    textured_pair,
    wait_for,
)


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
    for node, probe, graph in made:
        node.close()
        graph.close()
        node.destroy_node()
        probe.node.destroy_node()


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
    # with input_depth 1 the middleware itself may overwrite an image the busy executor has not taken yet (seen
    # on a loaded 2-core machine); the node accounts for every image it received
    received = node.stats.frames_in
    assert len(sent) - 3 <= received <= len(sent), (received, len(sent))
    assert drops.get("superseded", 0) + len(out) == received, (drops, len(out), received)
    assert max(answer_times) < 1.0, answer_times
    # the drops are reported on /diagnostics
    assert wait_for(lambda: any(kv.key == "frames_dropped" and int(kv.value) == drops["superseded"]
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
