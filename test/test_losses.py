"""Every loss against a slow, obvious reference (python loops over positions / windows), in float64."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scanssc_ros import losses
from scanssc_ros.data.depth import DBOUND
from scanssc_ros.labels import KITTI360, SEMANTIC_KITTI

B, C, X, Y, Z = 2, 5, 8, 6, 4


def _inputs(c: int = C, dims=(X, Y, Z), ignore_frac: float = 0.2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((B, c) + dims, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (B,) + dims, generator=g)
    target[torch.rand((B,) + dims, generator=g) < ignore_frac] = 255
    return logits, target.to(torch.uint8)


def _log_softmax_list(v):
    m = max(v)
    lse = m + math.log(sum(math.exp(x - m) for x in v))
    return [x - lse for x in v]


def _positions(dims):
    for x in range(dims[0]):
        for y in range(dims[1]):
            for z in range(dims[2]):
                yield x, y, z


# --------------------------------------------------------------------------------------------- references
def ref_ce(logits, target, w):
    logits, target = logits.numpy(), target.numpy()  # numpy scalar indexing keeps the loops fast
    num = den = 0.0
    for b in range(logits.shape[0]):
        for p in _positions(target.shape[1:]):
            t = int(target[(b,) + p])
            if t == 255:
                continue
            ls = _log_softmax_list([float(logits[(b, c) + p]) for c in range(logits.shape[1])])
            num += -w[t] * ls[t]
            den += w[t]
    return num / den


def _bce1(x):
    return -max(math.log(x), -100.0) if x > 0 else 100.0


def ref_sem_scal(logits, target):
    probs, target = F.softmax(logits, dim=1).numpy(), target.numpy()
    c_n = logits.shape[1]
    valid = [(b,) + p for b in range(logits.shape[0]) for p in _positions(target.shape[1:])
             if int(target[(b,) + p]) != 255]
    loss, count = 0.0, 0
    for c in range(c_n):
        p = [float(probs[(v[0], c) + v[1:]]) for v in valid]
        y = [1.0 if int(target[v]) == c else 0.0 for v in valid]
        if sum(y) == 0:
            continue
        count += 1
        nom = sum(pi * yi for pi, yi in zip(p, y))
        term = 0.0
        if sum(p) > 0:
            term += _bce1(nom / sum(p))
        term += _bce1(nom / sum(y))
        if sum(1 - yi for yi in y) > 0:
            term += _bce1(sum((1 - pi) * (1 - yi) for pi, yi in zip(p, y)) / sum(1 - yi for yi in y))
        loss += term
    return loss / count


def ref_geo_scal(logits, target, eps=1e-5):
    probs, target = F.softmax(logits, dim=1).numpy(), target.numpy()
    inter = sum_occ_p = sum_occ_t = free_num = free_den = 0.0
    for b in range(logits.shape[0]):
        for p in _positions(target.shape[1:]):
            t = int(target[(b,) + p])
            if t == 255:
                continue
            pe = float(probs[(b, 0) + p])
            occ = 1.0 if t != 0 else 0.0
            inter += occ * (1 - pe)
            sum_occ_p += 1 - pe
            sum_occ_t += occ
            free_num += (1 - occ) * pe
            free_den += 1 - occ
    return (_bce1(inter / (sum_occ_p + eps)) + _bce1(inter / (sum_occ_t + eps))
            + _bce1(free_num / (free_den + eps)))


def _window(axis: str, p: int, length: int):
    """Explicit window of spec section 4 for index p along an axis of the given length."""
    if axis == "height":
        return list(range(0, p + 1))
    if axis == "depth":
        return list(range(p, length))
    if axis == "width":
        return list(range(0, p + 1)) if p < length // 2 else list(range(p, length))
    raise ValueError(axis)


def ref_scan_axis(logits, target, axis):
    dim = {"depth": 0, "width": 1, "height": 2}[axis]
    logits, target = logits.numpy(), target.numpy()
    dims = target.shape[1:]
    c_n = logits.shape[1]
    total, n = 0.0, 0
    for b in range(logits.shape[0]):
        for p in _positions(dims):
            win = _window(axis, p[dim], dims[dim])
            zbar = [0.0] * c_n
            tbar = [0.0] * c_n
            for q in win:
                pos = list(p)
                pos[dim] = q
                pos = tuple(pos)
                for c in range(c_n):
                    zbar[c] += float(logits[(b, c) + pos]) / len(win)
                t = int(target[(b,) + pos])
                if t != 255:
                    tbar[t] += 1.0 / len(win)
            ls = _log_softmax_list(zbar)
            total += -sum(tc * lc for tc, lc in zip(tbar, ls))
            n += 1
    return total / n


def ref_depth_kl(depth_prob, lidar, dbound=DBOUND, sigma=0.5):
    lo, hi, step = dbound
    depth_prob, lidar = depth_prob.numpy(), lidar.numpy()
    d_n = depth_prob.shape[1]
    stride = lidar.shape[-1] // depth_prob.shape[-1]
    total, n = 0.0, 0
    for b in range(depth_prob.shape[0]):
        for i in range(depth_prob.shape[2]):
            for j in range(depth_prob.shape[3]):
                vals = [float(lidar[b, 0, i * stride + a, j * stride + c])
                        for a in range(stride) for c in range(stride)]
                vals = [v for v in vals if v > 0]
                if not vals or not (lo <= min(vals) <= hi - step):
                    continue
                d = min(vals)
                cdf = [0.5 * (1 + math.erf((lo - step / 2 + k * step - d) / (sigma * math.sqrt(2))))
                       for k in range(d_n + 1)]
                t = [cdf[k + 1] - cdf[k] for k in range(d_n)]
                s = sum(t)
                t = [x / s for x in t]
                total += sum(tk * math.log(tk) - tk * math.log(float(depth_prob[b, k, i, j]) + 1e-4)
                             for k, tk in enumerate(t) if tk > 0)
                n += 1
    return total / n


# ------------------------------------------------------------------------------------------------- tests
def test_ce_matches_reference():
    logits, target = _inputs()
    w = torch.rand(C, dtype=torch.float64) + 0.5
    assert losses.ce_loss(logits, target, w).item() == pytest.approx(ref_ce(logits, target, w.tolist()), rel=1e-9)


def test_sem_scal_matches_reference():
    logits, target = _inputs()
    assert losses.sem_scal_loss(logits, target).item() == pytest.approx(ref_sem_scal(logits, target), rel=1e-9)


def test_sem_scal_skips_absent_classes():
    logits, target = _inputs(seed=3)
    target[target == 2] = 1  # class 2 absent: the mean runs over 4 classes only
    assert losses.sem_scal_loss(logits, target).item() == pytest.approx(ref_sem_scal(logits, target), rel=1e-9)


def test_geo_scal_matches_reference():
    logits, target = _inputs()
    assert losses.geo_scal_loss(logits, target).item() == pytest.approx(ref_geo_scal(logits, target), rel=1e-9)


@pytest.mark.parametrize("axis", losses.SCAN_AXES)
def test_scan_loss_axis_matches_reference(axis):
    logits, target = _inputs()
    got = losses.scan_loss_axis(logits, target, axis).item()
    assert got == pytest.approx(ref_scan_axis(logits, target, axis), rel=1e-9)


def test_scan_loss_is_sum_of_axes_and_direction_matters():
    logits, target = _inputs(seed=1)
    total = losses.scan_loss(logits, target).item()
    assert total == pytest.approx(sum(ref_scan_axis(logits, target, a) for a in losses.SCAN_AXES), rel=1e-9)
    # the window direction is observable: flipping the grid along z changes the height term
    flipped = losses.scan_loss_axis(logits.flip(4), target.flip(3), "height").item()
    assert flipped != pytest.approx(losses.scan_loss_axis(logits, target, "height").item(), rel=1e-6)


def test_one_hot_equals_official_extra_class_one_hot():
    _, target = _inputs()
    oh = losses._one_hot_float(target, C, torch.float32)
    t = target.long().clone()
    t[t == 255] = C
    official = F.one_hot(t, num_classes=C + 1).permute(0, 4, 1, 2, 3)[:, :C].float()
    assert torch.equal(oh, official)


def test_depth_kl_matches_reference():
    g = torch.Generator().manual_seed(0)
    d_n = 112
    prob = torch.softmax(torch.randn(2, d_n, 3, 4, generator=g, dtype=torch.float64), dim=1)
    lidar = torch.rand(2, 1, 24, 32, generator=g, dtype=torch.float64) * 70
    lidar[torch.rand(lidar.shape, generator=g) < 0.9] = 0  # sparse, some patches empty / out of range
    got = losses.depth_kl_loss(prob, lidar).item()
    assert got == pytest.approx(ref_depth_kl(prob, lidar), rel=1e-9)
    assert losses.depth_kl_loss(prob, torch.zeros_like(lidar)).item() == 0.0


def test_gradients_finite_with_ignore():
    logits, target = _inputs(ignore_frac=0.5)
    logits = logits.float().requires_grad_(True)
    w = torch.as_tensor(SEMANTIC_KITTI.class_weights()[:C])
    prob_logits = torch.randn(B, 112, 2, 2, requires_grad=True)
    lidar = torch.full((B, 1, 16, 16), 10.0)
    terms = losses.ssc_losses(logits, target, w, depth_prob=prob_logits.softmax(1), lidar_depth=lidar)
    assert set(terms) == {"ce", "sem_scal", "geo_scal", "scan", "depth", "total"}
    terms["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(prob_logits.grad).all() and prob_logits.grad.abs().sum() > 0


def test_all_ignore_target_is_finite():
    logits, target = _inputs()
    target[:] = 255
    logits = logits.requires_grad_(True)
    total = losses.ssc_losses(logits, target)["total"]
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("label_set", [KITTI360, SEMANTIC_KITTI], ids=["C19", "C20"])
def test_real_class_counts(label_set):
    c = label_set.num_classes
    logits, target = _inputs(c=c, dims=(6, 4, 4), seed=2)
    w = torch.as_tensor(label_set.class_weights(), dtype=torch.float64)
    terms = losses.ssc_losses(logits, target, w)
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["ce"].item() == pytest.approx(ref_ce(logits, target, w.tolist()), rel=1e-9)
    assert terms["scan"].item() == pytest.approx(
        sum(ref_scan_axis(logits, target, a) for a in losses.SCAN_AXES), rel=1e-9)


def test_bad_target_ids_rejected():
    logits, target = _inputs()
    target[0, 0, 0, 0] = C  # not a class and not 255
    with pytest.raises(ValueError):
        losses.scan_loss(logits, target)


def test_depth_term_uses_the_models_bins():
    """lite has 56 bins of 1 m: the total must build its depth target from the model's dbound, not the default."""
    torch.manual_seed(0)
    logits = torch.randn(1, 20, 8, 8, 4)
    target = torch.randint(0, 20, (1, 8, 8, 4))
    lidar = torch.zeros(1, 1, 32, 64)
    lidar[..., 10:20, 5:40] = 12.3
    coarse = (2.0, 58.0, 1.0)
    prob = torch.softmax(torch.randn(1, 56, 4, 8), dim=1)
    terms = losses.ssc_losses(logits, target, depth_prob=prob, lidar_depth=lidar, dbound=coarse)
    assert torch.isfinite(terms["depth"])
    assert terms["depth"] == pytest.approx(1e-4 * losses.depth_kl_loss(prob, lidar, coarse).item())
    with pytest.raises(ValueError, match="56"):
        losses.ssc_losses(logits, target, depth_prob=prob, lidar_depth=lidar)
