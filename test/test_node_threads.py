"""All of the node's model work (loading, warm-up, every frame) runs on its one worker thread, never on the thread
that constructs it: a second OpenMP thread team made lite inference ~10 % slower (node.py), and a refused start
still ends that worker."""
from __future__ import annotations

import threading

import pytest
from nodeutil import FakePredictor, Graph, Probe, make_node, wait_for

pytestmark = pytest.mark.ros


class RecordingPredictor(FakePredictor):
    def __init__(self) -> None:
        super().__init__()
        self.threads = []

    def predict(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        return super().predict(*args, **kwargs)


def test_loading_warm_up_and_frames_run_on_the_worker(ros_context, monkeypatch):
    from scanssc_ros.ros import node as node_module

    loaded_on = []
    predictor = RecordingPredictor()

    def load(params, log):
        loaded_on.append(threading.current_thread().name)
        return predictor

    monkeypatch.setattr(node_module, "load_predictor", load)
    node = make_node(ros_context, None, warmup=True)  # no predictor given: the node loads one
    probe = Probe(ros_context)
    graph = Graph(ros_context, node, probe.node)
    try:
        assert loaded_on == ["scanssc_inference"] and predictor.threads == ["scanssc_inference"]  # the warm-up
        assert wait_for(lambda: probe.connected(["left/image_rect", "right/image_rect"]), 10.0)
        probe.send_stereo(1.0)
        assert wait_for(lambda: len(probe.got["grid"]) == 1, 20.0)
        assert predictor.threads == ["scanssc_inference"] * 2
        assert threading.current_thread().name != "scanssc_inference"
    finally:
        node.close()
        graph.close()
        probe.node.destroy_node()


def test_a_refused_start_ends_the_worker(ros_context, monkeypatch):
    from scanssc_ros.ros import node as node_module
    from scanssc_ros.ros.node import StartupError

    def refuse(params, log):
        raise StartupError("checkpoint 'x.pt' does not exist")

    monkeypatch.setattr(node_module, "load_predictor", refuse)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(StartupError, match="does not exist"):
        make_node(ros_context, None)
    assert wait_for(lambda: not [t for t in threading.enumerate()
                                 if t.name == "scanssc_inference" and t.ident not in before], 5.0)
