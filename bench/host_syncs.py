"""Host synchronisations per forward, by call site: the CUDA branches of the model run on this machine's CPU
(``scanssc_ros.model.host_sync``), and the CPU fast paths for comparison (where waiting costs nothing).

    python bench/host_syncs.py                     # tiny and lite
    python bench/host_syncs.py --variants paper    # ~3 minutes on 2 cores (the CUDA branches' reference ops)

Random weights, ``example_inputs``; the second of two forwards is counted (per-camera state built by the first).
Results go to bench/results/host_syncs.json (entries of other variants are kept).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scanssc_ros.config import variant  # noqa: E402
from scanssc_ros.model.examples import example_inputs  # noqa: E402
from scanssc_ros.model.host_sync import cuda_paths, forward_syncs  # noqa: E402
from scanssc_ros.model.scanssc import ScanSSC  # noqa: E402


def count(name: str, paths) -> dict:
    torch.manual_seed(0)
    cfg = variant(name)
    with paths():
        probe = forward_syncs(ScanSSC(cfg).eval(), example_inputs(cfg))
    return {"total": probe.total, "sites": {f"{op} {where}": n for (op, where), n in sorted(probe.syncs.items())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["tiny", "lite"])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "host_syncs.json")
    args = ap.parse_args(argv)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.variants:
        t0 = time.perf_counter()
        res = {"cuda branches": count(name, cuda_paths), "cpu fast paths": count(name, contextlib.nullcontext)}
        old[name] = dict(res, torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M"))
        for kind, r in res.items():
            print(f"{name}, {kind}: {r['total']} host synchronisation(s) per forward")
            for site, n in r["sites"].items():
                print(f"  {n:3d}  {site}")
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(old, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
