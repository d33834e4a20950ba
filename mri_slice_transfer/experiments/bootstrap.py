"""Bootstrap confidence intervals of a run's test metrics, from its per-scan predictions.

Confidence intervals are 95 % percentile bootstrap intervals of each test metric of one run, from its
per-scan ``eval/test_predictions.csv``, computed with the bundles' own
:func:`mri_slice_transfer.engine.metrics.compute_metrics` (or its vectorised twin, tested equal).
Resampling is by **subject** (all scans of a drawn subject go in together), since repeated scans of
one person are not independent; with one scan per subject this is the ordinary per-scan bootstrap.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mri_slice_transfer.vocabulary import task_spec

__all__ = [
    "bootstrap_ci",
    "bootstrap_from_predictions",
    "predictions_arrays",
    "headline_metric",
    "resample_metrics",
]


def predictions_arrays(task: str, csv_path: str | os.PathLike) -> tuple[Any, Any, Any]:
    """``(raw network outputs, labels, subject groups)`` of the readable scans of a predictions CSV.

    For ``adni_ad`` the output is the ``logit`` column (in CSVs of older versions: the logit recovered
    from ``probability``, inexact where probabilities round to 0 or 1); for ``brain_age`` it is
    ``predicted_age``. Rows with ``status`` other than ``ok`` are left out (as in ``test_metrics.json``).

    Raises:
        FileNotFoundError, KeyError: missing file or columns (the message names the file).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: test predictions not found")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    spec = task_spec(task)
    column = spec.prediction_columns[0]
    if spec.is_binary:
        column = "logit" if "logit" in frame.columns else "probability"
    missing = [c for c in ("label", column) if c not in frame.columns]
    if missing:
        raise KeyError(f"{path}: missing column(s) {', '.join(missing)}")
    if "status" in frame.columns:
        frame = frame[frame["status"].astype(str) == "ok"]
    frame = frame.dropna(subset=["label", column])
    value = frame[column].to_numpy(dtype=np.float64)
    if column == "probability":
        with np.errstate(divide="ignore"):
            value = np.log(value) - np.log1p(-value)
    groups = (
        frame["subject_id"].astype(str).to_numpy()
        if "subject_id" in frame.columns
        else np.arange(len(frame)).astype(str)
    )
    return value, frame["label"].to_numpy(dtype=np.float64), groups


def _weighted_metrics(task: str, pred: Any, label: Any, counts: Any, threshold: Any) -> dict[str, Any]:
    """Every metric of ``task`` for many resamples at once; resample ``b`` holds scan ``i``
    ``counts[b, i]`` times.

    The same definitions as :func:`~mri_slice_transfer.engine.metrics.compute_metrics` (decisions at
    ``threshold``, a ``DecisionThreshold`` or a probability, compared in logit space; average precision
    and ROC AUC rank the logits, tied scores grouped, NaN unless both classes are present; balanced
    accuracy over the classes present; F1 with zero division 0; MAE, RMSE, Pearson r), vectorised: one
    resample costs microseconds instead of the ~12 ms of four sklearn calls.
    ``tests/test_grid.py`` checks that both give the same intervals.
    """
    w = counts.astype(np.float64)
    n = w.sum(axis=1)
    if not task_spec(task).is_binary:
        err = pred - label
        mx, my = (w @ pred) / n, (w @ label) / n
        xc, yc = pred[None, :] - mx[:, None], label[None, :] - my[:, None]
        sxx, syy, sxy = (w * xc * xc).sum(1), (w * yc * yc).sum(1), (w * xc * yc).sum(1)
        defined = (n > 1) & (sxx > 0) & (syy > 0)
        r = np.where(defined, sxy / np.sqrt(np.where(defined, sxx * syy, 1.0)), np.nan)
        return {"mae": (w @ np.abs(err)) / n, "rmse": np.sqrt((w @ err**2) / n), "pearson_r": r}
    from mri_slice_transfer.engine.metrics import as_threshold

    y = (label > 0.5).astype(np.float64)
    hat = as_threshold(threshold).decide(pred).astype(np.float64)
    pos, neg = w @ y, w @ (1.0 - y)
    tp, fp = w @ (y * hat), w @ ((1.0 - y) * hat)
    fn, tn = pos - tp, neg - fp
    rec_pos = np.divide(tp, pos, out=np.zeros_like(tp), where=pos > 0)
    rec_neg = np.divide(tn, neg, out=np.zeros_like(tn), where=neg > 0)
    both = (pos > 0) & (neg > 0)
    bacc = np.where(both, (rec_pos + rec_neg) / 2.0, np.where(pos > 0, rec_pos, rec_neg))
    denom = 2.0 * tp + fp + fn
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    order = np.argsort(-pred, kind="mergesort")
    ps, ys, ws = pred[order], y[order], w[:, order]
    last = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])  # end of each group of tied scores
    tps = np.cumsum(ws * ys, axis=1)[:, last]
    fps = np.cumsum(ws * (1.0 - ys), axis=1)[:, last]
    safe_pos, safe_neg = np.where(pos > 0, pos, 1.0)[:, None], np.where(neg > 0, neg, 1.0)[:, None]
    tpr, fpr = tps / safe_pos, fps / safe_neg
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
    zeros = np.zeros((len(w), 1))
    d_tpr = np.diff(np.hstack([zeros, tpr]), axis=1)
    ap = (d_tpr * precision).sum(axis=1)
    tpr0, fpr0 = np.hstack([zeros, tpr]), np.hstack([zeros, fpr])
    auc = (np.diff(fpr0, axis=1) * (tpr0[:, 1:] + tpr0[:, :-1]) / 2.0).sum(axis=1)
    return {
        "balanced_accuracy": bacc,
        "f1": f1,
        "average_precision": np.where(both, ap, np.nan),
        "roc_auc": np.where(both, auc, np.nan),
    }


