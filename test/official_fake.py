"""A stand-in for the authors' ``ScanSSC_SemanticKitti.ckpt``, built from the shared state-dict manifest.

Every key, shape and dtype comes from ../shared/spec/official_checkpoint (the manifest of the official
checkpoint). Learned tensors are random; the frozen-geometry buffers hold the values the official modules compute
(written here with numpy from the official formulas, independently of ``scanssc_ros.official_weights``). The file
has the dict layout PyTorch Lightning 1.7 saves, including pickled objects that ``weights_only`` refuses.
"""
from __future__ import annotations

import collections
import os
import sys
import types
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

MANIFEST_NAME = "spec/official_checkpoint/scanssc_semantickitti_state_dict.tsv"
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def read_manifest(shared: Path) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    rows = []
    for line in (shared / MANIFEST_NAME).read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(v) for v in shape.split("x"))
        rows.append((key, dims, _DTYPES[dtype]))
    return rows


def official_geometry() -> Dict[str, torch.Tensor]:
    """The official frozen buffers for the SemanticKITTI config (384x1280 input, 128x128x16 at 0.4 m, 112 bins)."""
    H, W, fh, fw = 384, 1280, 48, 160
    ds = np.arange(2.0, 58.0, 0.5, dtype=np.float32)
    u, v = np.linspace(0, W - 1, fw, dtype=np.float32), np.linspace(0, H - 1, fh, dtype=np.float32)
    frustum = np.zeros((ds.size, fh, fw, 3), np.float32)
    frustum[..., 0], frustum[..., 1], frustum[..., 2] = u[None, None, :], v[None, :, None], ds[:, None, None]
    grid = np.zeros((1, 2, H, W), np.float32)
    grid[0, 0], grid[0, 1] = np.arange(W)[None, :], np.arange(H)[:, None]
    idx = np.indices((128, 128, 16)).reshape(3, -1).T
    coords = np.concatenate([idx, np.arange(idx.shape[0])[:, None]], axis=1).astype(np.int64)
    ref = ((idx + 0.5) / np.array([128, 128, 16])).astype(np.float32)
    t = torch.from_numpy
    return {
        "model.img_view_transformer.dx": torch.tensor([0.4, 0.4, 0.4]),
        "model.img_view_transformer.bx": torch.tensor([0.2, -25.4, -1.8]),
        "model.img_view_transformer.nx": torch.tensor([128.0, 128.0, 16.0]),
        "model.img_view_transformer.frustum": t(frustum),
        "model.proposal_layer.image_grid": t(grid),
        "model.VoxFormer_head.image_grid": t(grid.copy()),
        "model.VoxFormer_head.vox_coords": t(coords),
        "model.VoxFormer_head.ref_3d": t(ref),
    }


def official_state(shared: Path, seed: int = 0) -> collections.OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    geometry = official_geometry()
    state: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for key, shape, dtype in read_manifest(shared):
        if key in geometry:
            value = geometry[key]
            assert tuple(value.shape) == shape and value.dtype == dtype, (key, value.shape, shape)
        elif dtype == torch.int64:
            value = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=g) + 0.5
        else:
            value = torch.randn(shape, generator=g) * 0.02
        state[key] = value
    return state


class _Marker:
    """Pickles as a call of ``os.system``: a hostile file. Loading it with plain pickle would run the command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _config_dict_class():
    """A class pickled as ``mmcv.utils.config.ConfigDict`` (what the official hyper-parameters hold), a module
    that is not installed here: the loader must not need it."""
    mod_name = "mmcv.utils.config"
    cls = type("ConfigDict", (dict,), {"__module__": mod_name})
    return mod_name, cls


def write_lightning_checkpoint(path: Path, state: Dict[str, torch.Tensor], marker: Path) -> None:
    mod_name, cls = _config_dict_class()
    fake = types.ModuleType(mod_name)
    fake.ConfigDict = cls
    saved = {name: sys.modules.get(name) for name in ("mmcv", "mmcv.utils", mod_name)}
    for name in saved:
        sys.modules[name] = fake
    try:
        payload = {
            "epoch": 25, "global_step": 25000, "pytorch-lightning_version": "1.7.7",
            "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 25}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val/mIoU', 'mode': 'max'}": {
                "best_model_score": torch.tensor(17.4), "best_model_path": "best.ckpt", "hook": _Marker(marker)}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-5, "weight_decay": 0.01, "params": []}]}],
            "lr_schedulers": [{"milestones": {20000: 1}, "gamma": 0.1, "last_epoch": 25000}],
            "hparams_name": "config",
            "hyper_parameters": {"config": cls(model=cls(type="ScanSSC"), learning_rate=3e-4)},
        }
        torch.save(payload, path)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
