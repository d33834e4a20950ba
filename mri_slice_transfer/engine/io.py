"""Atomic file writes: a crash never leaves a half-written checkpoint or CSV behind.

JSON is written with :func:`mri_slice_transfer.fileio.atomic_write_json`, the one JSON writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mri_slice_transfer.fileio import atomic_path, atomic_write_text

__all__ = ["atomic_torch_save", "write_csv"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it into place.

    Saved through a file object, so the archive's inner folder is torch's fixed ``archive/`` rather than
    the random temporary name: the same weights give the same bytes (and ``sha256``) in every run.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(obj, stream)
    return Path(path)


def write_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as CSV atomically."""
    return atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
