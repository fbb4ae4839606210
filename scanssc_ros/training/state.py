"""Training checkpoints: a normal model checkpoint (``checkpoint.save``: the Predictor, the node and the eval CLI
load it as is) whose ``extra`` also holds everything needed to resume.

``extra["train"]``: optimizer, LR scheduler and gradient-scaler states, the step / epoch counters, the best
validation mIoU so far, and the RNG states of every rank (torch CPU + CUDA, numpy, Python ``random``), gathered
to rank 0, which alone writes. ``extra`` also records the dataset kind, label set, depth mode and the options of
the run. Everything is stored as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from scanssc_ros import checkpoint
from scanssc_ros.config import ModelConfig


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    best_miou: float = -math.inf
    best_step: int = -1

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> TrainState:
        return cls(**{k: d[k] for k in ("step", "epoch", "best_miou", "best_step")})


def capture_rng() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def save_training_checkpoint(path: Path, model: nn.Module, config: ModelConfig, optimizer: torch.optim.Optimizer,
                             scheduler: Any, scaler: torch.amp.GradScaler, state: TrainState,
                             rng_states: List[Dict[str, Any]], info: Dict[str, Any]) -> Path:
    train = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "state": state.to_dict(), "rng": rng_states}
    return checkpoint.save(path, model, config, extra={**info, "train": train})


def read_training_state(payload: Dict[str, Any], path: str) -> Dict[str, Any]:
    train = payload.get("extra", {}).get("train")
    if not isinstance(train, dict):
        raise ValueError(f"{path} holds model weights only (no optimizer/scheduler state): cannot resume from it")
    return train


def restore_training(train: Dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler, rank: int, world_size: int) -> TrainState:
    """Load optimizer / scheduler / scaler states and this rank's RNG state (when the checkpoint was written by
    a run with the same number of processes; otherwise the RNGs keep their fresh seeds)."""
    optimizer.load_state_dict(train["optimizer"])
    scheduler.load_state_dict(train["scheduler"])
    if train.get("scaler"):
        scaler.load_state_dict(train["scaler"])
    rng = train.get("rng") or []
    if len(rng) == world_size:
        restore_rng(rng[rank])
    return TrainState.from_dict(train["state"])


def load_initial_weights(path: str, model: nn.Module) -> List[str]:
    """``--init``: a scanssc_ros checkpoint is loaded strictly (same variant, every key); any other file (the
    official release's ``ScanSSC_SemanticKitti.ckpt``, ``pretrain_geodepth.pth`` or the mmcls EfficientNet-B7) is
    loaded partially, by name and shape. Returns report lines saying what was loaded and what was left random."""
    from scanssc_ros.official_weights import init_state

    try:
        payload = checkpoint.read(path)
    except ValueError:
        payload = None
    if payload is not None:
        checkpoint.load_state_dict_strict(model, payload["state_dict"], source=path)
        return [f"init: all {len(payload['state_dict'])} tensors from {path}"]
    state, report = init_state(path, model)
    model.load_state_dict(state, strict=False)
    return [f"init from {path}: {line}" for line in report.lines()]
