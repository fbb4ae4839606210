"""Fast end-to-end checks of the whole network on the tiny variant (small input and grid)."""
from __future__ import annotations

import pytest
import torch

from scanssc_ros.config import variant
from scanssc_ros.model.examples import example_inputs
from scanssc_ros.model.scanssc import ModelInputs, ScanSSC

STAGES = {"backbone_neck", "depth", "lift", "proposal", "cross_attn", "self_attn", "scan", "mixers", "head"}


@pytest.fixture(scope="module")
def tiny() -> ScanSSC:
    torch.manual_seed(0)
    return ScanSSC(variant("tiny"))


def test_forward_shapes_and_timings(tiny):
    cfg = tiny.config
    tiny.eval()
    timings = {}
    with torch.no_grad():
        out = tiny(example_inputs(cfg, 2), timings=timings)
    h, w = cfg.feature_size
    assert out.logits.shape == (2, cfg.num_classes, *cfg.grid_dims)
    assert torch.isfinite(out.logits).all()
    assert out.depth.shape == out.mono_depth_logits.shape == (2, cfg.num_bins, h, w)
    assert torch.allclose(out.depth.sum(1), torch.ones(2, h, w), atol=1e-5)
    assert out.proposal.shape == (2, *cfg.proc_grid.dims) and out.proposal.dtype == torch.bool
    n = out.proposal[0].numel()
    assert 0 < out.proposal[0].sum() < n and 0 < out.proposal[1].sum() < n
    assert not torch.equal(out.proposal[0], out.proposal[1])  # different walls -> different proposals
    assert set(timings) == STAGES and all(v >= 0 for v in timings.values())


def test_backward_reaches_every_parameter(tiny):
    tiny.train()
    out = tiny(example_inputs(tiny.config, 2, seed=1))
    loss = out.logits.float().square().mean() + out.mono_depth_logits.float().square().mean() * 1e-3
    tiny.zero_grad(set_to_none=True)
    loss.backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None]
    bad = [n for n, p in tiny.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without gradient: {missing}"
    assert not bad, f"parameters with non-finite gradient: {bad}"
    tiny.eval()


def test_batch_matches_single_samples(tiny):
    """Per-sample proposals are padded into one batch; results must equal running each sample alone."""
    tiny.eval()
    x = example_inputs(tiny.config, 2, seed=2)
    with torch.no_grad():
        both = tiny(x).logits
        for i in range(2):
            xi = ModelInputs(x.image[i:i + 1], x.K[i:i + 1], x.T_cam_grid[i:i + 1], x.img_aug[i:i + 1],
                             x.stereo_depth[i:i + 1], x.p_shift[i:i + 1])
            assert torch.allclose(tiny(xi).logits, both[i:i + 1], atol=1e-4), i


def test_mono_mode_uses_own_depth(tiny):
    tiny.eval()
    x = example_inputs(tiny.config, 1, stereo=False, seed=3)
    with torch.no_grad():
        out = tiny(x)
    assert out.logits.shape[0] == 1 and torch.isfinite(out.logits).all()
    assert torch.allclose(out.depth, out.mono_depth_logits.softmax(1))
    assert out.proposal.any()


def test_rejects_wrong_input_shapes(tiny):
    x = example_inputs(tiny.config, 1)
    bad = ModelInputs(x.image[..., :-32], x.K, x.T_cam_grid, x.img_aug, None)
    with pytest.raises(ValueError, match="image"):
        tiny(bad)
    bad = ModelInputs(x.image, x.K, x.T_cam_grid, x.img_aug, x.stereo_depth[..., :-1])
    with pytest.raises(ValueError, match="stereo_depth"):
        tiny(bad)


def test_single_sample_training_batch_norm(tiny):
    """Batch 1 in train mode must work (camera-vector and ASPP pooling BNs see one value per channel)."""
    tiny.train()
    out = tiny(example_inputs(tiny.config, 1, seed=4))
    out.logits.mean().backward()
    tiny.eval()
