"""The authors' released ScanSSC weights -> this project's modules.

Three files come with the official release (GitHub release v1.0 of the ScanSSC repository):

- ``ScanSSC_SemanticKitti.ckpt``: a PyTorch Lightning checkpoint of the whole network. :func:`convert_official`
  turns it into our checkpoint (config + weights), strictly: every learned tensor lands in exactly one of ours with
  the same shape and dtype, bit for bit; the eight frozen-geometry tensors the official modules keep in their state
  dict are recomputed from our config, compared, and dropped; anything else is an error that names the keys.
- ``pretrain_geodepth.pth`` (image backbone, neck and depth net after depth + segmentation pre-training) and the
  mmcls ImageNet ``efficientnet-b7_3rdparty_8xb32-aa_in1k_*.pth``: training initialisations, loaded partially by
  :func:`init_state` (what matches by name and shape; the rest stays at its random initialisation).

Key names differ from ours only by the Lightning prefix ``model.``, mmcv's ``ConvModule`` wrapper inside the
EfficientNet squeeze-excitation layers (``.se.convN.conv.`` -> ``.se.convN.``), the official spelling
``neighbor_atttention``, and the mmcls backbone prefix ``backbone.`` (-> ``img_backbone.``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
from torch import nn

from scanssc_ros.config import ModelConfig, variant
from scanssc_ros.safe_load import load_untrusted, tensor_dict

PathLike = Union[str, Path]

# official key -> ours; applied in order to every key
_RENAMES: Tuple[Tuple[str, str], ...] = (
    (r"\.se\.conv(\d)\.conv\.", r".se.conv\1."),
    (r"neighbor_atttention", "neighbor_attention"),
)
FROZEN_GEOMETRY = ("img_view_transformer.dx", "img_view_transformer.bx", "img_view_transformer.nx",
                   "img_view_transformer.frustum", "proposal_layer.image_grid", "VoxFormer_head.image_grid",
                   "VoxFormer_head.vox_coords", "VoxFormer_head.ref_3d")
_FROZEN_ATOL = 1e-4  # the official values come from float32 arange/linspace; ours from the same formulas
LABEL_SET_BY_CLASSES = {20: "semantickitti"}


@dataclass
class ImportReport:
    matched: int = 0  # official learned tensors copied into our model
    renamed: int = 0  # of those, keys that needed more than the prefix strip
    dropped: List[str] = field(default_factory=list)  # frozen geometry, checked against our config
    placeholders: List[str] = field(default_factory=list)  # non-tensor pickled objects not loaded (safe_load)

    def lines(self) -> List[str]:
        out = [f"matched {self.matched} tensors ({self.renamed} renamed), dropped {len(self.dropped)} frozen "
               f"geometry tensors after checking them against the config"]
        if self.placeholders:
            out.append(f"ignored pickled objects (not loaded): {', '.join(self.placeholders)}")
        return out


def official_key_to_ours(key: str, prefix: str = "model.") -> str:
    if prefix and key.startswith(prefix):
        key = key[len(prefix):]
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def frozen_geometry(cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """The official modules' constant buffers, computed from our config as the official code computes them."""
    grid = cfg.proc_grid
    lo, hi = grid.origin, grid.upper
    step = [grid.voxel_size] * 3
    H, W = cfg.input_size
    fh, fw = cfg.feature_size
    start, stop, dstep = cfg.dbound
    ds = torch.arange(start, stop, dstep, dtype=torch.float)
    D = ds.shape[0]
    frustum = torch.stack((torch.linspace(0, W - 1, fw).view(1, 1, fw).expand(D, fh, fw),
                           torch.linspace(0, H - 1, fh).view(1, fh, 1).expand(D, fh, fw),
                           ds.view(-1, 1, 1).expand(D, fh, fw)), dim=-1)
    image_grid = torch.stack((torch.linspace(0, W - 1, W).view(1, 1, W).expand(1, H, W),
                              torch.linspace(0, H - 1, H).view(1, H, 1).expand(1, H, W)), dim=1)
    X, Y, Z = grid.dims
    xv, yv, zv = torch.meshgrid(torch.arange(X), torch.arange(Y), torch.arange(Z), indexing="ij")
    vox_coords = torch.stack([xv.reshape(-1), yv.reshape(-1), zv.reshape(-1), torch.arange(X * Y * Z)], dim=-1)
    ref_3d = torch.stack([(xv.reshape(-1) + 0.5) / X, (yv.reshape(-1) + 0.5) / Y, (zv.reshape(-1) + 0.5) / Z],
                         dim=-1).float()
    return {
        "img_view_transformer.dx": torch.tensor(step, dtype=torch.float),
        "img_view_transformer.bx": torch.tensor([a + s / 2 for a, s in zip(lo, step)], dtype=torch.float),
        "img_view_transformer.nx": torch.tensor([(b - a) / s for a, b, s in zip(lo, hi, step)], dtype=torch.float),
        "img_view_transformer.frustum": frustum,
        "proposal_layer.image_grid": image_grid,
        "VoxFormer_head.image_grid": image_grid,
        "VoxFormer_head.vox_coords": vox_coords,
        "VoxFormer_head.ref_3d": ref_3d,
    }


