"""Grid summaries: ``results.csv`` (one row per run) and the writer of ``table.md`` and ``plot.png``.

Run folders are read through :mod:`.run_folder` (:func:`~.run_folder.collect_existing`); confidence
intervals come from :mod:`.bootstrap`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mri_slice_transfer.experiments.plot import plot_learning_curve, plot_results
from mri_slice_transfer.experiments.run_folder import LEARNING_CURVE_PNG, PLOT_PNG, RESULTS_CSV, TABLE_MD
from mri_slice_transfer.experiments.tables import aggregate, format_report, shows_init
from mri_slice_transfer.fileio import atomic_write_text

if TYPE_CHECKING:
    from mri_slice_transfer.experiments.presets import Preset

__all__ = [
    "RESULT_COLUMNS",
    "results_frame",
    "summarize",
]

#: First columns of ``results.csv`` (metric columns follow, then anything else).
RESULT_COLUMNS: tuple[str, ...] = (
    "run_id",
    "status",
    "task",
    "model",
    "encoder",
    "axis",
    "aggregation",
    "position_encoding",
    "pretrained",
    "pretrained_override",
    "encoder_init",
    "init",
    "train_fraction",
    "seed",
    "n_params",
    "epochs_run",
    "best_epoch",
    "wall_time_s",
    "train_seconds",
    "eval_seconds",
    "resumed",
    "data",
)
_TAIL_COLUMNS: tuple[str, ...] = ("stage", "error", "log_tail", "run_dir", "row")


def results_frame(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Result rows as a DataFrame with :data:`RESULT_COLUMNS` first, then metrics, then the rest."""
    frame = pd.DataFrame([dict(r) for r in results])
    if frame.empty:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    first = [c for c in RESULT_COLUMNS if c in frame.columns]
    metrics = sorted(c for c in frame.columns if c.startswith("val_"))
    tests = [c for c in frame.columns if c.startswith("test_") and not c.endswith(("_ci_low", "_ci_high"))]
    for c in sorted(tests, key=lambda c: (c.startswith("test_n_"), c)):
        metrics += [x for x in (c, f"{c}_ci_low", f"{c}_ci_high") if x in frame.columns]
    metrics += [c for c in frame.columns if c.startswith("test_") and c not in metrics]
    metrics += [c for c in ("n_test_subjects", "bootstrap_resamples", "bootstrap_unit") if c in frame.columns]
    tail = [c for c in _TAIL_COLUMNS if c in frame.columns]
    rest = [c for c in frame.columns if c not in {*first, *metrics, *tail}]
    return frame[first + metrics + rest + tail]


def summarize(
    results: Iterable[Mapping[str, Any]] | pd.DataFrame,
    out_dir: str | os.PathLike,
    task: str,
    preset: Preset | None = None,
    title: str | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write ``results.csv``, ``table.md`` and (optionally) ``plot.png`` into ``out_dir``; with
    ``plot``, grids with label fractions or initialisations beyond scratch / ImageNet also get
    ``learning_curve.png``.

    Args:
        results: result rows (from :func:`~mri_slice_transfer.experiments.runner.run_grid`) or a frame.
        out_dir: the grid folder.
        task: ``"adni_ad"`` or ``"brain_age"``.
        preset: when given, ``table.md`` also shows the paper's table.
        title: table caption (default: the preset's).
        plot: also draw ``plot.png``.

    Returns:
        ``{"results": ..., "table": ..., "plot": ...}`` paths written.
    """
    frame = results if isinstance(results, pd.DataFrame) else results_frame(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / RESULTS_CSV, "table": out / TABLE_MD}
    atomic_write_text(paths["results"], frame.to_csv(index=False, lineterminator="\n"))
    # Round trip through the CSV, so the table is exactly what results.csv says.
    frame = pd.read_csv(paths["results"])
    atomic_write_text(paths["table"], format_report(frame, task, preset=preset, title=title))
    if plot:
        paths["plot"] = plot_results(frame, task, out / PLOT_PNG, preset=preset, title=title)
        if shows_init(aggregate(frame, task)):
            paths["learning_curve"] = plot_learning_curve(frame, task, out / LEARNING_CURVE_PNG)
    return paths
