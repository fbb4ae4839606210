"""Latency per stage and peak memory of the ScanSSC model (random weights, synthetic KITTI-like inputs).

Examples:
    python bench/bench_model.py --variant lite --device cpu --threads 2 --iters 5
    python bench/bench_model.py --variant paper --device cpu --threads 2 --iters 1 --warmup 0
    python bench/bench_model.py --variant lite,paper --device cuda --precision fp16,bf16

``process_cpu`` is the CPU time of all threads of the process during the forward pass: on a machine shared with
other jobs it shows how much work was done when the wall clock is inflated by waiting for a core.

Peak memory: CUDA -> torch.cuda.max_memory_allocated; CPU -> the process's peak resident set (VmHWM from
/proc/self/status, which includes the Python interpreter and torch itself; the baseline before building the model
is reported too). Results go to bench/results/model_<device>.json (merged with earlier runs of other settings).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanssc_ros.config import variant  # noqa: E402
from scanssc_ros.model.examples import example_inputs  # noqa: E402
from scanssc_ros.model.precision import PRECISIONS, check_precision, inference_precision  # noqa: E402
from scanssc_ros.model.scanssc import ScanSSC, count_parameters  # noqa: E402
from scanssc_ros.predictor import resolve_device  # noqa: E402

STAGES = ["backbone_neck", "depth", "lift", "proposal", "cross_attn", "self_attn", "scan", "mixers", "head"]


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gemm_gflops(n: int = 2048, repeats: int = 7) -> float:
    """Best single-precision GFLOP/s of an n x n product on torch's current threads (CPU): the machine's speed at
    the moment, so runs in slow and fast phases of a shared VM can be told apart."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def run_one(name: str, device: torch.device, precision: str, iters: int, warmup: int, stereo: bool) -> Dict:
    try:
        check_precision(precision, device)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    rss0 = peak_rss_mb()
    torch.manual_seed(0)
    cfg = variant(name)
    model = ScanSSC(cfg).to(device).eval()
    params = count_parameters(model)
    inputs = example_inputs(cfg, 1, stereo=stereo, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs: List[Dict[str, float]] = []
    with torch.inference_mode(), inference_precision(device, precision):
        for i in range(warmup + iters):
            t: Dict[str, float] = {}
            t0, c0 = time.perf_counter(), time.process_time()
            model(inputs, timings=t)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t["total"] = (time.perf_counter() - t0) * 1000.0
            t["process_cpu"] = (time.process_time() - c0) * 1000.0
            if i >= warmup:
                runs.append(t)
    med = {k: statistics.median(r[k] for r in runs) for k in STAGES + ["total", "process_cpu"]}
    out = {"variant": name, "device": str(device), "precision": precision, "stereo": stereo, "iters": iters,
           "warmup": warmup, "threads": torch.get_num_threads(), "params": params, "median_ms": med,
           "all_total_ms": [r["total"] for r in runs], "input_size": list(cfg.input_size)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out["peak_rss_mb"] = peak_rss_mb()
        out["rss_before_model_mb"] = rss0
    return out


def print_table(results: List[Dict]) -> None:
    cols = [f"{r['variant']}/{r['precision']}{'' if r['stereo'] else '/mono'}" for r in results]
    print(f"{'stage (ms, median)':<20}" + "".join(f"{c:>18}" for c in cols))
    for s in STAGES + ["total", "process_cpu"]:
        print(f"{s:<20}" + "".join(f"{r['median_ms'][s]:>18.1f}" for r in results))
    mem = [r.get("peak_cuda_mb", r.get("peak_rss_mb", 0.0)) for r in results]
    print(f"{'peak memory (MB)':<20}" + "".join(f"{m:>18.0f}" for m in mem))
    print(f"{'params (M)':<20}" + "".join(f"{r['params']['total'] / 1e6:>18.2f}" for r in results))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="lite", help="comma list of paper,lite,tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="comma list of fp32,fp16,bf16")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--mono", action="store_true", help="no stereo depth input")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/model_<device>.json)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    results = []
    for name in args.variant.split(","):
        for prec in args.precision.split(","):
            if prec not in PRECISIONS:
                ap.error(f"unknown precision {prec!r}")
            results.append(run_one(name.strip(), device, prec.strip(), args.iters, args.warmup, not args.mono))
    print_table(results)
    path = Path(args.out) if args.out else Path(__file__).parent / "results" / f"model_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    keep = [r for r in old.get("runs", []) if not any(
        (r["variant"], r["precision"], r["stereo"], r.get("threads")) ==
        (n["variant"], n["precision"], n["stereo"], n["threads"]) for n in results)]
    doc = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "cpu_count": os.cpu_count(), "runs": keep + results}
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
