"""CUDA checks (skipped without CUDA, unless SCANSSC_REQUIRE_CUDA=1 makes that a failure: bench/gpu_check.sh).
The fast paths are device-independent code; these check them and the precisions on a GPU against the CPU."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scanssc_ros.config import variant
from scanssc_ros.model.decode import labels_confidence, labels_confidence_reference
from scanssc_ros.model.examples import KITTI_IMAGE_HW, KITTI_K, KITTI_T_CAM_GRID, example_inputs, synthetic_depth
from scanssc_ros.model.scanssc import ScanSSC
from scanssc_ros.predictor import Predictor

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        if os.environ.get("SCANSSC_REQUIRE_CUDA") == "1":
            pytest.fail("SCANSSC_REQUIRE_CUDA=1 but torch.cuda.is_available() is False")
        pytest.skip("CUDA not available")
    return torch.device("cuda:0")


def test_decode_on_cuda_matches_cpu_reference(cuda):
    torch.manual_seed(0)
    coarse = torch.randn(20, 16, 16, 4) * 3
    ref_l, ref_c = labels_confidence_reference(F.interpolate(coarse[None], size=(64, 64, 16), mode="trilinear",
                                                             align_corners=False)[0])
    lab, conf = labels_confidence(coarse.to(cuda), (64, 64, 16))
    assert torch.equal(lab.cpu(), ref_l)
    assert (conf.cpu().int() - ref_c.int()).abs().max() <= 1


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_tiny_predictor_on_cuda_agrees_with_cpu(cuda, precision):
    torch.manual_seed(0)
    cfg = variant("tiny")
    model = ScanSSC(cfg)
    cpu = Predictor(model, config=cfg)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*KITTI_IMAGE_HW, 3), dtype=np.uint8)
    depth = synthetic_depth(KITTI_K, KITTI_IMAGE_HW)
    ref = cpu.predict(image, KITTI_K, KITTI_T_CAM_GRID, depth)
    gpu = Predictor(copy.deepcopy(model), config=cfg, device=cuda, precision=precision)
    out = gpu.predict(image, KITTI_K, KITTI_T_CAM_GRID, depth)
    agree = (out.labels == ref.labels).mean()
    assert agree > (0.999 if precision == "fp32" else 0.97), agree


def test_training_step_on_cuda(cuda):
    torch.manual_seed(0)
    cfg = variant("tiny")
    model = ScanSSC(cfg).to(cuda).train()
    out = model(example_inputs(cfg, 2, device=cuda))
    out.logits.float().logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_group_norm_cuda_inference_path_matches_aten(cuda, precision):
    """layers.GroupNorm takes the var_mean + multiply-add path for CUDA inference; aten's kernel is the
    reference, in the dtype autocast gives it."""
    from scanssc_ros.model import fastpath
    from scanssc_ros.model.layers import GroupNorm

    torch.manual_seed(0)
    gn = GroupNorm(16, 64).to(cuda).eval()
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-1, 1)
    x = (torch.randn(1, 64, 64, 64, 8, device=cuda) * 3 + 1.5)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        xin = x if dtype is None else x.to(dtype)
        got = gn(xin)
        with fastpath.reference_ops():
            ref = gn(xin)
    assert got.dtype == ref.dtype
    torch.testing.assert_close(got.float(), ref.float(), rtol=1e-4, atol=1e-4 if dtype is None else 2e-2)


def test_lite_forward_on_cuda_waits_for_the_device_once(cuda):
    """test_host_sync counts the CUDA forward's host waits on the CPU; here torch's sync debug mode counts them
    on the GPU: a steady-state bf16 forward waits once, for the number of proposal voxels (the cross-attention's
    query count). A second wait found here and not there is an op the CPU-side probe does not know."""
    import warnings

    torch.manual_seed(0)
    cfg = variant("lite")
    model = ScanSSC(cfg).to(cuda).eval()
    inputs = example_inputs(cfg, device=cuda)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(inputs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model(inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    waits = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(waits) == 1, waits
