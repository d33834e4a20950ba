"""The merge step of sharded inference: ``--shard i/n`` CSVs (a SLURM array) -> the one predictions CSV.

``inference.json --shard i/n`` scores scan ``j`` of the inputs when ``j % n == i`` and writes
``predictions-<run>.shard-i-of-n.csv`` (:func:`~mri_slice_transfer.engine.distributed.shard_path`);
:func:`merge_shards` interleaves the ``n`` files back into input order, so the merged file has the rows of
a single-process run. ``mri-slice-transfer merge-shards`` calls it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from mri_slice_transfer.engine.distributed import interleave
from mri_slice_transfer.engine.io import write_csv

__all__ = ["ShardError", "find_shards", "merge_shards"]


class ShardError(ValueError):
    """Shard files missing, of different runs, or not of one ``--shard i/n`` series."""


def _pattern(target: Path) -> re.Pattern[str]:
    stem, suffix = (target.stem, target.suffix) if target.suffix else (target.name, "")
    return re.compile(re.escape(stem) + r"\.shard-(\d+)-of-(\d+)" + re.escape(suffix) + r"$")


def find_shards(target: str | os.PathLike) -> list[Path]:
    """The shard files of the merged file ``target``, in shard order (``x.shard-0-of-n.csv``, ...).

    Args:
        target: the merged file's path, e.g. ``eval/predictions-scans.csv``.

    Returns:
        the ``n`` shard files.

    Raises:
        ShardError: none found, shards of several counts, or some of the ``n`` missing (named).
    """
    target = Path(target)
    pattern = _pattern(target)
    found: dict[tuple[int, int], Path] = {}
    folder = target.parent if str(target.parent) else Path(".")
    for path in folder.iterdir() if folder.is_dir() else ():
        m = pattern.match(path.name)
        if m:
            found[int(m.group(1)), int(m.group(2))] = path
    if not found:
        raise ShardError(f"no shard files {target.stem}.shard-<i>-of-<n>{target.suffix} in {folder}")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise ShardError(
            f"shard files of {target} come from runs with different counts {counts}; keep one run's"
        )
    n = counts[0]
    missing = [f"{i}/{n}" for i in range(n) if (i, n) not in found]
    if missing:
        raise ShardError(
            f"{target}: shard(s) {', '.join(missing)} missing in {folder} (rerun those array tasks with "
            f"--shard INDEX/{n}); found {len(found)} of {n}"
        )
    return [found[i, n] for i in range(n)]


def merge_shards(target: str | os.PathLike, shards: list[str | os.PathLike] | None = None) -> Path:
    """Merge the shard CSVs of ``target`` into ``target``: the rows of a single-process run, in order.

    Cells are copied as text (no float is re-printed), so a merged file equals the file one process
    writes.

    Args:
        target: the merged CSV to write.
        shards: the shard CSVs in shard order (default: :func:`find_shards`).

    Returns:
        ``target``.
    """
    paths = [Path(p) for p in shards] if shards is not None else find_shards(target)
    if not paths:
        raise ShardError(f"{target}: no shard files given")
    parts = []
    for path in paths:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as err:
            raise ShardError(f"cannot read shard file {path}: {err}") from err
        parts.append(frame.to_dict("records"))
    sizes = [len(p) for p in parts]
    if any(a < b for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] - sizes[-1] > 1:
        raise ShardError(
            f"{target}: shard sizes {sizes} are not those of one input list cut by --shard i/{len(paths)} "
            "(shards of different inputs?)"
        )
    return write_csv(interleave(parts), target)
