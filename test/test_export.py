"""scanssc-export: training checkpoint -> slim fp16 inference checkpoint that the Predictor loads."""
from __future__ import annotations

import torch

from scanssc_ros.checkpoint import load, read, save
from scanssc_ros.cli.export import main
from scanssc_ros.config import variant
from scanssc_ros.model.examples import example_inputs
from scanssc_ros.model.scanssc import ScanSSC


def test_export_keeps_config_and_weights_drops_training_state(tmp_path):
    torch.manual_seed(0)
    cfg = variant("tiny")
    model = ScanSSC(cfg).eval()
    opt = torch.optim.AdamW(model.parameters())
    src = save(tmp_path / "train.pt", model, cfg, extra={
        "dataset": "semantickitti", "options": {"lr": 3e-4},
        "train": {"optimizer": opt.state_dict(), "rng": [1, 2], "state": {"step": 7, "best_miou": 0.5}}})
    dst = tmp_path / "slim.pt"
    assert main([str(src), str(dst)]) == 0
    payload = read(dst)
    assert payload["extra"]["train_state"] == {"step": 7, "best_miou": 0.5} and "train" not in payload["extra"]
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    slim_model, slim_cfg, _ = load(dst)
    assert slim_cfg == cfg
    inputs = example_inputs(cfg)
    with torch.inference_mode():
        ref, got = model(inputs).logits, slim_model(inputs).logits
    assert torch.allclose(ref, got, atol=0.05, rtol=0.05), (ref - got).abs().max()
    assert (ref.argmax(1) == got.argmax(1)).float().mean() > 0.95


def test_export_of_a_bad_file_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main([str(bad), str(tmp_path / "out.pt")]) == 2
    assert "scanssc-export:" in capsys.readouterr().err
