"""A JSON-lines log of a run: one object per line, flushed at once, so a crash loses nothing and the file can be
followed with ``tail -f`` or read back with ``read_jsonl``. Only rank 0 writes."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union


def _clean(v: Any) -> Any:
    """JSON has no NaN / inf: write them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class RunLog:
    def __init__(self, path: Optional[Union[str, Path]]) -> None:
        self.path = Path(path) if path is not None else None
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record: Dict[str, Any] = {"type": kind, "time": round(time.time(), 3), **_clean(fields)}
        self._fh.write(json.dumps(record, sort_keys=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_jsonl(path: Union[str, Path], kind: Optional[str] = None) -> List[Dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("type") == kind]
