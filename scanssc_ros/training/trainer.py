"""The ScanSSC training loop (ROS-free; ``scanssc-train`` is a thin argument parser around ``train``).

Recipe (spec section 6): AdamW (lr 3e-4, weight decay 0.01, one parameter group), MultiStepLR stepped every
optimizer step with gamma 0.1 at one milestone (25k steps with the milestone at 20k for SemanticKITTI, 54k / 44k
for KITTI-360), batch 1 per process, loss = CE_w + sem_scal + geo_scal + Scan Loss + 1e-4 depth KL
(``losses.ssc_losses``), validation at the end of every epoch keeping ``best.pt`` (val mIoU) and ``last.pt``.
A shorter run scales the milestone with its length (``milestone = total * 20k / 25k``) unless given.

Reproducibility: the model is initialised from ``seed``; the sample order is torch's DistributedSampler order
(seed + epoch); colour jitter is seeded per (seed, epoch, sample); and the torch RNG (dropout, drop-path) is
reseeded before every micro-batch from (seed, step, global micro-batch index). A run therefore gives the same
losses whatever its number of DataLoader workers, and a single process with ``grad_accum = N`` matches N
processes with ``grad_accum = 1`` (same global batch) up to float summation order. A resumed run continues
bit-for-bit: the sampler skips the samples the interrupted epoch already used.

Grids: the loss runs on the model's grid; targets are downsampled to it with ``data.label_scale``
(the SSC block rule). Validation scores on the dataset grid (``training.evaluation``).
"""
from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from scanssc_ros import checkpoint
from scanssc_ros.config import ModelConfig, variant
from scanssc_ros.data.label_scale import downsample_labels, grid_factor
from scanssc_ros.data.sample import SscBatch, collate
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID
from scanssc_ros.labels import LabelSet
from scanssc_ros.losses import LossWeights, ssc_losses
from scanssc_ros.model.scanssc import ModelOutputs, ScanSSC
from scanssc_ros.training.amp import amp_dtype, autocast, grad_scaler
from scanssc_ros.training.class_weights import resolve_class_weights
from scanssc_ros.training.data import (
    OFFICIAL_SCHEDULE,
    DataOptions,
    SeededAugmentation,
    build_dataset,
    input_size_for,
    label_set_for,
)
from scanssc_ros.training.distributed import (
    DistContext,
    ResumableDistributedSampler,
    all_gather_object,
    all_reduce_sum,
    barrier,
    init_distributed,
    shard_indices,
    shutdown,
)
from scanssc_ros.training.evaluation import evaluate, metrics_report, model_inputs
from scanssc_ros.training.run_log import RunLog
from scanssc_ros.training.state import (
    TrainState,
    capture_rng,
    load_initial_weights,
    read_training_state,
    restore_training,
    save_training_checkpoint,
    seed_everything,
)

LOG_NAME = "train_log.jsonl"


@dataclass
class TrainOptions:
    data: DataOptions
    out_dir: str
    split: Optional[str] = "train"
    frames: Optional[List[Tuple[str, str]]] = None
    val_split: Optional[str] = "val"
    val_frames: Optional[List[Tuple[str, str]]] = None
    variant: str = "paper"
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (JSON/YAML --config)
    resume: Optional[str] = None
    init: Optional[str] = None  # start from these model weights (not a resume: fresh optimizer and counters)
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    batch_size: int = 1  # per process
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    milestones: Optional[List[int]] = None
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # 0 = off (the official recipe does not clip)
    class_weights: str = "paper"
    ckpt_every: int = 1000  # steps; 0 = only at epoch ends and at the end
    keep_checkpoints: bool = False  # also keep step_NNNNNNN.pt copies
    eval_every: int = 1  # epochs; 0 = never
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 7240
    workers: int = 4
    augment: bool = True
    log_every: int = 10
    progress: bool = True
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (CUDA only; plain BN on CPU)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    state: TrainState
    out_dir: Path
    last: Optional[Path]
    best: Optional[Path]


def build_config(name: str, overrides: Dict[str, Any], label_set: LabelSet, kind: str) -> ModelConfig:
    """The variant (``overrides['variant']`` wins over ``name``) with field overrides; the class count follows the
    dataset and the paper/lite input becomes the dataset's official input size unless set explicitly."""
    overrides = dict(overrides)
    cfg = variant(overrides.pop("variant", name))
    if "extra" in overrides and not isinstance(overrides["extra"], dict):
        raise ValueError("config field 'extra' must be a mapping")
    defaults: Dict[str, Any] = {"num_classes": label_set.num_classes}
    if cfg.input_size == (384, 1280):
        defaults["input_size"] = input_size_for(kind)
    merged = {**cfg.to_dict(), **defaults, **overrides}
    cfg = ModelConfig.from_dict(merged)
    if cfg.num_classes != label_set.num_classes:
        raise ValueError(f"model has {cfg.num_classes} classes but {label_set.name} has {label_set.num_classes}")
    return cfg


