"""bench/flop_budget.py's arithmetic: every module's products land in a stage, and the Winograd count is what the
fast path's products really are."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scanssc_ros.config import variant
from scanssc_ros.model import winograd
from scanssc_ros.model.layers import Conv3d
from scanssc_ros.model.scanssc import ScanSSC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
flop_budget = pytest.importorskip("bench.flop_budget")


@pytest.mark.parametrize("name", ["tiny", "lite", "paper"])
def test_every_module_with_parameters_has_a_stage(name):
    model = ScanSSC(variant(name))
    lost = [path for path, mod in model.named_modules()
            if any(True for _ in mod.parameters(recurse=False)) and flop_budget.stage_of(path) == "lift_proposal"]
    assert not lost, f"products of these modules would be reported under lift_proposal: {lost[:5]}"


@pytest.mark.parametrize("depth", [8, 6])  # F(4x2x2) and F(2x2x2)
def test_winograd_count_is_the_fast_paths_products(depth):
    conv = Conv3d(128, 64, 3, padding=1).eval()
    assert conv._winograd
    x = torch.randn(1, 128, depth, 4, 6)
    with torch.inference_mode():
        out = conv(x)
        u = winograd.transform_weight(conv.weight, winograd.depth_tile(depth))  # once per weight: not counted
        counter = FlopCounterMode(display=False)
        with counter:
            winograd.conv3d_3x3x3(x, u, conv.bias)
    direct, products = flop_budget.winograd_products(conv, x, out)
    assert direct == 2 * out.numel() * 128 * 27
    assert products == pytest.approx(counter.get_total_flops(), rel=1e-12)  # whole tiles: nothing computed to be cut


@pytest.mark.slow
def test_stage_counts_add_up_to_the_whole_forward():
    torch.manual_seed(0)
    pred = flop_budget.Predictor.from_config(variant("tiny"))
    frame = flop_budget.synthetic_frame()
    flop_budget.one_call(pred, frame, "fast")  # the camera-dependent caches, which count() leaves out too
    per_stage = flop_budget.count(pred, frame)
    counter = FlopCounterMode(display=False)
    with flop_budget.fastpath.reference_ops(), counter:
        flop_budget.one_call(pred, frame, "fast")
    assert sum(s["counted_gflop"] for s in per_stage.values()) * 1e9 == pytest.approx(counter.get_total_flops())
    for name in ("backbone_neck", "depth", "cross_attn", "self_attn", "scan", "mixers", "head", "lift_proposal"):
        assert per_stage[name]["counted_gflop"] > 0, name
        assert per_stage[name]["executed_gflop"] == per_stage[name]["counted_gflop"]  # tiny: no Winograd layer
