"""Checkpoints that rebuild the model from the path alone.

File content (``torch.save``): {'format': 'scanssc_ros/1', 'config': ModelConfig.to_dict(), 'state_dict': ...,
'extra': {...}}. Loading is strict: any missing or unexpected key or shape mismatch raises a ValueError that
names the offending keys.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from scanssc_ros.config import ModelConfig

FORMAT = "scanssc_ros/1"
PathLike = Union[str, Path]


def save(path: PathLike, model: nn.Module, config: ModelConfig, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "config": config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": dict(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The raw checkpoint dict, validated. Raises FileNotFoundError / ValueError with the path in the message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable scanssc_ros checkpoint ({type(e).__name__}: "
                         f"{load_error_reason(e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a scanssc_ros checkpoint (format {fmt!r}, expected {FORMAT!r})")
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"{path}: checkpoint has no {key!r} dict")
    return payload


def load_error_reason(exc: BaseException, limit: int = 160) -> str:
    """One short line from torch.load's error. Its unpickling errors span many lines and advise
    ``weights_only=False`` (arbitrary code execution), which is never the fix for a corrupt file."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return "empty or truncated file"
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line and i + 1 < len(lines):
            lines = [f"not a torch checkpoint: unpickling failed with {lines[i + 1]!r}"]
            break
    text = lines[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_state_dict_strict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "state_dict") -> None:
    """``model.load_state_dict`` with one readable error listing every missing/unexpected/mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{title}: {shown}")
        raise ValueError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load(path: PathLike, map_location: Union[str, torch.device] = "cpu"
         ) -> Tuple[nn.Module, ModelConfig, Dict[str, Any]]:
    """Rebuild the model from the checkpoint's config and load its weights. Returns (model in eval mode,
    config, extra)."""
    from scanssc_ros.model.scanssc import ScanSSC  # the model imports torch-heavy modules; keep import local

    payload = read(path, map_location)
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid model config in checkpoint: {e}") from e
    model = ScanSSC(config)
    load_state_dict_strict(model, payload["state_dict"], source=str(path))
    model.to(map_location).eval()
    return model, config, payload.get("extra", {})


def check_variant(config: ModelConfig, expected: str, source: str = "checkpoint") -> None:
    """Raise a ValueError when a checkpoint holds another model variant than the caller expects."""
    if config.variant != expected:
        raise ValueError(f"{source} holds a {config.variant!r} model but a {expected!r} model was expected")
