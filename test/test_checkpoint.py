"""Checkpoint round trip, strict loading errors, corrupt files and the variant check."""
from __future__ import annotations

import pytest
import torch

from scanssc_ros import checkpoint
from scanssc_ros.config import variant
from scanssc_ros.model.examples import example_inputs
from scanssc_ros.model.scanssc import ScanSSC


@pytest.fixture(scope="module")
def tiny_model() -> ScanSSC:
    torch.manual_seed(0)
    model = ScanSSC(variant("tiny"))
    # make BN running stats non-trivial so they must travel with the checkpoint
    model.train()
    with torch.no_grad():
        model(example_inputs(model.config, 2, seed=5))
    return model.eval()


def test_save_load_identical_outputs(tmp_path, tiny_model):
    path = checkpoint.save(tmp_path / "m.pt", tiny_model, tiny_model.config, extra={"step": 7, "note": "x"})
    loaded, cfg, extra = checkpoint.load(path)
    assert cfg == tiny_model.config and extra == {"step": 7, "note": "x"}
    assert not loaded.training
    x = example_inputs(cfg, 1, seed=6)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, tiny_model(x).logits)
    assert not (tmp_path / "m.pt.tmp").exists()


def _payload(model):
    return {"format": checkpoint.FORMAT, "config": model.config.to_dict(),
            "state_dict": dict(model.state_dict()), "extra": {}}


def test_missing_unexpected_and_shape_errors_name_keys(tmp_path, tiny_model):
    p = _payload(tiny_model)
    sd = p["state_dict"]
    sd.pop("pts_bbox_head.occ_convs.0.0.weight")
    sd["bogus.weight"] = torch.zeros(1)
    sd["VoxFormer_head.mlp_prior.0.weight"] = torch.zeros(3, 3)
    torch.save(p, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as e:
        checkpoint.load(tmp_path / "bad.pt")
    msg = str(e.value)
    assert "missing keys: pts_bbox_head.occ_convs.0.0.weight" in msg
    assert "unexpected keys: bogus.weight" in msg
    assert "VoxFormer_head.mlp_prior.0.weight: checkpoint (3, 3)" in msg


def test_corrupt_and_foreign_files(tmp_path, tiny_model):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="not a readable scanssc_ros checkpoint"):
        checkpoint.load(junk)
    good = checkpoint.save(tmp_path / "good.pt", tiny_model, tiny_model.config)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable"):
        checkpoint.load(truncated)
    torch.save({"model": tiny_model.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a scanssc_ros checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "absent.pt")


def test_bad_config_in_checkpoint(tmp_path, tiny_model):
    p = _payload(tiny_model)
    p["config"]["variant"] = "gigantic"
    torch.save(p, tmp_path / "cfg.pt")
    with pytest.raises(ValueError, match="invalid model config"):
        checkpoint.load(tmp_path / "cfg.pt")


def test_variant_check(tiny_model):
    checkpoint.check_variant(tiny_model.config, "tiny")
    with pytest.raises(ValueError, match="holds a 'tiny' model but a 'lite' model was expected"):
        checkpoint.check_variant(tiny_model.config, "lite")
