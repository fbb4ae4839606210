"""Predictor: numpy in, uint8 voxel grids out; input validation; precision and device handling."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from scanssc_ros import checkpoint
from scanssc_ros.config import variant
from scanssc_ros.model import fastpath
from scanssc_ros.model.examples import KITTI_IMAGE_HW, KITTI_K, KITTI_T_CAM_GRID, synthetic_depth
from scanssc_ros.model.precision import check_precision, inference_precision
from scanssc_ros.model.scanssc import ScanSSC
from scanssc_ros.predictor import Predictor, resize_depth_min


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    cfg = variant("tiny")
    return Predictor(ScanSSC(cfg), config=cfg)


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*KITTI_IMAGE_HW, 3), dtype=np.uint8)
    depth = synthetic_depth(KITTI_K, KITTI_IMAGE_HW)
    depth[:20] = np.nan
    return image, KITTI_K.copy(), KITTI_T_CAM_GRID.copy(), depth


def test_stereo_and_mono_outputs(predictor, frame):
    image, K, T, depth = frame
    for sd in (depth, None):
        pred = predictor.predict(image, K, T, stereo_depth=sd)
        assert pred.labels.shape == pred.confidence.shape == predictor.config.grid_dims
        assert pred.labels.dtype == np.uint8 and pred.confidence.dtype == np.uint8
        assert pred.labels.max() < predictor.config.num_classes
        # the max of 20 class probabilities is at least 1/20
        assert pred.confidence.min() >= int(255 / predictor.config.num_classes)
        assert {"preprocess", "backbone_neck", "head", "postprocess", "total"} <= set(pred.timings)


def test_confidence_matches_softmax(predictor, frame):
    image, K, T, depth = frame
    pred = predictor.predict(image, K, T, depth)
    with torch.inference_mode():
        logits = predictor.model(predictor.preprocess(image, K, T, depth)).logits[0]
    prob = logits.softmax(0)
    assert np.array_equal(pred.labels, prob.argmax(0).numpy().astype(np.uint8))
    expect = np.round(prob.max(0).values.numpy() * 255).astype(np.uint8)
    assert np.abs(pred.confidence.astype(int) - expect.astype(int)).max() <= 1


def test_bf16_on_cpu(predictor, frame):
    cfg = predictor.config
    p = Predictor(copy.deepcopy(predictor.model), config=cfg, precision="bf16")
    image, K, T, depth = frame
    pred = p.predict(image, K, T, depth)
    assert pred.labels.shape == cfg.grid_dims and pred.labels.dtype == np.uint8
    # random weights make many near-ties, which bf16 rounding flips; 98.6 % agreed when this was written
    assert (pred.labels == predictor.predict(image, K, T, depth).labels).mean() > 0.97


def test_precision_contexts():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Predictor(ScanSSC(variant("tiny")), precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp8", cpu)
    with inference_precision(cpu, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with inference_precision(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    # fp32 on CUDA means IEEE fp32: TF32 off inside, the caller's setting back afterwards (flags only: no GPU needed)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with inference_precision(cuda, "fp32"):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_mark_unseen(frame):
    cfg = variant("tiny")
    torch.manual_seed(0)
    p = Predictor(ScanSSC(cfg), config=cfg, mark_unseen=True)
    image, K, T, depth = frame
    pred = p.predict(image, K, T, depth)
    unseen = p.unseen_mask(K, T, image.shape[:2])
    assert 0 < unseen.mean() < 1
    assert np.all(pred.labels[unseen] == 255) and np.all(pred.labels[~unseen] < 255)


@pytest.mark.parametrize("change,match", [
    (lambda a: {**a, "image": a["image"].astype(np.float32)}, "uint8"),
    (lambda a: {**a, "image": a["image"][..., :2]}, "uint8 HxWx3"),
    (lambda a: {**a, "K": a["K"][:2]}, "K must be"),
    (lambda a: {**a, "K": np.where(np.eye(3) > 0, np.nan, a["K"])}, "non-finite"),
    (lambda a: {**a, "K": a["K"] * np.array([[-1], [1], [1]])}, "pinhole"),
    (lambda a: {**a, "T_cam_grid": np.eye(3)}, "T_cam_grid must be"),
    (lambda a: {**a, "T_cam_grid": np.diag([2.0, 2, 2, 1])}, "rotation"),
    (lambda a: {**a, "stereo_depth": a["stereo_depth"][:-1]}, "stereo_depth must be"),
    (lambda a: {**a, "stereo_depth": a["stereo_depth"].astype(np.int32)}, "float"),
])
def test_bad_inputs(predictor, frame, change, match):
    image, K, T, depth = frame
    args = change({"image": image, "K": K, "T_cam_grid": T, "stereo_depth": depth})
    with pytest.raises(ValueError, match=match):
        predictor.predict(args["image"], args["K"], args["T_cam_grid"], stereo_depth=args["stereo_depth"])


def test_device_and_precision_errors():
    cfg = variant("tiny")
    model = ScanSSC(cfg)
    with pytest.raises(ValueError, match="precision"):
        Predictor(model, config=cfg, precision="int8")
    with pytest.raises(ValueError, match="fp16"):
        Predictor(model, config=cfg, precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            Predictor(model, config=cfg, device="cuda:0")


def test_from_checkpoint(tmp_path, predictor, frame):
    path = checkpoint.save(tmp_path / "t.pt", predictor.model, predictor.config)
    p2 = Predictor(path)
    image, K, T, depth = frame
    a, b = predictor.predict(image, K, T, depth), p2.predict(image, K, T, depth)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)


def test_resize_depth_min_matches_loop():
    rng = np.random.default_rng(1)
    d = rng.uniform(1, 50, (13, 17)).astype(np.float32)
    d[rng.random(d.shape) < 0.2] = 0.0
    d[0, 0] = np.nan
    for out_hw in ((5, 6), (26, 40), (13, 8)):
        fast = resize_depth_min(d, out_hw)
        H, W = d.shape
        h, w = out_hw
        ref = np.zeros(out_hw, np.float32)
        for i in range(h):
            rows = range(int(np.floor(i * H / h)), int(np.floor((i + 1) * H / h))) if h <= H \
                else [int(np.floor((i + 0.5) * H / h))]
            for j in range(w):
                cols = range(int(np.floor(j * W / w)), int(np.floor((j + 1) * W / w))) if w <= W \
                    else [int(np.floor((j + 0.5) * W / w))]
                vals = [d[r, c] for r in rows for c in cols if np.isfinite(d[r, c]) and d[r, c] > 0]
                ref[i, j] = min(vals) if vals else 0.0
        assert np.array_equal(fast, ref), out_hw


def test_mark_unseen_sets_voxels_outside_the_view_to_unknown(frame):
    """Checked voxel by voxel against a plain pinhole projection of each voxel centre."""
    image, K, T, depth = frame
    cfg = variant("tiny")
    torch.manual_seed(0)
    model = ScanSSC(cfg)
    plain = Predictor(model, config=cfg).predict(image, K, T, depth).labels
    marking = Predictor(model, config=cfg, mark_unseen=True)
    marked = marking.predict(image, K, T, depth).labels
    h, w = image.shape[:2]
    X, Y, Z = cfg.grid_dims
    expect = np.zeros((X, Y, Z), bool)
    for ix in range(X):
        for iy in range(Y):
            for iz in range(Z):
                centre = np.array(cfg.grid_origin) + (np.array([ix, iy, iz]) + 0.5) * cfg.grid_voxel_size
                cam = T[:3, :3] @ centre + T[:3, 3]
                u, v = (K @ cam)[:2] / cam[2] if cam[2] > 0 else (-1.0, -1.0)
                expect[ix, iy, iz] = not (cam[2] > 0 and 0 <= u < w and 0 <= v < h)
    assert 0.2 < expect.mean() < 0.8  # the ~80 degree camera sees part of the grid, not all of it
    assert np.all(marked[expect] == 255)
    assert np.array_equal(marked[~expect], plain[~expect])
    # the mask is cached per camera: a second frame of the same camera gives the same result
    assert np.array_equal(marking.predict(image, K, T, depth).labels, marked)


def test_bev_render_greys_unseen_columns():
    from scanssc_ros.render import BACKGROUND, UNSEEN, bev_image

    labels = np.zeros((4, 4, 2), np.uint8)
    labels[0, 0, :] = 255  # unseen, nothing occupied
    labels[1, 1, 0] = 9  # road
    labels[1, 1, 1] = 255
    colors = np.zeros((20, 3), np.uint8)
    colors[9] = (255, 0, 255)
    rgb = bev_image(labels, colors)[::-1, ::-1]  # back to (x, y) indexing
    assert tuple(rgb[0, 0]) == UNSEEN and tuple(rgb[1, 1]) == (255, 0, 255) and tuple(rgb[2, 2]) == BACKGROUND


def test_preprocess_normalizes_like_the_numpy_formula(predictor, frame):
    """The torch normalisation (channels-last, in place) against the plain float32 formula: bitwise equal."""
    from scanssc_ros.data.image import IMAGENET_MEAN, IMAGENET_STD, resize_crop_image

    image, K, T, depth = frame
    inputs = predictor.preprocess(image, K, T, depth)
    img, _ = resize_crop_image(image, predictor.config.input_size)
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    expect = ((img.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    got = inputs.image
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(got.numpy(), expect)
    with fastpath.reference_ops():
        ref = predictor.preprocess(image, K, T, depth).image
    assert ref.is_contiguous() and np.array_equal(ref.numpy(), expect)


@pytest.mark.parametrize("hw", [(370, 1226), (376, 1408), (384, 1280), (600, 900), (1080, 1920), (97, 201)])
def test_network_input_equals_prepare_image(hw):
    """Per-plane resize (one plane on a helper thread), straight into the batch: bitwise the RGB pipeline, for a
    KITTI frame, a KITTI-360 frame (top-padded window), no resize, an upscale, a downscale and an odd small size."""
    from concurrent.futures import ThreadPoolExecutor

    from scanssc_ros.data.image import network_input, prepare_image

    image = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    expect, aug = prepare_image(image, (384, 1280))
    with ThreadPoolExecutor(1) as pool:
        for channels_last in (False, True):
            for p in (None, pool):
                got, got_aug = network_input(image, (384, 1280), channels_last=channels_last, pool=p)
                assert got.shape == (1, 3, 384, 1280) and np.array_equal(got_aug, aug)
                assert got.is_contiguous(memory_format=torch.channels_last if channels_last else
                                         torch.contiguous_format)
                assert torch.equal(got[0], expect)


@pytest.mark.parametrize("src,dst", [((370, 1226), (1280, 386)), ((9, 7), (3, 20)), ((50, 60), (60, 50)),
                                     ((40, 33), (33, 41)), ((40, 33), (47, 40)), ((2, 3), (5, 1))])
def test_resize_bicubic_in_bands_equals_one_pil_call(src, dst):
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from scanssc_ros.data.image import resize_bicubic

    image = np.random.default_rng(sum(src)).integers(0, 256, (*src, 3), dtype=np.uint8)
    expect = np.asarray(Image.fromarray(image).resize(dst, Image.Resampling.BICUBIC))
    with ThreadPoolExecutor(1) as pool:
        assert np.array_equal(resize_bicubic(image, dst, pool), expect)
    assert np.array_equal(resize_bicubic(image, dst), expect)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_preprocess_in_a_forked_child_after_the_parent_used_its_helper_thread(predictor, frame):
    """The parent's helper thread does not exist in a forked child; the child must make its own, not queue work
    for the missing one and wait forever."""
    import multiprocessing

    image, K, T, depth = frame
    expect = predictor.preprocess(image, K, T, depth).image  # the parent's helper thread now exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_child_preprocess, (predictor, image, K, T, depth)).get(timeout=60)
    assert torch.equal(got, expect)


def _child_preprocess(predictor, image, K, T, depth):
    torch.set_num_threads(1)  # GNU OpenMP's thread pool does not survive fork either: any parallel op would hang
    return predictor.preprocess(image, K, T, depth).image
