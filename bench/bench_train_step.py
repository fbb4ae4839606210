"""Time per training step and peak memory: forward, every loss term, backward, AdamW step (random weights,
synthetic KITTI-like inputs and a random target). Meant for GPUs; on CPU use the tiny variant.

    python bench/bench_train_step.py --variant lite,paper --device cuda --precision bf16 --steps 6
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_model import peak_rss_mb  # noqa: E402
from scanssc_ros.config import variant  # noqa: E402
from scanssc_ros.losses import ssc_losses  # noqa: E402
from scanssc_ros.model.examples import example_inputs  # noqa: E402
from scanssc_ros.model.scanssc import ScanSSC  # noqa: E402
from scanssc_ros.predictor import resolve_device  # noqa: E402
from scanssc_ros.training.amp import autocast, grad_scaler  # noqa: E402


def run_one(name: str, device: torch.device, precision: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    cfg = variant(name)
    model = ScanSSC(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = example_inputs(cfg, 1, stereo=True, device=device)
    target = torch.randint(0, cfg.num_classes, (1, *cfg.grid_dims), device=device)
    target[:, :, :, -4:] = 255  # some ignored voxels, as in real targets
    scaler = grad_scaler(device, precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast(device, precision):
            out = model(inputs)
        loss = ssc_losses(out.logits.float(), target)["total"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    res = {"variant": name, "device": str(device), "precision": precision, "steps": steps,
           "median_step_ms": statistics.median(times), "all_step_ms": times, "loss": loss.item()}
    if device.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        res["peak_rss_mb"] = peak_rss_mb()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    results = [run_one(v, device, p, args.steps, args.warmup)
               for v in args.variant.split(",") for p in args.precision.split(",")]
    for r in results:
        mem = r.get("peak_cuda_mb", r.get("peak_rss_mb"))
        print(f"train step {r['variant']:<6}{r['precision']:<6}{r['median_step_ms']:>10.1f} ms{mem:>10.0f} MB peak")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
