"""scanssc-train end to end on the fake SemanticKITTI: overfitting one frame, outputs, bit-exact resume."""
from __future__ import annotations

import json

import pytest
import torch
from fake_kitti import fake_kitti  # noqa: F401  (session fixture)

from scanssc_ros import checkpoint
from scanssc_ros.cli import train as train_cli
from scanssc_ros.predictor import Predictor
from scanssc_ros.training.run_log import read_jsonl

STEPS = 6


def run_args(root, out, *extra):
    return ["--data-root", str(root), "--variant", "tiny", "--depth-mode", "mono", "--frames", "00/000000",
            "--val-frames", "08/000000", "--lr", "2e-3", "--milestones", "5", "--no-augment", "--log-every", "1",
            "--workers", "0", "--threads", "1", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def overfit_run(fake_kitti, tmp_path_factory):  # noqa: F811
    """Six steps on one repeated frame, validation every third epoch, a step checkpoint every two steps; the
    model config comes from a YAML override file and the class weights from the training targets."""
    out = tmp_path_factory.mktemp("overfit")
    cfg = out / "model.yaml"
    cfg.write_text("variant: tiny\ndropout: 0.0\n")
    rc = train_cli.main(run_args(fake_kitti, out, "--config", str(cfg), "--class-weights", "targets",
                                 "--max-steps", str(STEPS), "--ckpt-every", "2", "--keep-checkpoints",
                                 "--eval-every", "3"))
    assert rc == 0
    return out


def losses(log_path):
    return {r["step"]: r["loss"] for r in read_jsonl(log_path, "train")}


def test_loss_decreases_on_a_repeated_batch(overfit_run):
    loss = losses(overfit_run / "train_log.jsonl")
    assert sorted(loss) == list(range(1, STEPS + 1))
    assert loss[STEPS] < loss[1] - 0.5, loss
    assert sum(loss[s + 1] < loss[s] for s in range(1, STEPS)) >= STEPS - 2, loss


def test_outputs_log_and_checkpoints(overfit_run):
    names = {p.name for p in overfit_run.iterdir()}
    assert {"last.pt", "best.pt", "train_log.jsonl", "step_0000002.pt", "step_0000004.pt",
            "step_0000006.pt"} <= names
    records = read_jsonl(overfit_run / "train_log.jsonl")
    assert [r["type"] for r in records][0] == "start" and records[-1]["type"] == "end"
    vals = [r for r in records if r["type"] == "val"]
    assert [v["step"] for v in vals] == [3, 6]
    assert all(0 <= v["miou"] <= 1 and 0 <= v["iou"] <= 1 and len(v["class_iou"]) == 20 for v in vals)
    lr = {r["step"]: r["lr"] for r in records if r["type"] == "train"}
    assert lr[5] == pytest.approx(2e-3) and lr[6] == pytest.approx(2e-4)  # milestone 5, gamma 0.1

    payload = checkpoint.read(overfit_run / "last.pt")
    assert payload["config"]["dropout"] == 0.0 and payload["config"]["variant"] == "tiny"
    train = payload["extra"]["train"]
    assert train["state"]["step"] == STEPS and train["state"]["epoch"] == STEPS
    best = max(vals, key=lambda v: v["miou"])
    assert train["state"]["best_miou"] == pytest.approx(best["miou"])
    assert train["state"]["best_step"] == best["step"]
    weights = payload["extra"]["class_weights"]
    assert len(weights) == 20 and weights[2] == 0.0 and weights[1] > 0  # no bicycle in the scene, cars exist
    json.dumps(payload["extra"]["options"])  # the options are plain data

    # the checkpoints are ordinary model checkpoints: the predictor loads them by path
    pred = Predictor(overfit_run / "best.pt")
    assert pred.config.grid_dims == (64, 64, 8)


def test_resume_continues_exactly(overfit_run, tmp_path, fake_kitti):  # noqa: F811
    """Resuming from the step-4 checkpoint gives the same step-5 and step-6 losses and validation as the
    uninterrupted run, and continues the step counter."""
    rc = train_cli.main(run_args(fake_kitti, tmp_path, "--resume", str(overfit_run / "step_0000004.pt"),
                                 "--class-weights", "targets", "--max-steps", str(STEPS), "--ckpt-every", "2",
                                 "--eval-every", "3"))
    assert rc == 0
    ref, got = losses(overfit_run / "train_log.jsonl"), losses(tmp_path / "train_log.jsonl")
    assert sorted(got) == [5, 6]
    for s in (5, 6):
        assert got[s] == pytest.approx(ref[s], rel=1e-6, abs=1e-6), (s, got[s], ref[s])
    ref_val = read_jsonl(overfit_run / "train_log.jsonl", "val")[-1]
    got_val = read_jsonl(tmp_path / "train_log.jsonl", "val")[-1]
    assert got_val["step"] == 6 and got_val["miou"] == pytest.approx(ref_val["miou"], abs=1e-9)
    state = checkpoint.read(tmp_path / "last.pt")["extra"]["train"]["state"]
    assert state["step"] == STEPS and state["epoch"] == STEPS
    a = checkpoint.read(tmp_path / "last.pt")["state_dict"]
    b = checkpoint.read(overfit_run / "last.pt")["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_user_errors_exit_2(fake_kitti, tmp_path, capsys):  # noqa: F811
    assert train_cli.main(run_args(fake_kitti, tmp_path, "--precision", "fp16", "--device", "cpu")) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert train_cli.main(run_args(tmp_path / "missing", tmp_path)) == 2
    assert "not a directory" in capsys.readouterr().err
    assert train_cli.main(run_args(fake_kitti, tmp_path, "--resume", str(tmp_path / "nope.pt"))) == 2
    assert "checkpoint not found" in capsys.readouterr().err
