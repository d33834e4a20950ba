"""Atomic, durable file writes: a half-written file never takes the place of a good one.

Every writer in the project (template cache, demo cohorts, prepared scans, QC pages, checkpoints)
writes to a temporary file ``.<name>.XXXXXXXX<suffixes>`` in the destination folder, flushes it to
disk (``fsync``) and renames it into place with ``os.replace``, which is atomic on POSIX and Windows
when both names are on one file system; the folder is then fsynced too (POSIX), so that after a power
cut the new name points at complete data. New files get the permissions the umask gives (as ``open``
would), not the ``0600`` of ``tempfile.mkstemp``. A process killed during a write leaves its temporary
file behind: :func:`sweep_temp_files` removes those of given destinations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "file_sha256",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_file",
    "sweep_temp_files",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to the disk (``os.fsync``); a folder too where the OS allows it (POSIX)."""
    path = Path(path)
    if path.is_dir():
        if os.name != "posix":  # Windows cannot open a folder for fsync
            return
        fd = os.open(path, os.O_RDONLY)
    else:
        fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success make it durable and rename it onto ``path``.

    On error the temporary file is deleted. The temporary name keeps ``path``'s suffixes (``.nii.gz``,
    ``.png``, ...) so writers that pick the format from the file name work unchanged. Parent folders are
    created. After the writer returns, the file is fsynced, gets mode ``0o666 & ~umask``, is renamed with
    ``os.replace``, and the folder is fsynced.

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
        fsync_file(tmp)  # before chmod: the writer's 0600 file is still writable by us
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_file(path.parent)


def _temp_name_pattern(path: Path) -> re.Pattern:
    """The names :func:`atomic_path` gives temporary files for ``path`` (``tempfile`` uses [a-z0-9_])."""
    suffix = re.escape("".join(path.suffixes))
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{suffix}")


def sweep_temp_files(paths: list[str | os.PathLike], older_than: float | None = None) -> list[Path]:
    """Delete temporary files :func:`atomic_path` left for ``paths`` (a writer killed mid-write).

    Only files named as :func:`atomic_path` names them for exactly these destinations are touched. Call
    it when no other process can be writing them (e.g. while holding a
    :class:`~mri_slice_transfer.engine.lock.RunLock`).

    Args:
        paths: destination files, e.g. ``models/checkpoint.pt``.
        older_than: only files last modified before this time (``time.time()`` seconds); default: now.

    Returns:
        the deleted files.
    """
    cutoff = time.time() if older_than is None else float(older_than)
    removed = []
    for dest in map(Path, paths):
        if not dest.parent.is_dir():
            continue
        pattern = _temp_name_pattern(dest)
        for cand in dest.parent.iterdir():
            if pattern.fullmatch(cand.name) and cand.is_file() and cand.stat().st_mtime < cutoff:
                cand.unlink(missing_ok=True)
                removed.append(cand)
    return removed


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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (``sha256sum`` prints the same).

    The one file checksum of the project: weight-file records, ``prepare``'s output records and the
    leakage guard's identical-content check use it.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # hashlib.file_digest needs Python 3.11; the project supports 3.10
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
