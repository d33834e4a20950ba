"""``plot.png``: each test metric per configuration, with error bars (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mri_slice_transfer.experiments.tables import TABLE_METRICS, MetricSpec, aggregate
from mri_slice_transfer.plotting import pyplot, save_figure
from mri_slice_transfer.vocabulary import task_spec

if TYPE_CHECKING:
    from mri_slice_transfer.experiments.presets import Preset

__all__ = ["row_label", "plot_results"]

#: Legend texts of the two kinds of error bar.
STD_BARS = "± 1 std over seeds"
CI_BARS = "95% bootstrap CI (single seed)"


def row_label(row: dict) -> str:
    """Short configuration label, e.g. ``2D-ResNet-18 (Mean) axial +PE ImageNet``."""
    if row["encoder"] == "conv3d":
        return "3D-CNN"
    pe = "" if row["position_encoding"] in ("none", "-") else " +PE"
    init = " ImageNet" if row["pretrained"] else ""
    return f"{row['model']} {row['axis']}{pe}{init}"


def plot_results(
    results: pd.DataFrame,
    task: str,
    path: str | os.PathLike,
    preset: Preset | None = None,
    title: str | None = None,
) -> Path:
    """Draw one panel per test metric: a point per configuration with error bars, seeds as dots.

    Error bars are ± one standard deviation over seeds when a configuration has two or more finished
    seeds, otherwise the 95 % bootstrap confidence interval of its single run.

    Args:
        results: ``results.csv`` as a frame.
        task: ``"adni_ad"`` or ``"brain_age"``.
        path: the PNG to write (atomically).
        preset: only used for the default title.
        title: figure title.

    Returns:
        ``path``.
    """
    plt = pyplot()
    specs = TABLE_METRICS[task]
    agg = aggregate(results, task)
    ok = (
        results[results.get("status", pd.Series("ok", index=results.index)) == "ok"]
        if len(results)
        else results
    )
    rows = agg.to_dict("records") if not agg.empty else []
    height = max(2.5, 0.35 * len(rows) + 1.5)
    fig, axes = plt.subplots(
        1, len(specs), figsize=(4.2 * len(specs) + 2.5, height), sharey=True, squeeze=False
    )
    bars: set[str] = set()
    for ax, spec in zip(axes[0], specs, strict=True):
        bars |= _draw_panel(ax, spec, rows, ok, task)
    axes[0][0].set_yticks(np.arange(len(rows)), [row_label(r) for r in rows])
    axes[0][0].invert_yaxis()
    fig.suptitle(_figure_title(results, task, preset, title, bars), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _runs_of(ok: pd.DataFrame, row: dict) -> pd.Series:
    """Which finished runs (rows of ``ok``) belong to the configuration of an aggregated ``row``."""
    return (
        (ok["encoder"].astype(str) == row["encoder"])
        & (ok["axis"].fillna("-").astype(str) == row["axis"])
        & (ok["aggregation"].fillna("-").astype(str) == row["aggregation"])
        & (ok["position_encoding"].astype(str) == row["position_encoding"])
        & (ok["pretrained"].astype(str).str.lower() == str(row["pretrained"]).lower())
    )


def _error_bar(
    spec: MetricSpec, row: dict, runs: pd.DataFrame, mean: float
) -> tuple[list | None, str | None]:
    """``(xerr, legend text)`` of one point: ± std over seeds, else the single run's bootstrap CI."""
    if row[f"{spec.name}_n"] > 1:
        std = row[f"{spec.name}_std"] * spec.scale
        return [[std], [std]], STD_BARS
    lo = pd.to_numeric(runs[f"test_{spec.name}_ci_low"], errors="coerce")
    hi = pd.to_numeric(runs[f"test_{spec.name}_ci_high"], errors="coerce")
    lo_v = float(lo.iloc[0]) * spec.scale if len(lo) else np.nan
    hi_v = float(hi.iloc[0]) * spec.scale if len(hi) else np.nan
    if not np.isfinite(lo_v + hi_v):
        return None, None
    return [[max(mean - lo_v, 0.0)], [max(hi_v - mean, 0.0)]], CI_BARS


def _draw_panel(ax: Any, spec: MetricSpec, rows: list[dict], ok: pd.DataFrame, task: str) -> set[str]:
    """One metric's panel: a point with error bar per configuration, its seeds as grey dots.

    Returns:
        the kinds of error bar drawn (:data:`STD_BARS`, :data:`CI_BARS`).
    """
    bars = set()
    for i, r in enumerate(rows):
        mean = r[f"{spec.name}_mean"] * spec.scale
        if not np.isfinite(mean):
            ax.text(0.02, i, "failed", va="center", transform=ax.get_yaxis_transform(), color="tab:red")
            continue
        runs = ok.loc[_runs_of(ok, r)]
        seeds = pd.to_numeric(runs[f"test_{spec.name}"], errors="coerce").dropna() * spec.scale
        err, kind = _error_bar(spec, r, runs, mean)
        bars |= {kind} if kind else set()
        ax.errorbar([mean], [i], xerr=err, fmt="o", color="tab:blue", capsize=3)
        ax.scatter(seeds, np.full(len(seeds), i), s=10, color="tab:gray", alpha=0.7, zorder=3)
    better = "lower is better" if spec.lower_is_better else "higher is better"
    ax.set_xlabel(f"{spec.header} ({task_spec(task).unit})\n{better}")
    ax.grid(axis="x", alpha=0.3)
    return bars


def _figure_title(
    results: pd.DataFrame, task: str, preset: Preset | None, title: str | None, bars: set[str]
) -> str:
    """The figure's title: the given one, the preset's or a default; synthetic data and the error bars."""
    head = title or (preset.title if preset else f"Test results ({task})")
    if "data" in results.columns and results["data"].astype(str).str.contains("synthetic").any():
        head += " - SYNTHETIC demo cohort"
    legend = [b for b in (STD_BARS, CI_BARS) if b in bars]
    return head + (f"\nerror bars: {'; '.join(legend)}; grey dots: seeds" if legend else "")
