"""Atomic file writes: a crash never leaves a half-written checkpoint, CSV or JSON behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

__all__ = ["atomic_torch_save", "atomic_write_text", "write_json", "write_csv"]


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (NaN written as ``null``)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return atomic_write_text(json.dumps(clean(obj), indent=2) + "\n", path)


def write_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as CSV atomically."""
    return atomic_write_text(pd.DataFrame(rows).to_csv(index=False), path)
