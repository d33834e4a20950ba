"""Atomic file writes: a half-written file never takes the place of a good one.

Every writer in the project (template cache, demo cohorts, prepared scans, QC pages, checkpoints)
writes to a temporary file in the destination folder and renames it into place with ``os.replace``,
which is atomic on POSIX and Windows when both names are on one file system.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``, ``.png``, ...) so writers that pick the
    format from the file name work unchanged. Parent folders are created.

    Example::

        with atomic_path("out/scan.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as indented JSON (UTF-8) atomically, NaN / inf as ``null``; returns ``path``.

    Args:
        path: output file.
        obj: JSON-serialisable data (dicts, lists, numbers, strings).
        default: passed to ``json.dumps`` for other objects (e.g. ``str``).
    """
    return atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, default=default) + "\n")
