"""Atomic file writes: a crash never leaves a half-written checkpoint, CSV or JSON behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mri_slice_transfer.fileio import atomic_path, atomic_write_text

__all__ = ["atomic_torch_save", "write_json", "write_csv"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it into place."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


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

    return atomic_write_text(path, json.dumps(clean(obj), indent=2) + "\n")


def write_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as CSV atomically."""
    return atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
