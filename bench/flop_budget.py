"""How far each stage of ``Predictor.predict`` is from the time its matrix products alone need on this CPU.

Counts the multiply-adds of every convolution and matrix product per stage (``torch.utils.flop_counter`` on the
reference path, whose ops it knows), replaces the Winograd-eligible 3x3x3 convolutions' count by the products the
fast path actually runs, measures this machine's single-precision GEMM rate (a large ``torch.mm``: the best any
product here can do) and prints, per stage, the products' lower bound at that rate next to the measured fast-path
time. Softmax, norms, elementwise passes and the Winograd transforms are not in the bound: it is what no
implementation that keeps these products (and so the outputs, to float rounding) can go below.

Examples:
    python bench/flop_budget.py                      # lite (bundled checkpoint), real sample, 2 threads
    python bench/flop_budget.py --variant paper --iters 1

Results go to bench/results/flop_budget_cpu.json (runs of other variants are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_model import gemm_gflops  # noqa: E402
from bench.bench_predictor import CHECKPOINT, load_frame, one_call, synthetic_frame  # noqa: E402
from scanssc_ros.config import variant  # noqa: E402
from scanssc_ros.data.depth import stereo_depth  # noqa: E402
from scanssc_ros.model import fastpath, winograd  # noqa: E402
from scanssc_ros.model.layers import Conv3d  # noqa: E402
from scanssc_ros.predictor import Predictor  # noqa: E402

# stage -> the model's modules whose products it runs; the products of the model's own forward outside them (the
# lift's and the proposal's pixel geometry) are reported as "lift_proposal"
STAGE_MODULES: Dict[str, Tuple[str, ...]] = {
    "backbone_neck": ("img_backbone", "img_neck"),
    "depth": ("depth_net",),
    "cross_attn": ("VoxFormer_head.cross_transformer", "VoxFormer_head.mlp_prior", "VoxFormer_head.volume_embed"),
    "self_attn": ("VoxFormer_head.self_transformer", "VoxFormer_head.positional_encoding"),
    "scan": ("VoxFormer_head.depth_block", "VoxFormer_head.height_block", "VoxFormer_head.width_block",
             "VoxFormer_head.axis_positional_encoding"),
    "mixers": ("occ_encoder_backbone",),
    "head": ("pts_bbox_head",),
}


def stage_of(module_path: str) -> str:
    for name, prefixes in STAGE_MODULES.items():
        if any(module_path == p or module_path.startswith(p + ".") for p in prefixes):
            return name
    return "lift_proposal"


def winograd_products(conv: Conv3d, x: torch.Tensor, out: torch.Tensor) -> Tuple[float, float]:
    """(direct FLOPs, FLOPs of the Winograd products) of one call of a Winograd-eligible convolution."""
    direct = 2.0 * out.numel() * conv.in_channels * 27
    t0 = winograd.depth_tile(x.shape[2])
    positions_per_output = 16 * (t0 + 2) / (4 * t0)  # 96 / 16 for F(4x2x2), 64 / 8 for F(2x2x2)
    return direct, direct * positions_per_output / 27


def count(pred: Predictor, frame) -> Dict[str, Dict[str, float]]:
    """GFLOP per stage: ``counted`` (as written: direct convolutions) and ``executed`` (Winograd's products)."""
    one_call(pred, frame, "fast")  # builds the per-camera caches (reference points, splat plan): not per-frame work
    saved: Dict[str, float] = defaultdict(float)
    handles = []
    for path, mod in pred.model.named_modules():
        if isinstance(mod, Conv3d) and mod._winograd:
            def hook(m, args, out, stage=stage_of(path)):
                direct, products = winograd_products(m, args[0], out)
                saved[stage] += direct - products
            handles.append(mod.register_forward_hook(hook))
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with fastpath.reference_ops(), counter:
            one_call(pred, frame, "fast")
    finally:
        for h in handles:
            h.remove()
    per_module = counter.get_flop_counts()
    top = type(pred.model).__name__
    counted: Dict[str, float] = defaultdict(float)
    for prefixes in STAGE_MODULES.values():
        for p in prefixes:
            # a module the forward calls through its parent's children (the encoder layers) is counted under its
            # own name only: take the outermost names present under the prefix
            under = [k for k in per_module if k == f"{top}.{p}" or k.startswith(f"{top}.{p}.")]
            outer = [k for k in under if not any(k.startswith(o + ".") for o in under)]
            counted[stage_of(p)] += sum(sum(per_module[k].values()) for k in outer)
    counted["lift_proposal"] = counter.get_total_flops() - sum(counted.values())
    return {s: {"counted_gflop": counted[s] / 1e9, "executed_gflop": (counted[s] - saved[s]) / 1e9}
            for s in list(STAGE_MODULES) + ["lift_proposal"]}


def measure(pred: Predictor, frame, iters: int, warmup: int) -> Dict[str, float]:
    runs: List[Dict[str, float]] = []
    for i in range(warmup + iters):
        t, _ = one_call(pred, frame, "fast")
        if i >= warmup:
            runs.append(t)
    keys = list(STAGE_MODULES) + ["lift", "proposal", "predict_wall"]
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    med["lift_proposal"] = med.pop("lift") + med.pop("proposal")
    return med


def report(name: str, flops: Dict[str, Dict[str, float]], measured: Dict[str, float], rate: float) -> Dict:
    rows = {}
    print(f"--- {name}: products' lower bound at {rate:.0f} GFLOP/s (this machine's best 2048^3 sgemm)")
    print(f"{'stage':15s} {'GFLOP as written':>17s} {'GFLOP run':>10s} {'bound ms':>9s} {'measured ms':>12s} "
          f"{'bound/measured':>15s}")
    for s, f in flops.items():
        bound = f["executed_gflop"] / rate * 1e3
        got = measured.get(s)
        rows[s] = {**f, "bound_ms": bound, "measured_ms": got}
        share = f"{bound / got:.2f}" if got else "-"
        print(f"{s:15s} {f['counted_gflop']:17.1f} {f['executed_gflop']:10.1f} {bound:9.1f} "
              f"{(got if got is not None else float('nan')):12.1f} {share:>15s}")
    total = sum(f["executed_gflop"] for f in flops.values())
    bound = total / rate * 1e3
    print(f"{'total':15s} {sum(f['counted_gflop'] for f in flops.values()):17.1f} {total:10.1f} {bound:9.1f} "
          f"{measured['predict_wall']:12.1f} {bound / measured['predict_wall']:15.2f}")
    return {"stages": rows, "total_executed_gflop": total, "bound_ms": bound,
            "predict_wall_ms": measured["predict_wall"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="lite", help="lite (bundled checkpoint) or paper (random weights)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5, help="timed fast-path calls (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seq = args.data / "semantickitti-mini" / "sequences" / "08"
    if seq.is_dir():
        left, right, K, T, shift, fx, base = load_frame(seq, args.frame)
        frame = (left, stereo_depth(left, right, fx, base), K, T, shift, fx, base)  # SGBM once, not timed
        source = f"semantickitti-mini 08/{args.frame:06d}"
    else:
        print(f"no KITTI sample under {seq}: a synthetic frame instead")
        frame, source = synthetic_frame(), "synthetic"
    if args.variant == "lite":
        pred = Predictor(CHECKPOINT)
    else:
        torch.manual_seed(0)
        pred = Predictor.from_config(variant(args.variant))
    rates = [gemm_gflops()]
    flops = count(pred, frame)
    measured = measure(pred, frame, args.iters, args.warmup)
    rates.append(gemm_gflops())
    rate = max(rates)  # the faster phase of a drifting VM: the lower of the two bounds
    res = report(f"{args.variant} cpu fp32, {args.threads} thread(s), {source}", flops, measured, rate)
    res.update({"variant": args.variant, "threads": args.threads, "input": source, "gemm_gflops": rate,
                "gemm_gflops_before_after": rates, "iters": args.iters,
                "cpu": platform.processor() or platform.machine(), "loadavg_1min_after": os.getloadavg()[0],
                "date": time.strftime("%Y-%m-%d %H:%M")})
    out = args.out or REPO / "bench" / "results" / "flop_budget_cpu.json"
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged[f"{args.variant}_t{args.threads}"] = res
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
