"""The run-folder contract of a grid: the names of the files a grid writes and reads, in one place,
and typed records of what a run produced.

Layout of ``<out>/`` (see :mod:`mri_slice_transfer.experiments.runner` for who writes what)::

    results.csv  table.md  plot.png  learning_curve.png (grids with label fractions / inits)
    pretrain/<stage_id>/             a self-supervised pretraining stage (models/encoder.pt, done.json)
    runs/<run_id>/config.json        the model settings, seed, overrides and commands
                  train.log          everything the train command printed (attempts appended)
                  evaluate.log       everything the evaluate command printed
                  models/model.pt    best epoch on validation
                  models/checkpoint.pt  last epoch (resume)
                  eval/val_metrics.json, eval/test_metrics.json, eval/test_predictions.csv
                  run_info.json      what the train command reported about itself (encoder_init)
                  train.done         training finished (:class:`TrainMarker`)
                  done.json          the run's result row, written atomically last
                  failed.json        the error and log tail of the last failed attempt

This module imports nothing else of the grid, so :mod:`.runner` and :mod:`.summary` both use it
without importing each other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mri_slice_transfer.fileio import atomic_write_json

__all__ = [
    "RUNS",
    "DONE",
    "FAILED",
    "TRAIN_DONE",
    "CONFIG",
    "RUN_INFO",
    "RESULTS_CSV",
    "TABLE_MD",
    "PLOT_PNG",
    "LEARNING_CURVE_PNG",
    "RunFiles",
    "TrainMarker",
    "RunInfo",
    "read_marker",
    "write_marker",
    "collect_existing",
]

#: Folder of the run folders under the grid folder.
RUNS = "runs"
#: Markers and records in a run folder.
DONE = "done.json"
FAILED = "failed.json"
TRAIN_DONE = "train.done"
CONFIG = "config.json"
RUN_INFO = "run_info.json"
#: Summaries in the grid folder.
RESULTS_CSV = "results.csv"
TABLE_MD = "table.md"
PLOT_PNG = "plot.png"
LEARNING_CURVE_PNG = "learning_curve.png"


@dataclass(frozen=True)
class RunFiles:
    """Paths of the files of one run folder; build it with :meth:`of`.

    Attributes:
        run_dir: the run folder (``<out>/runs/<run_id>``).
        config, done, failed, train_done, run_info: the markers and records (names above).
        train_log, evaluate_log: what the two commands printed.
        models, checkpoint: the bundle's ``ckpt_dir`` and its last-epoch checkpoint.
        eval_dir, val_metrics, test_metrics, test_predictions: the bundle's ``output_dir`` and its results.
    """

    run_dir: Path
    config: Path
    done: Path
    failed: Path
    train_done: Path
    run_info: Path
    train_log: Path
    evaluate_log: Path
    models: Path
    checkpoint: Path
    eval_dir: Path
    val_metrics: Path
    test_metrics: Path
    test_predictions: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike) -> RunFiles:
        """The files of the run folder ``run_dir``."""
        d = Path(run_dir)
        models, ev = d / "models", d / "eval"
        return cls(
            d,
            *(d / name for name in (CONFIG, DONE, FAILED, TRAIN_DONE, RUN_INFO, "train.log", "evaluate.log")),
            models,
            models / "checkpoint.pt",
            ev,
            *(ev / name for name in ("val_metrics.json", "test_metrics.json", "test_predictions.csv")),
        )


@dataclass(frozen=True)
class TrainMarker:
    """Contents of ``train.done``: training finished.

    Attributes:
        seconds: wall time of the training stage (None if unknown).
        resumed: training continued from ``models/checkpoint.pt``.
    """

    seconds: float | None = None
    resumed: bool = False

    @classmethod
    def read(cls, path: Path) -> TrainMarker | None:
        """The marker at ``path``, or None if it is missing or unreadable."""
        data = read_marker(path)
        if data is None:
            return None
        seconds = data.get("seconds")
        return cls(None if seconds is None else float(seconds), bool(data.get("resumed", False)))

    def write(self, path: Path) -> None:
        """Write the marker atomically."""
        write_marker(path, {"seconds": self.seconds, "resumed": self.resumed})


@dataclass(frozen=True)
class RunInfo:
    """What a run's train command reported about itself (``run_info.json``).

    Attributes:
        encoder_init: how the encoder was initialised (``"scratch"``, ``"imagenet"``, ...).
    """

    encoder_init: str = "unknown"

    @classmethod
    def read(cls, path: Path) -> RunInfo | None:
        """The record at ``path``, or None if it is missing or unreadable."""
        data = read_marker(path)
        if data is None:
            return None
        return cls(str(data.get("encoder_init", "unknown")))


def read_marker(path: Path) -> dict[str, Any] | None:
    """A JSON marker file, or None if it is missing or unreadable (a broken run)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(path: Path, obj: Any) -> None:
    """Write a marker or record atomically as JSON (other objects as ``str``)."""
    atomic_write_json(path, obj, default=str)


def collect_existing(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Result rows of every run folder under ``<out_dir>/runs`` (finished or failed), in table order."""
    rows = []
    for run_dir in sorted((Path(out_dir) / RUNS).glob("*/")):
        marker = read_marker(run_dir / DONE) or read_marker(run_dir / FAILED)
        if marker is not None:
            rows.append(marker)
    rows.sort(key=lambda r: (int(r.get("row", 0) or 0), int(r.get("seed", 0) or 0)))
    return rows