def _resample_counts(groups: Any, n_bootstrap: int, seed: int) -> Any:
    """``counts[b, i]``: how many times scan ``i`` is in resample ``b`` when whole groups are drawn."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_groups, size=(int(n_bootstrap), n_groups))
    group_counts = np.zeros((int(n_bootstrap), n_groups), dtype=np.int64)
    np.add.at(group_counts, (np.repeat(np.arange(int(n_bootstrap)), n_groups), picks.ravel()), 1)
    return group_counts[:, inverse]


def resample_metrics(
    task: str, pred: Any, label: Any, counts: Any, threshold: Any = 0.5, exact: bool = False
) -> dict[str, Any]:
    """Every metric of ``task`` on every resample; resample ``b`` holds scan ``i`` ``counts[b, i]`` times.

    Args:
        task: ``"adni_ad"`` (``pred`` are logits) or ``"brain_age"`` (``pred`` are ages).
        pred, label: float arrays, one value per scan.
        counts: integer array ``[n_resamples, n_scans]``, every row with a positive sum.
        threshold: AD decision threshold (see :func:`bootstrap_ci`).
        exact: call :func:`~mri_slice_transfer.engine.metrics.compute_metrics` on every resample
            (slow) instead of its vectorised twin (equal on every resample: ``tests/test_grid.py``).

    Returns:
        ``{metric: array [n_resamples]}`` (NaN where a metric is undefined).
    """
    from mri_slice_transfer.engine.metrics import compute_metrics

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class resamples: sklearn warns, the value is still defined
        if not exact:
            return _weighted_metrics(task, pred, label, counts, threshold)
        draws: dict[str, Any] = {}
        for b in range(len(counts)):
            idx = np.repeat(np.arange(len(pred)), counts[b])
            for name, value in compute_metrics(task, pred[idx], label[idx], threshold).items():
                draws.setdefault(name, np.empty(len(counts)))[b] = value
        return draws


def bootstrap_ci(
    task: str,
    pred: Sequence[float],
    label: Sequence[float],
    groups: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    exact: bool = False,
    threshold: Any = 0.5,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence interval of every metric of ``task``.

    Args:
        task: ``"adni_ad"`` (``pred`` are logits) or ``"brain_age"`` (``pred`` are ages).
        pred, label: one value per scan.
        groups: resampling unit per scan (subject ids); default: each scan alone.
        n_bootstrap: number of resamples.
        seed: random seed.
        level: coverage (0.95: the 2.5th and 97.5th percentiles).
        exact: score every resample with :func:`~mri_slice_transfer.engine.metrics.compute_metrics`
            itself (slow: about 12 ms per AD resample) instead of its vectorised equivalent.
        threshold: AD decision threshold of balanced accuracy and F1: a
            :class:`~mri_slice_transfer.engine.metrics.DecisionThreshold` (the run's
            ``threshold_logit`` in ``test_metrics.json``) or a probability.

    Returns:
        ``{metric: (low, high)}``; NaN when fewer than half the resamples give a defined value (e.g.
        average precision when resamples often hold one class only).
    """
    from mri_slice_transfer.engine.metrics import compute_metrics

    pred = np.asarray(pred, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    names = list(compute_metrics(task, np.array([0.0, 1.0]), np.array([0.0, 1.0])))
    if len(pred) == 0 or n_bootstrap <= 0:
        return {n: (math.nan, math.nan) for n in names}
    keys = groups if groups is not None else np.arange(len(pred)).astype(str)
    counts = _resample_counts(keys, n_bootstrap, seed)
    draws = resample_metrics(task, pred, label, counts, threshold, exact=exact)
    alpha = (1.0 - level) / 2.0
    out = {}
    for name in names:
        arr = np.asarray(draws[name], dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if len(arr) < 0.5 * n_bootstrap:
            out[name] = (math.nan, math.nan)
        else:
            out[name] = (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1.0 - alpha)))
    return out


def bootstrap_from_predictions(
    task: str,
    csv_path: str | os.PathLike,
    n_bootstrap: int = 1000,
    seed: int = 0,
    threshold: Any = 0.5,
) -> dict[str, Any]:
    """``test_<metric>_ci_low`` / ``_ci_high`` columns of one run (see :func:`bootstrap_ci`)."""
    pred, label, groups = predictions_arrays(task, csv_path)
    cis = bootstrap_ci(task, pred, label, groups, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold)
    row: dict[str, Any] = {}
    for name, (lo, hi) in cis.items():
        row[f"test_{name}_ci_low"] = lo
        row[f"test_{name}_ci_high"] = hi
    row["bootstrap_resamples"] = int(n_bootstrap)
    row["bootstrap_unit"] = "subject"
    row["n_test_subjects"] = len(set(groups.tolist()))
    return row


def headline_metric(task: str, row: Mapping[str, Any]) -> tuple[str, str]:
    """The key test metric of a result row with its confidence interval, for progress lines."""
    name = task_spec(task).key_metric
    value = row.get(f"test_{name}")
    lo, hi = row.get(f"test_{name}_ci_low"), row.get(f"test_{name}_ci_high")

    def f(v: Any) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"

    return name, f"{f(value)} (95% CI {f(lo)}-{f(hi)})"
