"""scanssc-synth: write synthetic SemanticKITTI sequences (``data.synthetic``) for training and tests.

    scanssc-synth --out /data/synth --sequences 00,01 --frames 20 --seed 0 --size small

Same arguments, same bytes. The label config ``semantic-kitti.yaml`` is written next to ``sequences/``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from scanssc_ros.data.synthetic import SIZES, LidarSpec, write_sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanssc-synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to write (sequences/ goes inside)")
    p.add_argument("--sequences", default="00", help="comma-separated two-digit sequence ids (default 00)")
    p.add_argument("--frames", type=int, default=10, help="frames per sequence (default 10)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each scene's seed derives from it (default 0)")
    p.add_argument("--size", choices=sorted(SIZES), default="kitti",
                   help="image size: kitti = 1241x376, small = half (default kitti)")
    p.add_argument("--frames-per-scene", type=int, default=1,
                   help="consecutive frames driving through one scene (default 1: a new scene every frame)")
    p.add_argument("--step", type=float, default=0.8, help="ego travel per frame in m (default 0.8)")
    p.add_argument("--azimuths", type=int, default=LidarSpec.azimuths,
                   help=f"LiDAR columns per turn (default {LidarSpec.azimuths})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
    bad = [s for s in sequences if not s.isdigit()]
    if bad or not sequences or args.frames < 1 or args.frames_per_scene < 1:
        print(f"scanssc-synth: error: need numeric sequence ids and positive frame counts (got {args.sequences!r}, "
              f"--frames {args.frames}, --frames-per-scene {args.frames_per_scene})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    for seq in sequences:
        write_sequence(args.out, seq, args.frames, args.seed, SIZES[args.size], args.frames_per_scene, args.step,
                       LidarSpec(azimuths=args.azimuths), progress=not args.quiet)
    seconds = time.perf_counter() - start
    n = len(sequences) * args.frames
    print(f"wrote {n} frames ({', '.join(sequences)}) to {args.out} in {seconds:.1f} s ({seconds / n:.2f} s/frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
