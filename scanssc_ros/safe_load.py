"""Read third-party ``torch.save`` files (official Lightning / mmcv checkpoints) without running their code.

``torch.load(weights_only=True)`` is tried first. Lightning and mmcv checkpoints may also pickle training
objects next to the weights (hyper-parameter containers such as mmcv's ``ConfigDict``, callback states), which
``weights_only`` refuses outright. For those the file is read again with :class:`_RestrictedUnpickler`: tensors,
storages and dtypes are rebuilt by torch's own functions, and every other global the pickle names becomes an
inert placeholder (:class:`Opaque`). Nothing outside that short allow-list is imported or called, so a file can
never execute code on load; the placeholders are reported, and the weights are what we keep.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple, Union

import torch

from scanssc_ros.checkpoint import load_error_reason

PathLike = Union[str, Path]

_TORCH_REBUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                     "_rebuild_parameter_with_state"}


class Opaque:
    """Stands in for an object of a class that was not loaded. Keeps the pickled arguments, state and (for
    dict/list subclasses, which pickle their content item by item) the items as plain data."""

    _global: Tuple[str, str] = ("", "")

    # pickle may create the object with __new__ alone (no __init__), so every attribute is created on first use
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("elements", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("elements", []).extend(values)

    def __repr__(self) -> str:
        return f"<not loaded: {self._global[0]}.{self._global[1]}>"


def _allowed(module: str, name: str) -> Any:
    if module == "torch._utils" and name in _TORCH_REBUILDERS:
        return getattr(torch._utils, name)
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "torch":
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)) or name in ("Size", "device") \
                or (isinstance(value, type) and name.endswith("Storage")):
            return value
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    skipped: Set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        value = _allowed(module, name)
        if value is not None:
            return value
        type(self).skipped.add(f"{module}.{name}")
        return type(name, (Opaque,), {"_global": (module, name)})


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` class and ``load``."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def load_untrusted(path: PathLike) -> Tuple[Any, List[str]]:
    """The object in a torch file and the globals that were replaced by placeholders (empty when the strict
    ``weights_only`` loader read it). Raises ValueError with one short line for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError:
        pass  # globals outside the weights-only allow-list: read again with placeholders below
    except Exception as exc:  # noqa: BLE001 - garbage input fails in many ways inside the unpickler
        raise _unreadable(path, exc) from None
    _RestrictedUnpickler.skipped = set()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as exc:  # noqa: BLE001 - any failure of a hostile or corrupt file is "unreadable"
        raise _unreadable(path, exc) from None
    return obj, sorted(_RestrictedUnpickler.skipped)


def tensor_dict(obj: Any, source: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: ``obj['state_dict']`` (Lightning, mmcv) or ``obj`` itself when
    it is a flat mapping of names to tensors. Raises ValueError otherwise."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{source} holds no state dict of tensors (found {kind})")
    return {str(k): v for k, v in obj.items()}


def _unreadable(path: Path, exc: BaseException) -> ValueError:
    return ValueError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {load_error_reason(exc)})")
