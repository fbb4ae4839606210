"""scanssc-import: the authors' released ScanSSC weights -> a scanssc_ros checkpoint.

    scanssc-import ScanSSC_SemanticKitti.ckpt models/scanssc_paper_official.pt

The result is an ordinary checkpoint (config + weights) that ``checkpoint.load``, the Predictor, the node and
every scanssc-* command load from its path. It keeps the released tensors in fp32, bit for bit (``scanssc-export``
can halve them later), and records the official input convention, so the predictor and node feed the network the
camera vector it was trained with. The two initialisation files of the release (``pretrain_geodepth.pth``, the
mmcls EfficientNet-B7) are not whole models: give them to ``scanssc-train --init FILE`` instead.

The file is read with ``torch.load(weights_only=True)``; Lightning checkpoints that also pickle training objects
are read with a restricted unpickler that never imports or runs code (``scanssc_ros/safe_load.py``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from scanssc_ros.cli.common import run_main
from scanssc_ros.official_weights import import_official


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scanssc-import", description=__doc__.splitlines()[0],
                                epilog="Writes OUTPUT atomically; exit status 2 with a one-line error for files "
                                       "that are not the official ScanSSC checkpoint.")
    p.add_argument("source", type=Path, help="official ScanSSC_SemanticKitti.ckpt (PyTorch Lightning)")
    p.add_argument("output", type=Path, help="scanssc_ros checkpoint to write (.pt)")
    args = p.parse_args(argv)

    def body() -> int:
        t0 = time.perf_counter()
        report = import_official(args.source, args.output)
        for line in report.lines():
            print(f"scanssc-import: {line}")
        size = args.output.stat().st_size / 1e6
        print(f"scanssc-import: wrote {args.output} ({size:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        return 0

    return run_main("scanssc-import", body)


if __name__ == "__main__":
    sys.exit(main())
