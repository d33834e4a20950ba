"""Paper-style Markdown tables from ``results.csv``: mean ± std over seeds, best per column in bold.

Laid out like the paper's Tables 1 and 2: ``Encoder | Pos. Enc. | Pretrained | Axis | metrics``,
AD metrics in percent with two decimals, brain-age errors in years with three. The axis column is
left out when every row uses the same axis (the paper's Table 2: all sagittal). Standard deviations
are sample standard deviations (``ddof=1``) over the seeds that finished; with one seed only the mean
is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from mri_slice_transfer.vocabulary import TASKS, TaskSpec, task_spec

if TYPE_CHECKING:
    from mri_slice_transfer.experiments.presets import Preset

__all__ = [
    "MetricSpec",
    "TABLE_METRICS",
    "aggregate",
    "format_table",
    "format_run_table",
    "format_paper_table",
    "format_report",
    "metric_specs",
    "fill_init_columns",
    "shows_init",
]

CONFIG_COLUMNS: tuple[str, ...] = (
    "encoder",
    "axis",
    "aggregation",
    "position_encoding",
    "pretrained",
    "init",
    "train_fraction",
)
CHECK, CROSS = "✓", "✗"


@dataclass(frozen=True)
class MetricSpec:
    """How a test metric is shown.

    Attributes:
        name: metric name in ``results.csv`` without the ``test_`` prefix.
        header: column header (the paper's).
        scale: multiply by this for display (100: percent).
        decimals: decimals shown.
        lower_is_better: which end is best (bold).
    """

    name: str
    header: str
    scale: float = 1.0
    decimals: int = 3
    lower_is_better: bool = False


#: Column header and decimals of each metric in the paper's tables.
_COLUMNS: dict[str, tuple[str, int]] = {
    "balanced_accuracy": ("Bal. Accuracy", 2),
    "f1": ("F1 Score", 2),
    "average_precision": ("Avg. Precision", 2),
    "roc_auc": ("ROC AUC", 2),
    "mae": ("Mean Absolute Err. (MAE)", 3),
    "rmse": ("Root Mean Square Err. (RMSE)", 3),
}


def _table_metrics(spec: TaskSpec) -> tuple[MetricSpec, ...]:
    scale = 100.0 if spec.unit == "%" else 1.0
    return tuple(
        MetricSpec(name, _COLUMNS[name][0], scale, _COLUMNS[name][1], spec.lower_is_better)
        for name in spec.table_metrics
    )


#: The paper's table columns per task (from :attr:`TaskSpec.table_metrics`).
TABLE_METRICS: dict[str, tuple[MetricSpec, ...]] = {
    name: _table_metrics(spec) for name, spec in TASKS.items()
}


def metric_specs(task: str, metrics: tuple[str, ...] | list[str] = ()) -> tuple[MetricSpec, ...]:
    """The table columns of ``metrics`` (names without ``test_``; ``()``: :data:`TABLE_METRICS` of the task).

    Raises:
        ValueError: a metric without a column definition.
    """
    if not metrics:
        return TABLE_METRICS[task]
    spec = task_spec(task)
    scale = 100.0 if spec.unit == "%" else 1.0
    unknown = [m for m in metrics if m not in _COLUMNS]
    if unknown:
        raise ValueError(f"table metrics must be among {', '.join(_COLUMNS)}, not {unknown}")
    return tuple(MetricSpec(m, _COLUMNS[m][0], scale, _COLUMNS[m][1], spec.lower_is_better) for m in metrics)


#: Run columns averaged over seeds when present (``grid --preset architectures``).
EXTRA_MEANS: tuple[str, ...] = ("seconds_per_epoch", "robust_drop_mean")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def aggregate(results: pd.DataFrame, task: str, metrics: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per configuration (in table order): counts, parameters, init, mean and std per metric.

    Args:
        results: ``results.csv`` as a frame (failed runs included; they only count as failed).
        task: decides the metrics (:data:`TABLE_METRICS`).

    Returns:
        columns ``model``, the configuration columns, ``n_ok``, ``n_failed``, ``n_params``,
        ``encoder_init`` (the distinct values, joined), ``fallback`` (pretrained asked but not used)
        and ``<metric>_mean`` / ``<metric>_std`` for every metric.
    """
    frame = results.copy()
    for col in CONFIG_COLUMNS:
        if col not in frame.columns:
            frame[col] = "-"
    frame["pretrained"] = frame["pretrained"].map(_truthy)
    fill_init_columns(frame)
    for col in ("axis", "aggregation", "position_encoding", "encoder"):
        frame[col] = frame[col].fillna("-").astype(str)
    if "status" not in frame.columns:
        frame["status"] = "ok"
    order = frame["row"] if "row" in frame.columns else pd.Series(range(len(frame)), index=frame.index)
    frame["_order"] = pd.to_numeric(order, errors="coerce").fillna(0)
    rows = []
    for key, group in frame.groupby(list(CONFIG_COLUMNS), sort=False, dropna=False):
        ok = group[group["status"] == "ok"]
        entry: dict[str, Any] = dict(zip(CONFIG_COLUMNS, key, strict=True))
        entry["_order"] = float(group["_order"].min())
        entry["model"] = str(group["model"].iloc[0]) if "model" in group.columns else str(key[0])
        skipped = group[group["status"] == "skipped"]
        entry["n_ok"] = len(ok)
        entry["n_skipped"] = len(skipped)
        entry["n_failed"] = len(group) - len(ok) - len(skipped)
        entry["skip_reason"] = str(skipped["error"].iloc[0]) if len(skipped) and "error" in skipped else ""
        params = pd.to_numeric(ok.get("n_params", pd.Series(dtype=float)), errors="coerce").dropna()
        entry["n_params"] = float(params.iloc[0]) if len(params) else math.nan
        inits = sorted({str(v) for v in ok.get("encoder_init", pd.Series(dtype=str)).dropna()})
        entry["encoder_init"] = ", ".join(inits)
        entry["fallback"] = bool(entry["pretrained"]) and any(i != "imagenet" for i in inits)
        for col in EXTRA_MEANS:
            values = pd.to_numeric(ok.get(col, pd.Series(dtype=float)), errors="coerce").dropna()
            entry[f"{col}_mean"] = float(values.mean()) if len(values) else math.nan
            entry[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        names = {s.name: s for s in (*TABLE_METRICS[task], *metric_specs(task, metrics))}
        for spec in names.values():
            col = f"test_{spec.name}"
            values = pd.to_numeric(ok.get(col, pd.Series(dtype=float)), errors="coerce").dropna()
            entry[f"{spec.name}_mean"] = float(values.mean()) if len(values) else math.nan
            entry[f"{spec.name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            entry[f"{spec.name}_n"] = len(values)
        rows.append(entry)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def fill_init_columns(frame: pd.DataFrame) -> None:
    """Give a results frame ``init`` and ``train_fraction`` (results of grids older than these columns:
    the init ``pretrained`` says, all labels)."""
    implied = frame["pretrained"].map(lambda p: "imagenet" if p else "scratch")
    if "init" not in frame.columns:
        frame["init"] = implied
    frame["init"] = frame["init"].where(frame["init"].notna() & (frame["init"].astype(str) != "-"), implied)
    frame["init"] = frame["init"].astype(str)
    if "train_fraction" not in frame.columns:
        frame["train_fraction"] = 1.0
    frame["train_fraction"] = pd.to_numeric(frame["train_fraction"], errors="coerce").fillna(1.0)


def shows_init(agg: pd.DataFrame) -> bool:
    """Whether a table needs ``Init`` / ``Labels`` columns (another init than scratch / ImageNet, or a
    label fraction below 1); the paper presets' tables keep the paper's layout."""
    if agg.empty:
        return False
    other_init = ~agg["init"].isin(["scratch", "imagenet"])
    return bool(other_init.any() or (agg["train_fraction"] != 1.0).any())


def _params(n: Any) -> str:
    if not _finite(n):
        return "-"
    n = float(n)
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K" if n >= 1e3 else f"{int(n)}"


def _pe_cell(encoder: str, pe: str) -> str:
    if encoder == "conv3d":
        return "-"
    if pe in ("none", "-", ""):
        return CROSS
    return CHECK if pe == "learned" else f"{CHECK} ({pe})"


def format_table(
    results: pd.DataFrame, task: str, title: str | None = None, metrics: tuple[str, ...] = ()
) -> str:
    """The paper-style table of a grid: one row per configuration, mean ± std over seeds.

    The best mean of each metric column (at the shown precision; ties all bold) is in bold. Rows whose
    pretrained encoder fell back to random weights are marked with a dagger; failed seeds are counted.

    Args:
        results: ``results.csv`` as a frame.
        task: ``"adni_ad"`` or ``"brain_age"``.
        title: caption line above the table.
        metrics: the metric columns (:func:`metric_specs`; ``()``: the paper's). Results with a
            robustness stage also get ``s / epoch`` and ``Robustness drop`` columns.

    Returns:
        Markdown text (caption, table, notes).
    """
    specs = metric_specs(task, metrics)
    agg = aggregate(results, task, metrics)
    lines = [f"**{title}**", ""] if title else []
    if agg.empty:
        return "\n".join(lines + ["(no runs)"]) + "\n"
    slice_axes = sorted({a for a, e in zip(agg["axis"], agg["encoder"], strict=True) if e != "conv3d"})
    show_axis = len(slice_axes) > 1
    best: dict[str, float] = {}
    for spec in specs:
        shown = [
            round(v * spec.scale, spec.decimals)
            for v, n in zip(agg[f"{spec.name}_mean"], agg["n_ok"], strict=True)
            if n > 0 and _finite(v)
        ]
        if len(shown) > 1:
            best[spec.name] = min(shown) if spec.lower_is_better else max(shown)
    init_cols = shows_init(agg)
    first = ["Encoder", "Pos. Enc."] + (["Init", "Labels"] if init_cols else ["Pretrained"])
    header = first + (["Axis"] if show_axis else [])
    robust = "robust_drop_mean" in results.columns
    extra = ["s / epoch", f"Robustness drop ({task_spec(task).key_metric})"] if robust else []
    header += [s.header for s in specs] + extra + ["# Params", "Seeds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (len(first) + show_axis))]
    lines[-1] += "|" + "|".join(["---:"] * (len(specs) + len(extra) + 2)) + "|"
    notes: set[str] = set()
    for r in agg.to_dict("records"):
        conv3d = r["encoder"] == "conv3d"
        pretrained = CHECK if r["pretrained"] else CROSS
        if r["fallback"]:
            pretrained += " †"
            notes.add(
                "† ImageNet weights were requested but not used by every seed "
                f"(encoder initialisation: {r['encoder_init']}); see `encoder_init` in results.csv."
            )
        cells = [r["model"], _pe_cell(r["encoder"], r["position_encoding"])]
        cells += [r["init"], f"{r['train_fraction']:.0%}"] if init_cols else [pretrained]
        if show_axis:
            cells.append("-" if conv3d else r["axis"])
        for spec in specs:
            mean, std, n = r[f"{spec.name}_mean"], r[f"{spec.name}_std"], r[f"{spec.name}_n"]
            if n == 0 or not _finite(mean):
                cells.append(_missing_cell(r))
                continue
            m = round(mean * spec.scale, spec.decimals)
            text = f"{m:.{spec.decimals}f}"
            if spec.name in best and m == best[spec.name]:
                text = f"**{text}**"
            if n > 1 and _finite(std):
                text += f" ± {std * spec.scale:.{spec.decimals}f}"
            else:
                notes.add("A value without ± comes from a single seed.")
            cells.append(text)
        if robust:
            cells += _robust_cells(r, specs[0] if specs else None, notes)
        cells += [_params(r["n_params"]), _seeds_cell(r, notes)]
        lines.append("| " + " | ".join(cells) + " |")
    if not show_axis and slice_axes:
        notes.add(f"All slice models use {slice_axes[0]} slices.")
    scale_note = task_spec(task).table_note
    lines += ["", f"Mean ± std (sample std, ddof=1) over seeds; best mean per column in bold. {scale_note}"]
    lines += [f"{n}" for n in sorted(notes)]
    return "\n".join(lines) + "\n"


def _seeds_cell(r: dict[str, Any], notes: set[str]) -> str:
    """The ``Seeds`` cell: finished seeds, and how many were skipped or failed (with a note)."""
    seeds = str(r["n_ok"])
    if r["n_skipped"]:
        seeds += f" ({r['n_skipped']} skipped)"
        notes.add(f"Skipped: {r['skip_reason']}.")
    if r["n_failed"]:
        seeds += f" ({r['n_failed']} failed)"
        notes.add("Failed seeds are left out of mean and std; their errors are in results.csv.")
    return seeds


def _robust_cells(r: dict[str, Any], key: MetricSpec | None, notes: set[str]) -> list[str]:
    """``s / epoch`` and ``Robustness drop`` cells (the drop in the key metric's display unit)."""
    sec = r["seconds_per_epoch_mean"]
    cells = [f"{sec:.0f}" if _finite(sec) else "-"]
    drop, std = r["robust_drop_mean_mean"], r["robust_drop_mean_std"]
    scale, decimals = (key.scale, key.decimals) if key is not None else (1.0, 3)
    text = f"{drop * scale:.{decimals}f}" if _finite(drop) else "-"
    if _finite(drop) and _finite(std):
        text += f" ± {std * scale:.{decimals}f}"
    notes.add(
        "Robustness drop: how much worse the key metric is under the robustness overlay "
        "(bias_field, gibbs, noise, contrast at the severities run; averaged), clean minus perturbed "
        "(perturbed minus clean for errors); per perturbation in results.csv (`robust_*`)."
    )
    return cells + [text]


def _missing_cell(r: dict[str, Any]) -> str:
    """The metric cell of a row without a value: ``skipped``, ``failed`` or ``n/a``."""
    if r["n_ok"] == 0:
        return "skipped" if r["n_skipped"] and not r["n_failed"] else "failed"
    return "n/a"


def _fmt(value: Any, spec: MetricSpec) -> str:
    return f"{float(value) * spec.scale:.{spec.decimals}f}" if _finite(value) else "n/a"


def format_run_table(results: pd.DataFrame, task: str, metrics: tuple[str, ...] = ()) -> str:
    """One row per run: seed, encoder init, test metrics with their 95 % bootstrap confidence intervals
    (``metrics``: as for :func:`format_table`)."""
    specs = metric_specs(task, metrics)
    header = ["Run", "Seed", "Status", "Encoder init"] + [f"{s.header} [95% CI]" for s in specs]
    header += ["Best epoch", "Wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in results.to_dict("records"):
        cells = [str(r.get("run_id", "")), str(r.get("seed", "")), str(r.get("status", ""))]
        cells.append(str(r.get("encoder_init", "")) if r.get("status") == "ok" else "")
        for spec in specs:
            if r.get("status") != "ok":
                cells.append("")
                continue
            v, lo, hi = (r.get(f"test_{spec.name}{s}") for s in ("", "_ci_low", "_ci_high"))
            cells.append(f"{_fmt(v, spec)} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]")
        epoch = r.get("best_epoch")
        cells.append(str(int(epoch)) if _finite(epoch) else "")
        wall = r.get("wall_time_s")
        cells.append(f"{float(wall):.0f}" if _finite(wall) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_paper_table(preset: Preset) -> str:
    """The paper's numbers for a preset, in the same layout as :func:`format_table`."""
    specs = TABLE_METRICS[preset.task]
    slice_axes = sorted({c.axis for c in preset.rows if not c.is_conv3d and c.axis})
    show_axis = len(slice_axes) > 1
    header = ["Encoder", "Pos. Enc.", "Pretrained"] + (["Axis"] if show_axis else [])
    header += [s.header for s in specs] + (["# Params"] if preset.paper_params else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for i, (c, res) in enumerate(zip(preset.rows, preset.paper, strict=True)):
        n = c.normalised()
        cells = [n.label(), _pe_cell(n.encoder, n.position_encoding), CHECK if n.pretrained else CROSS]
        if show_axis:
            cells.append(n.axis or "-")
        for spec in specs:
            mean, std = res[spec.name]
            cells.append(f"{mean:.{spec.decimals}f} ± {std:.3f}")
        if preset.paper_params:
            cells.append(preset.paper_params[i])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_report(
    results: pd.DataFrame, task: str, preset: Preset | None = None, title: str | None = None
) -> str:
    """The whole ``table.md``: our table, the per-run table with confidence intervals, the paper's."""
    data = sorted({str(d) for d in results.get("data", [])} - {"nan"}) if len(results) else []
    synthetic = any("synthetic" in d for d in data)
    caption = title or (preset.title if preset else f"Test results ({task})")
    parts = [f"# {caption}", ""]
    if data:
        label = "the synthetic demo cohort" if synthetic and len(data) == 1 else ", ".join(data)
        parts.append(f"Data: {label}.")
        if synthetic:
            parts.append(
                "**Synthetic data: these numbers test the pipeline; they are not comparable to the paper's.**"
            )
        parts.append("")
    metrics = preset.table_metrics if preset is not None else ()
    parts += [
        format_table(results, task, metrics=metrics),
        "## Per run (95% bootstrap CI over test subjects)",
    ]
    parts += ["", format_run_table(results, task, metrics)]
    if preset is not None and preset.paper:
        parts += [f"## The paper ({preset.note})", "", format_paper_table(preset)]
    return "\n".join(parts)
