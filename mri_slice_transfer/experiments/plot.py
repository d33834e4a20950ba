"""``plot.png``: each test metric per configuration, with error bars (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mri_slice_transfer.vocabulary import task_spec

if TYPE_CHECKING:
    import pandas as pd

    from mri_slice_transfer.experiments.presets import Preset

__all__ = ["row_label", "plot_results"]


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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from mri_slice_transfer.experiments.tables import TABLE_METRICS, aggregate
    from mri_slice_transfer.fileio import atomic_path

    specs = TABLE_METRICS[task]
    agg = aggregate(results, task)
    ok = (
        results[results.get("status", pd.Series("ok", index=results.index)) == "ok"]
        if len(results)
        else results
    )
    labels = [row_label(r) for r in agg.to_dict("records")] if not agg.empty else []
    height = max(2.5, 0.35 * len(labels) + 1.5)
    fig, axes = plt.subplots(
        1, len(specs), figsize=(4.2 * len(specs) + 2.5, height), sharey=True, squeeze=False
    )
    y = np.arange(len(labels))
    used_ci = used_std = False
    for ax, spec in zip(axes[0], specs, strict=True):
        for i, r in enumerate(agg.to_dict("records")):
            mean = r[f"{spec.name}_mean"] * spec.scale
            if not np.isfinite(mean):
                ax.text(0.02, i, "failed", va="center", transform=ax.get_yaxis_transform(), color="tab:red")
                continue
            mask = (
                (ok["encoder"].astype(str) == r["encoder"])
                & (ok["axis"].fillna("-").astype(str) == r["axis"])
                & (ok["aggregation"].fillna("-").astype(str) == r["aggregation"])
                & (ok["position_encoding"].astype(str) == r["position_encoding"])
                & (ok["pretrained"].astype(str).str.lower() == str(r["pretrained"]).lower())
            )
            seeds = pd.to_numeric(ok.loc[mask, f"test_{spec.name}"], errors="coerce").dropna() * spec.scale
            if r[f"{spec.name}_n"] > 1:
                err = [[r[f"{spec.name}_std"] * spec.scale], [r[f"{spec.name}_std"] * spec.scale]]
                used_std = True
            else:
                lo = pd.to_numeric(ok.loc[mask, f"test_{spec.name}_ci_low"], errors="coerce")
                hi = pd.to_numeric(ok.loc[mask, f"test_{spec.name}_ci_high"], errors="coerce")
                lo_v = float(lo.iloc[0]) * spec.scale if len(lo) else np.nan
                hi_v = float(hi.iloc[0]) * spec.scale if len(hi) else np.nan
                err = [[max(mean - lo_v, 0.0)], [max(hi_v - mean, 0.0)]] if np.isfinite(lo_v + hi_v) else None
                used_ci = used_ci or err is not None
            ax.errorbar([mean], [i], xerr=err, fmt="o", color="tab:blue", capsize=3)
            ax.scatter(seeds, np.full(len(seeds), i), s=10, color="tab:gray", alpha=0.7, zorder=3)
        unit = f" ({task_spec(task).unit})"
        better = "lower is better" if spec.lower_is_better else "higher is better"
        ax.set_xlabel(f"{spec.header}{unit}\n{better}")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, labels)
    axes[0][0].invert_yaxis()
    bars = []
    if used_std:
        bars.append("± 1 std over seeds")
    if used_ci:
        bars.append("95% bootstrap CI (single seed)")
    synthetic = "data" in results.columns and results["data"].astype(str).str.contains("synthetic").any()
    head = title or (preset.title if preset else f"Test results ({task})")
    if synthetic:
        head += " - SYNTHETIC demo cohort"
    fig.suptitle(head + (f"\nerror bars: {'; '.join(bars)}; grey dots: seeds" if bars else ""), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path