def official_config(state: Dict[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig of an official checkpoint: the paper variant, official input convention, with the class
    count read from the head and the input size from the frozen image grid (a clear error for other models)."""
    head = state.get("pts_bbox_head.occ_convs.0.3.weight")  # final 1x1x1 conv: (classes, C, 1, 1, 1)
    grid = state.get("VoxFormer_head.image_grid")
    if head is None or grid is None or head.ndim != 5 or grid.ndim != 4:
        raise ValueError("not an official ScanSSC checkpoint: it has no ScanSSC occupancy head / image grid "
                         "(pts_bbox_head.occ_convs.0.3.weight, VoxFormer_head.image_grid)")
    classes, size = int(head.shape[0]), (int(grid.shape[2]), int(grid.shape[3]))
    if classes not in LABEL_SET_BY_CLASSES:
        raise ValueError(f"the checkpoint's head predicts {classes} classes; only the SemanticKITTI model (20) "
                         "is supported")
    return variant("paper").replace(num_classes=classes, input_size=size, input_convention="official")


def convert_official(state: Dict[str, torch.Tensor], model: nn.Module, cfg: ModelConfig, source: str = "checkpoint"
                     ) -> Tuple[Dict[str, torch.Tensor], ImportReport]:
    """Official state dict -> ours for ``model`` (strict). Raises ValueError naming every offending key."""
    own = model.state_dict()
    geometry = frozen_geometry(cfg)
    report = ImportReport()
    out: Dict[str, torch.Tensor] = {}
    unexpected, mismatched, twice = [], [], []
    for key, value in state.items():
        ours = official_key_to_ours(key)
        if ours in geometry:
            ref = geometry[ours]
            same = value.shape == ref.shape and (torch.equal(value, ref) if not ref.is_floating_point() else
                                                 torch.allclose(value.float(), ref, rtol=0, atol=_FROZEN_ATOL))
            if not same:
                raise ValueError(f"{source}: frozen geometry {key} {tuple(value.shape)} does not match this config "
                                 f"(expected {tuple(ref.shape)} for input {cfg.input_size}, processing grid "
                                 f"{cfg.proc_grid.dims}, depth bins {cfg.dbound}): another image size or grid")
            report.dropped.append(key)
        elif ours not in own:
            unexpected.append(key)
        elif ours in out:
            twice.append(key)
        elif value.shape != own[ours].shape or value.dtype != own[ours].dtype:
            mismatched.append(f"{key} {tuple(value.shape)} {value.dtype} vs {tuple(own[ours].shape)} "
                              f"{own[ours].dtype}")
        else:
            out[ours] = value
            report.renamed += ours != key.removeprefix("model.")
    missing = sorted(set(own) - set(out))
    problems = [(title, items) for title, items in (("unexpected keys", unexpected), ("missing keys", missing),
                                                    ("shape/dtype mismatches", mismatched),
                                                    ("keys mapped twice", twice)) if items]
    if problems:
        parts = [f"{len(items)} {title} (e.g. {', '.join(sorted(items)[:3])})" for title, items in problems]
        raise ValueError(f"{source} is not the official ScanSSC model this importer knows: " + "; ".join(parts))
    report.matched = len(out)
    return out, report


def read_official(path: PathLike) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """State dict of an official file with the Lightning prefix kept, and the placeholder globals (safe_load)."""
    obj, placeholders = load_untrusted(path)
    return tensor_dict(obj, str(path)), placeholders


def import_official(src: PathLike, dst: PathLike) -> ImportReport:
    """``ScanSSC_SemanticKitti.ckpt`` -> our checkpoint at ``dst`` (fp32, tensors bit-identical)."""
    from scanssc_ros import checkpoint
    from scanssc_ros.model.scanssc import ScanSSC

    state, placeholders = read_official(src)
    stripped = {k.removeprefix("model."): v for k, v in state.items()}
    cfg = official_config(stripped)
    model = ScanSSC(cfg)
    converted, report = convert_official(state, model, cfg, source=str(src))
    report.placeholders = placeholders
    model.load_state_dict(converted, strict=True)
    extra = {"label_set": LABEL_SET_BY_CLASSES[cfg.num_classes], "depth_mode": "stereo",
             "imported_from": Path(src).name, "note": "official ScanSSC release weights (scanssc-import)"}
    checkpoint.save(dst, model, cfg, extra=extra)
    return report


# -------------------------------------------------------------------------------- training initialisation
@dataclass
class InitReport:
    loaded: int
    shape_mismatch: List[str]
    unused: List[str]
    left_random: List[str]

    def lines(self, limit: int = 8) -> List[str]:
        def some(items: List[str]) -> str:
            return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
        out = [f"loaded {self.loaded} tensors; {len(self.left_random)} left at their random initialisation"]
        for title, items in (("left random", _prefixes(self.left_random)), ("shape mismatch", self.shape_mismatch),
                             ("unused from the file", _prefixes(self.unused))):
            if items:
                out.append(f"{title}: {some(items)}")
        return out


def _prefixes(keys: List[str], depth: int = 2) -> List[str]:
    """Group keys by their first ``depth`` name parts with counts, so a report names modules, not 1000 keys."""
    counts: Dict[str, int] = {}
    for k in keys:
        p = ".".join(k.split(".")[:depth])
        counts[p] = counts.get(p, 0) + 1
    return [f"{p} ({n})" for p, n in sorted(counts.items())]


def init_state(path: PathLike, model: nn.Module) -> Tuple[Dict[str, torch.Tensor], InitReport]:
    """Weights of any official file (the Lightning checkpoint, ``pretrain_geodepth.pth``, the mmcls EfficientNet)
    or of our own checkpoints, keeping what matches ``model`` by name and shape. Returns the partial state dict
    (for ``load_state_dict(strict=False)``) and what was loaded, skipped and left random."""
    state, _ = read_official(path)
    if all(k.startswith(("backbone.", "head.")) for k in state):  # mmcls classifier: backbone + ImageNet head
        state = {("img_" + k if k.startswith("backbone.") else k): v for k, v in state.items()}
    own = model.state_dict()
    geometry = set(FROZEN_GEOMETRY)
    out: Dict[str, torch.Tensor] = {}
    mismatch, unused = [], []
    for key, value in state.items():
        ours = official_key_to_ours(key)
        if ours in geometry:
            continue
        if ours not in own:
            unused.append(ours)
        elif value.shape != own[ours].shape:
            mismatch.append(f"{ours} {tuple(value.shape)} vs {tuple(own[ours].shape)}")
        else:
            out[ours] = value.to(own[ours].dtype)
    if not out:
        raise ValueError(f"{path}: no tensor matches this model by name and shape (is it a ScanSSC / EfficientNet "
                         "checkpoint of the same variant?)")
    left = sorted(set(own) - set(out))
    return out, InitReport(loaded=len(out), shape_mismatch=sorted(mismatch), unused=sorted(unused), left_random=left)

