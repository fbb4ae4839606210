"""scanssc-export: a training checkpoint -> a small inference checkpoint (what ships in models/).

    scanssc-export runs/lite/best.pt models/scanssc_lite_synth.pt [--dtype fp16] [--note "..."]

Keeps the model config, the weights (floating-point tensors cast to ``--dtype``; integer buffers as they are) and
the provenance in ``extra`` (dataset, label set, options, last validation metrics); drops the optimizer, scheduler,
scaler and RNG states that only resuming needs. The result loads with ``checkpoint.load`` / the Predictor like any
checkpoint (weights are cast back to the model's dtype on load).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

from scanssc_ros.checkpoint import FORMAT, read

KEEP_EXTRA = ("dataset", "label_set", "class_names", "depth_mode", "target_factor", "options")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def slim(src: Path, dst: Path, dtype: torch.dtype = torch.float16, note: str = "") -> Path:
    payload = read(src)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    extra = {k: v for k, v in payload.get("extra", {}).items() if k in KEEP_EXTRA}
    train = payload.get("extra", {}).get("train")
    if isinstance(train, dict) and isinstance(train.get("state"), dict):
        extra["train_state"] = dict(train["state"])  # step, epoch, best mIoU and its step
    extra["exported_from"] = Path(src).name
    if note:
        extra["note"] = note
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save({"format": FORMAT, "config": payload["config"], "state_dict": state, "extra": extra}, tmp)
    tmp.replace(dst)
    return dst


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scanssc-export", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    try:
        out = slim(args.src, args.dst, DTYPES[args.dtype], args.note)
    except (FileNotFoundError, ValueError) as exc:
        print(f"scanssc-export: {exc}", file=sys.stderr)
        return 2
    print(f"scanssc-export: wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
