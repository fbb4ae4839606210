"""End-to-end ``Predictor.predict`` on the real KITTI sample (seq 08), fast paths against the reference ones.

Each iteration runs every mode once on the same frame, interleaved (fast, reference, fast, ...), so a machine
shared with other jobs slows both alike and the per-stage ratios stay meaningful when absolute times do not.
Per stage: median wall time; per call: wall, process CPU time (all threads) and, separately, SGBM stereo depth
on the original pair. The reference mode is ``fastpath.reference_ops()`` (the implementations the fast ones
replaced). Outputs of the two modes are compared on every frame: labels identical, confidence within 1.

Examples:
    python bench/bench_predictor.py                       # lite, bundled checkpoint, frame 0, 2 threads
    python bench/bench_predictor.py --threads 1,2 --iters 7
    python bench/bench_predictor.py --variant paper --iters 1 --warmup 0 --modes fast,reference
    python bench/bench_predictor.py --modes fast,compiled --iters 5   # torch.compile against the fast paths
    SCANSSC_MALLOC_TUNING=heap python bench/bench_predictor.py --variant paper --iters 2 --modes fast

Results go to bench/results/predictor_<device>.json (runs of other settings are kept).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_model import gemm_gflops, peak_rss_mb  # noqa: E402
from scanssc_ros.config import variant  # noqa: E402
from scanssc_ros.data.depth import stereo_depth  # noqa: E402
from scanssc_ros.data.image import load_rgb  # noqa: E402
from scanssc_ros.geometry import kitti_camera, read_kitti_calib, stereo_baseline  # noqa: E402
from scanssc_ros.model import fastpath  # noqa: E402
from scanssc_ros.model.examples import (  # noqa: E402
    KITTI_IMAGE_HW,
    KITTI_K,
    KITTI_P_SHIFT,
    KITTI_T_CAM_GRID,
    synthetic_depth,  # noqa: E402
)
from scanssc_ros.predictor import Predictor  # noqa: E402

STAGES = ["preprocess", "backbone_neck", "depth", "lift", "proposal", "cross_attn", "self_attn", "scan", "mixers",
          "head", "postprocess", "total"]
CHECKPOINT = REPO / "models" / "scanssc_lite_synth.pt"


def load_frame(seq: Path, index: int):
    calib = read_kitti_calib(seq / "calib.txt")
    K, T = kitti_camera(calib, "P2")
    left = load_rgb(seq / "image_2" / f"{index:06d}.png")
    right = load_rgb(seq / "image_3" / f"{index:06d}.png")
    fx, base = float(calib["P2"][0, 0]), stereo_baseline(calib["P2"], calib["P3"])
    return left, right, K, T, calib["P2"][:, 3].copy(), fx, base


def synthetic_frame():
    """No data at hand (e.g. a bare GPU machine): a random image and a synthetic depth map, SGBM not run."""
    image = np.random.default_rng(0).integers(0, 256, (*KITTI_IMAGE_HW, 3), dtype=np.uint8)
    return image, synthetic_depth(KITTI_K, KITTI_IMAGE_HW), KITTI_K, KITTI_T_CAM_GRID, KITTI_P_SHIFT, 0.0, 0.0


def one_call(pred: Predictor, frame, mode: str):
    left, right, K, T, shift, fx, base = frame
    t0, c0 = time.perf_counter(), time.process_time()
    depth = right if right.ndim == 2 else stereo_depth(left, right, fx, base)
    sgbm = ((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3)
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "reference":
        with fastpath.reference_ops():
            out = pred.predict(left, K, T, depth, shift)
    else:
        out = pred.predict(left, K, T, depth, shift)
    t = dict(out.timings)
    t["process_cpu"] = (time.process_time() - c0) * 1e3
    t["predict_wall"] = (time.perf_counter() - t0) * 1e3
    t["sgbm"], t["sgbm_cpu"] = sgbm
    t["with_sgbm"] = t["predict_wall"] + sgbm[0]
    return t, out


def compiled_predictor(pred: Predictor) -> Predictor:
    """The same predictor with its model under torch.compile (inductor). The compiled graph holds the standard
    ops: the fast paths step aside while torch.compile traces."""
    other = copy.copy(pred)
    other.model = torch.compile(pred.model, dynamic=False)
    return other


def run(pred: Predictor, frames: List, modes: List[str], iters: int, warmup: int) -> Dict:
    runs: Dict[str, List[Dict[str, float]]] = {m: [] for m in modes}
    preds = {m: compiled_predictor(pred) if m == "compiled" else pred for m in modes}
    first_call_ms: Dict[str, float] = {}
    agree = []
    for f_i, frame in enumerate(frames):
        for it in range(warmup + iters):
            outs = {}
            for mode in (modes if it % 2 == 0 else modes[::-1]):  # alternate who goes first
                t, outs[mode] = one_call(preds[mode], frame, mode)
                first_call_ms.setdefault(mode, t["predict_wall"])  # compiled: includes the compilation
                if it >= warmup:
                    runs[mode].append(t)
            if len(modes) > 1 and it == warmup + iters - 1:
                a, b = outs[modes[0]], outs[modes[1]]
                agree.append({"frame": f_i, "labels_differ": int((a.labels != b.labels).sum()),
                              "confidence_max_diff": int(np.abs(a.confidence.astype(int) - b.confidence).max())})
    extra = ["process_cpu", "predict_wall", "sgbm", "sgbm_cpu", "with_sgbm"]
    keys = [k for k in STAGES + extra if k in runs[modes[0]][0]]
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in keys} for m in modes}
    out = {"median_ms": med, "calls": {m: len(runs[m]) for m in modes}, "agreement": agree,
           "first_call_ms": first_call_ms}
    if "fast" in med and "reference" in med:
        out["speedup_reference_over_fast"] = {k: med["reference"][k] / max(med["fast"][k], 1e-9) for k in keys}
    return out


def print_table(res: Dict) -> None:
    med, modes = res["median_ms"], list(res["median_ms"])
    print(f"{'stage (ms, median)':<20}" + "".join(f"{m:>12}" for m in modes) +
          ("   ref/fast" if "speedup_reference_over_fast" in res else ""))
    for k in med[modes[0]]:
        row = f"{k:<20}" + "".join(f"{med[m][k]:>12.1f}" for m in modes)
        if "speedup_reference_over_fast" in res:
            row += f"{res['speedup_reference_over_fast'][k]:>10.2f}x"
        print(row)
    for a in res["agreement"]:
        print(f"frame #{a['frame']}: labels differing {a['labels_differ']}, confidence max diff "
              f"{a['confidence_max_diff']}")
    if "compiled" in res.get("first_call_ms", {}):
        print(f"first compiled call (compilation included): {res['first_call_ms']['compiled'] / 1e3:.1f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="lite", help="lite (bundled checkpoint) or paper (random weights)")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--frames", type=int, nargs="+", default=[0])
    ap.add_argument("--synthetic", action="store_true", help="a synthetic frame instead of the real sample")
    ap.add_argument("--modes", default="fast,reference",
                    help="comma list of fast, reference and compiled (torch.compile of the model; its first call "
                         "compiles: several minutes on CPU)")
    ap.add_argument("--threads", default="2", help="comma list of torch intra-op thread counts")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    seq = args.data / "semantickitti-mini" / "sequences" / "08"
    frames = [synthetic_frame()] if args.synthetic else [load_frame(seq, i) for i in args.frames]
    rss0 = peak_rss_mb()
    if args.checkpoint or args.variant == "lite":
        pred = Predictor(args.checkpoint or CHECKPOINT, device=args.device, precision=args.precision)
    else:
        torch.manual_seed(0)
        pred = Predictor.from_config(variant(args.variant), device=args.device, precision=args.precision)
    results = []
    for n in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(n)
        probe = args.device == "cpu"
        gemm_before = gemm_gflops() if probe else None
        res = run(pred, frames, args.modes.split(","), args.iters, args.warmup)
        res["sgemm_gflops_before_after"] = [gemm_before, gemm_gflops()] if probe else None
        res.update({"variant": pred.config.variant, "threads": n, "device": args.device,
                    "input": "synthetic" if args.synthetic else "semantickitti-mini 08",
                    "precision": args.precision, "frames": args.frames, "iters": args.iters,
                    "loadavg_1min_after": os.getloadavg()[0], "peak_rss_mb": peak_rss_mb(),
                    "rss_before_model_mb": rss0, "malloc": pred.malloc_tuning,
                    "malloc_mode": os.environ.get("SCANSSC_MALLOC_TUNING", "1")})
        print(f"--- {res['variant']} {args.device} {args.precision}, {n} thread(s), load average "
              f"{res['loadavg_1min_after']:.1f}, malloc: {res['malloc']}, peak RSS {res['peak_rss_mb']:.0f} MB")
        if res["sgemm_gflops_before_after"]:
            print("this machine's best 2048^3 sgemm before / after: {:.0f} / {:.0f} GFLOP/s (its speed at the time)"
                  .format(*res["sgemm_gflops_before_after"]))
        print_table(res)
        results.append(res)
    path = args.out or REPO / "bench" / "results" / f"predictor_{args.device.split(':')[0]}.json"
    old = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    same = lambda r, n: all(r.get(k) == n[k] for k in ("variant", "threads", "device", "precision")) and \
        r.get("malloc_mode", "1") == n["malloc_mode"]  # noqa: E731
    keep = [r for r in old.get("runs", []) if not any(same(r, n) for n in results)]
    doc = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "cpu_count": os.cpu_count(), "runs": keep + results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
