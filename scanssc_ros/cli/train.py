"""scanssc-train: train ScanSSC on SemanticKITTI or SSCBench-KITTI-360, on one device or through torchrun.

    scanssc-train --data-root /data/semantickitti --variant lite --out runs/lite
    torchrun --nproc_per_node 4 -m scanssc_ros.cli.train --data-root ... --variant paper --out runs/paper
    scanssc-train --data-root ... --resume runs/lite/last.pt --out runs/lite

Defaults follow the paper recipe (spec section 6); the loop itself is ``scanssc_ros.training.trainer``.
Outputs in --out: ``last.pt``, ``best.pt`` (best val mIoU), optional ``step_NNNNNNN.pt``, ``train_log.jsonl``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

from scanssc_ros.cli.common import add_data_args, data_options, int_list, load_mapping, run_main
from scanssc_ros.config import VARIANTS
from scanssc_ros.training.amp import PRECISIONS
from scanssc_ros.training.class_weights import CHOICES as WEIGHT_CHOICES
from scanssc_ros.training.data import parse_frames
from scanssc_ros.training.trainer import TrainOptions, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanssc-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(p)
    g = p.add_argument_group("frames")
    g.add_argument("--split", default="train", help="training split")
    g.add_argument("--frames", help="training frames instead of --split: SEQ/FRAME,... or a file of them")
    g.add_argument("--val-split", default="val", help="validation split ('none' to skip validation)")
    g.add_argument("--val-frames", help="validation frames instead of --val-split")
    g = p.add_argument_group("model")
    g.add_argument("--variant", choices=VARIANTS, default="paper", help="model size preset")
    g.add_argument("--config", help="JSON/YAML mapping of ModelConfig fields overriding the variant "
                                    "(may set 'variant' itself)")
    g.add_argument("--init", help="start from the weights of this checkpoint (fresh optimizer and counters)")
    g.add_argument("--resume", help="continue a run from its checkpoint (model, optimizer, scheduler, step, "
                                    "epoch, RNG, best metric); the model config comes from the checkpoint")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, help="stop after this many epochs (whichever of --epochs/--max-steps "
                                              "comes first; neither: the official step count)")
    g.add_argument("--max-steps", type=int, help="optimizer steps in total (official: 25000, KITTI-360 54000)")
    g.add_argument("--batch-size", type=int, default=1, help="samples per process and micro-batch")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--milestones", help="LR milestones in steps, comma-separated (default: 0.8 x total steps, "
                                        "the official 20k of 25k)")
    g.add_argument("--gamma", type=float, default=0.1, help="LR factor at each milestone")
    g.add_argument("--clip-grad-norm", type=float, default=0.0, help="0 = no clipping (official)")
    g.add_argument("--class-weights", default="paper",
                   help=f"CE weights 1/ln(f+1e-3): {'|'.join(WEIGHT_CHOICES)} (paper = config frequencies, "
                        "targets = counted on the training targets), a JSON/YAML file or a comma list")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--ckpt-every", type=int, default=1000, help="write last.pt every N steps (0: epoch ends only)")
    g.add_argument("--keep-checkpoints", action="store_true", help="also keep step_NNNNNNN.pt copies")
    g.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (0: never)")
    g.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="autocast precision (fp16 needs CUDA and uses a gradient scaler)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: cuda = LOCAL_RANK)")
    g.add_argument("--no-sync-bn", action="store_true", help="keep plain BatchNorm under multi-GPU DDP")
    g.add_argument("--seed", type=int, default=7240)
    g.add_argument("--workers", type=int, default=4, help="DataLoader worker processes per training process")
    g.add_argument("--threads", type=int, help="torch CPU threads per process")
    g.add_argument("--no-augment", action="store_true", help="no colour jitter")
    g.add_argument("--log-every", type=int, default=10, help="JSONL train record every N steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    frames, val_frames = parse_frames(args.frames), parse_frames(args.val_frames)
    return TrainOptions(
        data=data_options(args), out_dir=args.out, split=args.split, frames=frames,
        val_split=None if args.val_split == "none" else args.val_split, val_frames=val_frames,
        variant=args.variant, model_overrides=load_mapping(args.config) if args.config else {},
        resume=args.resume, init=args.init, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay,
        milestones=int_list(args.milestones), gamma=args.gamma, clip_grad_norm=args.clip_grad_norm,
        class_weights=args.class_weights, ckpt_every=args.ckpt_every, keep_checkpoints=args.keep_checkpoints,
        eval_every=args.eval_every, precision=args.precision, device=args.device, seed=args.seed,
        workers=args.workers, augment=not args.no_augment, log_every=args.log_every,
        progress=not args.no_progress, sync_bn=not args.no_sync_bn)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def body() -> int:
        result = train(options_from_args(args))
        s = result.state
        best = f", best val mIoU {100 * s.best_miou:.2f} at step {s.best_step}" if s.best_step >= 0 else ""
        if result.last is not None:
            print(f"scanssc-train: done at step {s.step} (epoch {s.epoch}){best}; checkpoints in {result.out_dir}",
                  file=sys.stderr)
        return 0

    return run_main("scanssc-train", body)


if __name__ == "__main__":
    sys.exit(main())