def step_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 6_364_136_223 + step * 1_442_695_041 + micro * 97 + 12_345) % (2 ** 62)


def compute_losses(out: ModelOutputs, batch: SscBatch, factor: int, num_classes: int,
                   class_weights: Optional[torch.Tensor], weights: LossWeights,
                   dbound: Tuple[float, float, float]) -> Dict[str, torch.Tensor]:
    """Every loss term in fp32 on the model grid (targets downsampled by ``factor``)."""
    if batch.target is None:
        raise ValueError(f"training frame {batch.sequence[0]}/{batch.frame_id[0]} has no ground truth")
    target = downsample_labels(batch.target, factor, num_classes)
    depth = out.depth.float() if batch.lidar_depth is not None else None
    return ssc_losses(out.logits.float(), target, class_weights, weights, depth, batch.lidar_depth, dbound)


def _info(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        tqdm.write(msg, file=sys.stderr)


class Trainer:
    """One process's share of a (possibly distributed) run. ``run`` trains to the end and returns the result."""

    def __init__(self, opts: TrainOptions, ctx: DistContext) -> None:
        self.opts, self.ctx = opts, ctx
        opts.data.validate()
        amp_dtype(opts.precision, ctx.device)  # fail early on fp16 without CUDA
        for name in ("batch_size", "grad_accum"):
            if getattr(opts, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        self.label_set = label_set_for(opts.data.kind)
        self.out_dir = Path(opts.out_dir)
        payload = checkpoint.read(opts.resume) if opts.resume else None
        self._build_model(payload)
        n_train = self._build_data()
        self._build_schedule(payload)
        if ctx.distributed:
            # mono mode leaves the stereo branch without gradients
            self.ddp: nn.Module = DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=opts.data.depth_mode == "mono")
        else:
            self.ddp = self.model
        self.log = RunLog(self.out_dir / LOG_NAME if ctx.is_main else None)
        self.last_saved_step = self.state.step if payload is not None else -1
        self.best_path: Optional[Path] = self.out_dir / "best.pt" if (self.out_dir / "best.pt").is_file() else None
        self.last_path: Optional[Path] = None
        self._info_start(n_train, payload is not None)

    def _build_model(self, payload: Optional[Dict[str, Any]]) -> None:
        """Config (from the checkpoint when resuming), seeded initialisation, weights, device, SyncBN."""
        opts, ctx = self.opts, self.ctx
        if payload is not None:
            self.config = ModelConfig.from_dict(payload["config"])
            if self.config.num_classes != self.label_set.num_classes:
                raise ValueError(f"{opts.resume} has {self.config.num_classes} classes, {opts.data.kind} has "
                                 f"{self.label_set.num_classes}")
        else:
            self.config = build_config(opts.variant, opts.model_overrides, self.label_set, opts.data.kind)
        self.factor = grid_factor(SEMANTIC_KITTI_GRID, self.config.grid)
        seed_everything(opts.seed)
        model = ScanSSC(self.config)
        if payload is not None:
            checkpoint.load_state_dict_strict(model, payload["state_dict"], source=opts.resume)
        elif opts.init:
            for line in load_initial_weights(opts.init, model):
                _info(ctx, line)
        model.to(ctx.device)
        if ctx.distributed and ctx.device.type == "cuda" and opts.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model

    def _build_data(self) -> int:
        """Training loader over this rank's shard, validation loader (or None); returns the training frames."""
        opts, ctx, data = self.opts, self.ctx, self.opts.data
        train_ds = build_dataset(data, opts.split if opts.frames is None else None, opts.frames,
                                 training=opts.augment, out_hw=self.config.input_size)
        self.train_ds = train_ds
        self.train_set = SeededAugmentation(train_ds, opts.seed)
        self.sampler = ResumableDistributedSampler(self.train_set, ctx.world_size, ctx.rank, shuffle=True,
                                                   seed=opts.seed)
        self.loader = DataLoader(self.train_set, batch_size=opts.batch_size, sampler=self.sampler,
                                 num_workers=opts.workers, collate_fn=collate, drop_last=True,
                                 pin_memory=ctx.device.type == "cuda")
        self.steps_per_epoch = self.sampler.num_samples // opts.batch_size // opts.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(train_ds)} training frames are fewer than one global batch "
                             f"({ctx.world_size} processes x batch {opts.batch_size} x accumulation {opts.grad_accum})")
        self.val_loader = None
        if opts.eval_every > 0 and (opts.val_frames is not None or opts.val_split not in (None, "none")):
            val_ds = build_dataset(data, opts.val_split if opts.val_frames is None else None, opts.val_frames,
                                   training=False, out_hw=self.config.input_size)
            self.val_loader = DataLoader(Subset(val_ds, shard_indices(len(val_ds), ctx)), batch_size=1,
                                         num_workers=opts.workers, collate_fn=collate)
        return len(train_ds)

    def _build_schedule(self, payload: Optional[Dict[str, Any]]) -> None:
        """Step budget, AdamW, MultiStepLR, gradient scaler, class weights; restored state when resuming."""
        opts, ctx = self.opts, self.ctx
        official_steps, official_milestone = OFFICIAL_SCHEDULE[opts.data.kind]
        if opts.max_steps is None and opts.epochs is None:
            self.total_steps = official_steps
        else:
            by_epochs = None if opts.epochs is None else opts.epochs * self.steps_per_epoch
            self.total_steps = min(s for s in (opts.max_steps, by_epochs) if s is not None)
        if self.total_steps < 1:
            raise ValueError("nothing to train: max_steps / epochs give 0 steps")
        milestones = opts.milestones
        if milestones is None:
            milestones = [max(1, round(self.total_steps * official_milestone / official_steps))]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones,
                                                              gamma=opts.gamma)
        self.scaler = grad_scaler(ctx.device, opts.precision)
        self.state = TrainState()
        if payload is not None:
            train = read_training_state(payload, opts.resume)
            self.state = restore_training(train, self.optimizer, self.scheduler, self.scaler, ctx.rank,
                                          ctx.world_size)
            if opts.milestones is not None:  # an explicit schedule wins over the checkpoint's
                self.scheduler.milestones = type(self.scheduler.milestones)(opts.milestones)
        weights = resolve_class_weights(opts.class_weights, self.label_set, self.train_ds, self.factor, ctx)
        self.class_weights = None if weights is None else torch.as_tensor(weights, device=ctx.device)
        self.loss_weights = LossWeights() if opts.data.lidar_depth else LossWeights(depth=0.0)

    # ------------------------------------------------------------------------------------------ helpers
    def _info_start(self, n_train: int, resumed: bool) -> None:
        o, ctx = self.opts, self.ctx
        global_batch = ctx.world_size * o.batch_size * o.grad_accum
        msg = (f"scanssc-train: {self.config.variant} model ({self.config.grid_dims} grid, target factor "
               f"{self.factor}) on {o.data.kind} ({n_train} frames, {o.data.depth_mode}), {ctx.world_size} "
               f"process(es) on {ctx.device}, global batch {global_batch}, {self.steps_per_epoch} steps/epoch, "
               f"{self.total_steps} steps, LR milestones {sorted(self.scheduler.milestones)}")
        if resumed:
            msg += f"; resumed at step {self.state.step} (epoch {self.state.epoch}) from {o.resume}"
        _info(ctx, msg)
        self.log.write("resume" if resumed else "start", step=self.state.step, world_size=ctx.world_size,
                       global_batch=global_batch, steps_per_epoch=self.steps_per_epoch,
                       total_steps=self.total_steps, milestones=sorted(self.scheduler.milestones),
                       config=self.config.to_dict(),
                       class_weights=None if self.class_weights is None else self.class_weights.tolist(),
                       options=self.opts.to_dict())

    def _checkpoint_info(self) -> Dict[str, Any]:
        o = self.opts
        return {"dataset": o.data.kind, "label_set": self.label_set.name,
                "class_names": list(self.label_set.classes), "depth_mode": o.data.depth_mode,
                "target_factor": self.factor, "world_size": self.ctx.world_size,
                "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
                "options": self.opts.to_dict()}

    def save(self, name: str) -> Optional[Path]:
        """Collective (every rank gathers its RNG state to rank 0); only rank 0 writes."""
        rng = all_gather_object(capture_rng(), self.ctx)
        path = None
        if self.ctx.is_main:
            path = save_training_checkpoint(self.out_dir / name, self.model, self.config, self.optimizer,
                                            self.scheduler, self.scaler, self.state, rng, self._checkpoint_info())
        barrier(self.ctx)
        return path

    def save_last(self) -> None:
        self.last_path = self.save("last.pt")
        self.last_saved_step = self.state.step
        every = self.opts.ckpt_every
        if self.opts.keep_checkpoints and self.ctx.is_main and every > 0 and self.state.step % every == 0:
            shutil.copyfile(self.out_dir / "last.pt", self.out_dir / f"step_{self.state.step:07d}.pt")

    def validate(self) -> Optional[Dict[str, Any]]:
        if self.val_loader is None:
            return None
        metrics = evaluate(self.model, self.val_loader, self.ctx, self.config.num_classes, self.factor,
                           self.opts.data.depth_mode, self.opts.precision,
                           progress=self.opts.progress and self.ctx.is_main, desc=f"val e{self.state.epoch}")
        self.model.train()
        report = metrics_report(metrics, self.label_set.classes)
        report.pop("distance", None)
        _info(self.ctx, f"epoch {self.state.epoch} step {self.state.step}: val ({report['frames']} frames) "
                        + metrics.class_table(self.label_set.classes).split("\n", 2)[0]
                        + f"  mIoU {100 * report['miou']:.2f}")
        return report

    def end_epoch_if_done(self) -> None:
        done = self.state.step // self.steps_per_epoch
        if done <= self.state.epoch:
            return
        self.state.epoch = done
        if self.val_loader is not None and done % self.opts.eval_every == 0:
            report = self.validate()
            self.log.write("val", step=self.state.step, epoch=done, **report)
            if report["miou"] is not None and report["miou"] > self.state.best_miou:
                self.state.best_miou, self.state.best_step = report["miou"], self.state.step
                self.best_path = self.save("best.pt")
        self.save_last()

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        o, ctx, state = self.opts, self.ctx, self.state
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        barrier(ctx)
        self.ddp.train()
        pbar = tqdm(total=self.total_steps, initial=state.step, desc="train", dynamic_ncols=True,
                    disable=not (o.progress and ctx.is_main))
        micro_size = o.batch_size * o.grad_accum
        try:
            while True:
                self.end_epoch_if_done()
                if state.step >= self.total_steps:
                    break
                epoch = state.step // self.steps_per_epoch
                self.sampler.set_epoch(epoch)
                self.train_set.set_epoch(epoch)
                self.sampler.set_skip((state.step - epoch * self.steps_per_epoch) * micro_size)
                self._train_epoch(epoch, pbar)
        finally:
            pbar.close()
        if self.last_saved_step != state.step:
            self.save_last()
        self.log.write("end", step=state.step, epoch=state.epoch, best_miou=state.best_miou,
                       best_step=state.best_step)
        self.log.close()
        return TrainResult(state=state, out_dir=self.out_dir, last=self.last_path, best=self.best_path)

    def _train_epoch(self, epoch: int, pbar: tqdm) -> None:
        o, ctx, state = self.opts, self.ctx, self.state
        micro, sums = 0, None
        keys: List[str] = []
        for batch in self.loader:
            if micro == 0:
                self.optimizer.zero_grad(set_to_none=True)
                sums = None
            torch.manual_seed(step_seed(o.seed, state.step, micro * ctx.world_size + ctx.rank))
            batch = batch.to(ctx.device)
            last_micro = micro == o.grad_accum - 1
            sync = contextlib.nullcontext() if (last_micro or not ctx.distributed) else self.ddp.no_sync()
            with sync:
                with autocast(ctx.device, o.precision):
                    out = self.ddp(model_inputs(batch, o.data.depth_mode))
                terms = compute_losses(out, batch, self.factor, self.config.num_classes, self.class_weights,
                                       self.loss_weights, self.config.dbound)
                self.scaler.scale(terms["total"] / o.grad_accum).backward()
            keys = list(terms)
            vec = torch.stack([terms[k].detach().float() for k in keys]) / o.grad_accum
            sums = vec if sums is None else sums + vec
            micro += 1
            if not last_micro:
                continue
            micro = 0
            mean = all_reduce_sum(sums, ctx) / ctx.world_size
            finite = bool(torch.isfinite(mean).all())
            if o.clip_grad_norm > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_grad_norm)
            lr = self.scheduler.get_last_lr()[0]
            if finite or self.scaler.is_enabled():
                self.scaler.step(self.optimizer)  # the scaler itself skips steps with inf/NaN gradients
                self.scaler.update()
            else:
                _info(ctx, f"step {state.step + 1}: non-finite loss, optimizer step skipped")
            self.scheduler.step()
            state.step += 1
            losses = {k: float(v) for k, v in zip(keys, mean.cpu())}
            if o.log_every > 0 and (state.step % o.log_every == 0 or state.step == 1
                                    or state.step == self.total_steps):
                self.log.write("train", step=state.step, epoch=epoch + 1, lr=lr, loss=losses["total"],
                               terms={k: v for k, v in losses.items() if k != "total"})
            pbar.update(1)
            pbar.set_postfix(loss=f"{losses['total']:.4f}", lr=f"{lr:.2e}", epoch=epoch + 1)
            if o.ckpt_every > 0 and state.step % o.ckpt_every == 0 and state.step % self.steps_per_epoch:
                self.save_last()  # an epoch end saves after its validation (end_epoch_if_done)
            if state.step >= self.total_steps:
                break


def train(opts: TrainOptions) -> TrainResult:
    """Train in this process: alone, or as one rank of a torchrun group (RANK / WORLD_SIZE in the environment)."""
    ctx = init_distributed(opts.device)
    try:
        return Trainer(opts, ctx).run()
    finally:
        shutdown(ctx)

