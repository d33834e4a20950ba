"""``plot.png``: each test metric per configuration, with error bars; ``learning_curve.png``: test metric vs
label fraction per encoder initialisation (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mri_slice_transfer.experiments.tables import (
    TABLE_METRICS,
    MetricSpec,
    aggregate,
    fill_init_columns,
    metric_specs,
)
from mri_slice_transfer.plotting import pyplot, save_figure
from mri_slice_transfer.vocabulary import task_spec

if TYPE_CHECKING:
    from mri_slice_transfer.experiments.presets import Preset

__all__ = ["row_label", "plot_results", "plot_learning_curve"]

#: Legend texts of the two kinds of error bar.
STD_BARS = "± 1 std over seeds"
CI_BARS = "95% bootstrap CI (single seed)"


def row_label(row: dict) -> str:
    """Short configuration label, e.g. ``2D-ResNet-18 (Mean) axial +PE ImageNet``."""
    if row["encoder"] == "conv3d":
        return "3D-CNN"
    pe = "" if row["position_encoding"] in ("none", "-") else " +PE"
    init = " ImageNet" if row["pretrained"] else ""
    if row.get("init", "scratch") not in ("scratch", "imagenet"):
        init = f" {row['init']}"
    fraction = float(row.get("train_fraction", 1.0))
    labels = "" if fraction == 1.0 else f" {fraction:.0%} labels"
    return f"{row['model']} {row['axis']}{pe}{init}{labels}"


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
    metrics = preset.table_metrics if preset is not None else ()
    specs = metric_specs(task, metrics)
    agg = aggregate(results, task, metrics)
    ok = (
        results[results.get("status", pd.Series("ok", index=results.index)) == "ok"]
        if len(results)
        else results
    ).copy()
    if len(ok):
        ok["pretrained"] = ok["pretrained"].map(lambda p: str(p).strip().lower() in {"true", "1", "yes"})
        fill_init_columns(ok)
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
        & (ok["init"].astype(str) == str(row["init"]))
        & (ok["train_fraction"] == float(row["train_fraction"]))
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


def _curve_metrics(results: pd.DataFrame, task: str) -> list[MetricSpec]:
    """The learning curve's panels: the key metric, plus ROC AUC for AD when results.csv has it."""
    spec = task_spec(task)
    by_name = {s.name: s for s in TABLE_METRICS[task]}
    key = by_name.get(spec.key_metric, MetricSpec(spec.key_metric, spec.key_metric))
    panels = [key]
    if "test_roc_auc" in results.columns and spec.key_metric != "roc_auc":
        panels.append(MetricSpec("roc_auc", "ROC AUC", key.scale, 2, False))
    return panels


def plot_learning_curve(
    results: pd.DataFrame, task: str, path: str | os.PathLike, title: str | None = None
) -> Path:
    """Test metric vs label fraction, one line per model and encoder initialisation.

    Points are the mean over the finished seeds; error bars are ± one standard deviation over seeds
    when a point has two or more seeds, otherwise the single run's 95 % bootstrap confidence interval.

    Args:
        results: ``results.csv`` as a frame (with ``init`` and ``train_fraction``).
        task: ``"adni_ad"`` or ``"brain_age"``.
        path: the PNG to write (atomically).
        title: figure title (default: a generic one).

    Returns:
        ``path``.
    """
    plt = pyplot()
    agg = aggregate(results, task)
    panels = _curve_metrics(results, task)
    ok = results[results.get("status", pd.Series("ok", index=results.index)) == "ok"].copy()
    if len(ok):
        ok["pretrained"] = ok["pretrained"].map(lambda p: str(p).strip().lower() in {"true", "1", "yes"})
        fill_init_columns(ok)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    bars: set[str] = set()
    rows = agg[agg["n_ok"] > 0].to_dict("records") if not agg.empty else []
    lines: dict[str, list[dict]] = {}
    for r in rows:
        pe = "" if r["position_encoding"] in ("none", "-") else " +PE"
        lines.setdefault(f"{r['model']} {r['axis']}{pe}, {r['init']}", []).append(r)
    for ax, spec in zip(axes[0], panels, strict=True):
        for label, points in lines.items():
            points = sorted(points, key=lambda p: float(p["train_fraction"]))
            xs, ys, lo, hi = [], [], [], []
            for p in points:
                runs = ok.loc[_runs_of(ok, p)]
                values = pd.to_numeric(runs.get(f"test_{spec.name}"), errors="coerce").dropna() * spec.scale
                if not len(values):
                    continue
                mean = float(values.mean())
                err, kind = _point_error(spec, runs, values, mean)
                bars |= {kind} if kind else set()
                xs.append(float(p["train_fraction"]))
                ys.append(mean)
                lo.append(err[0])
                hi.append(err[1])
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=label)
        better = "lower is better" if spec.lower_is_better else "higher is better"
        ax.set_xlabel("fraction of the labelled training subjects")
        ax.set_ylabel(f"test {spec.header} ({task_spec(task).unit}), {better}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    head = title or f"Learning curves by encoder initialisation ({task})"
    if "data" in results.columns and results["data"].astype(str).str.contains("synthetic").any():
        head += " - SYNTHETIC demo cohort"
    legend = [b for b in (STD_BARS, CI_BARS) if b in bars]
    fig.suptitle(head + (f"\nerror bars: {'; '.join(legend)}" if legend else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _point_error(
    spec: MetricSpec, runs: pd.DataFrame, values: pd.Series, mean: float
) -> tuple[tuple[float, float], str | None]:
    """``((below, above), legend text)`` of one learning-curve point."""
    if len(values) > 1:
        std = float(values.std(ddof=1))
        return (std, std), STD_BARS
    lo = pd.to_numeric(runs.get(f"test_{spec.name}_ci_low"), errors="coerce")
    hi = pd.to_numeric(runs.get(f"test_{spec.name}_ci_high"), errors="coerce")
    lo_v = float(lo.iloc[0]) * spec.scale if lo is not None and len(lo) else np.nan
    hi_v = float(hi.iloc[0]) * spec.scale if hi is not None and len(hi) else np.nan
    if not np.isfinite(lo_v + hi_v):
        return (0.0, 0.0), None
    return (max(mean - lo_v, 0.0), max(hi_v - mean, 0.0)), CI_BARS
