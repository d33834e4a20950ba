"""Per-run plots of an evaluation, beside its predictions CSV in ``eval/``.

AD: ROC and precision-recall curves of the test logits with the operating point (the decision threshold
the evaluation used, normally the one recorded from validation) marked: ``test_roc_pr.png``. Brain age:
predicted against chronological age with the identity line, before and (when the model records an
age-bias correction) after it: ``test_age_scatter.png``.

:class:`RunPlots` draws them when the evaluator completes (``evaluate.json``, after the
:class:`~mri_slice_transfer.engine.predictions.PredictionWriter` that writes the CSV it reads). A plot
that fails is a warning, never a failed evaluation. matplotlib is imported where it is used
(``docs/architecture.md``, import rule 3). PNGs are written atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ignite.engine import Engine, Events

from mri_slice_transfer.engine.brain_age import AgeBias
from mri_slice_transfer.engine.distributed import is_main_process
from mri_slice_transfer.engine.metrics import THRESHOLD, DecisionThreshold, as_threshold
from mri_slice_transfer.plotting import pyplot, save_figure
from mri_slice_transfer.vocabulary import Task, task_spec

__all__ = [
    "AGE_SCATTER_PNG",
    "ROC_PR_PNG",
    "RunPlots",
    "operating_point",
    "plot_age_scatter",
    "plot_roc_pr",
    "write_run_plots",
]

logger = logging.getLogger(__name__)

#: File names of the plots (in the predictions CSV's folder).
ROC_PR_PNG = "test_roc_pr.png"
AGE_SCATTER_PNG = "test_age_scatter.png"


def _scored(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of predicted, labelled scans."""
    ok = frame["status"] == "ok" if "status" in frame else pd.Series(True, index=frame.index)
    return frame[ok & frame["label"].notna()] if "label" in frame else frame.iloc[:0]


def operating_point(
    labels: np.ndarray, logits: np.ndarray, threshold: float | DecisionThreshold
) -> tuple[float, float, float]:
    """Where the decision threshold puts a classifier on its ROC and precision-recall curves.

    Args:
        labels: (N,) 0 = CN, 1 = AD (both present).
        logits: (N,) network outputs.
        threshold: AD when ``logit >= cut`` (a probability is converted).

    Returns:
        ``(false positive rate, true positive rate = recall, precision)``; precision is 1.0 when no
        scan is called AD (the end point of scikit-learn's precision-recall curve).
    """
    y = np.asarray(labels, dtype=np.float64) > 0.5
    decided = as_threshold(threshold).decide(logits)
    precision = float((decided & y).sum() / decided.sum()) if decided.any() else 1.0
    return float(decided[~y].mean()), float(decided[y].mean()), precision


def plot_roc_pr(frame: pd.DataFrame, threshold: float | DecisionThreshold, path: str | os.PathLike) -> Path:
    """ROC and precision-recall curves of AD logits with the operating point marked.

    Args:
        frame: an AD predictions table with ``label`` (0 = CN, 1 = AD), ``logit`` and ``status``.
        threshold: the decision threshold (AD when ``logit >= cut``).
        path: the PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: the readable labelled scans do not include both classes (no curve is defined).
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    rows = _scored(frame)
    y, z = rows["label"].to_numpy(float) > 0.5, rows["logit"].to_numpy(float)
    if y.all() or not y.any():
        raise ValueError(f"ROC / PR curves need scans of both classes, not {len(y)} of one")
    cut = as_threshold(threshold)
    fpr_op, tpr_op, precision_op = operating_point(y, z, cut)
    fpr, tpr, _ = roc_curve(y, z)
    precision, recall, _ = precision_recall_curve(y, z)
    plt = pyplot()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(9, 4.2))
    label = f"operating point (P(AD) >= {cut.probability:.3g})"
    roc.plot(fpr, tpr, color="C0")
    roc.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    roc.plot([fpr_op], [tpr_op], "o", color="C3", label=label)
    roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)")
    roc.set_title(f"ROC, {len(y)} scans ({int(y.sum())} AD)", fontsize=10)
    pr.plot(recall, precision, color="C0", drawstyle="steps-post")  # as scikit-learn's display draws it
    pr.axhline(y.mean(), color="0.7", linestyle="--", linewidth=1)
    pr.plot([tpr_op], [precision_op], "o", color="C3", label=label)
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", ylim=(0, 1.02))
    pr.set_title("precision-recall", fontsize=10)
    for ax in (roc, pr):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_age_scatter(frame: pd.DataFrame, path: str | os.PathLike, age_bias: AgeBias | None = None) -> Path:
    """Predicted against chronological age with the identity line; beside it the corrected ages.

    Args:
        frame: a brain-age predictions table with ``label`` (age), ``predicted_age``, ``status`` and,
            when the model records an age-bias correction, ``corrected_age``.
        path: the PNG to write.
        age_bias: the model's correction: its line (fitted on validation) is drawn on the raw panel.

    Returns:
        ``path``.

    Raises:
        ValueError: no readable scan with an age.
    """
    columns = task_spec(Task.BRAIN_AGE).prediction_columns
    rows = _scored(frame)
    if rows.empty:
        raise ValueError("an age scatter needs scans with a chronological age; there are none")
    panels = [(c, c.replace("_", " ")) for c in columns[:2] if c in rows and rows[c].notna().any()]
    age = rows["label"].to_numpy(float)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.2), squeeze=False)
    values = np.concatenate([age, *(rows[c].to_numpy(float) for c, _ in panels)])
    lo, hi = np.nanmin(values) - 1, np.nanmax(values) + 1
    for ax, (column, name) in zip(axes[0], panels, strict=True):
        pred = rows[column].to_numpy(float)
        mae = np.nanmean(np.abs(pred - age))
        ax.scatter(age, pred, s=14, alpha=0.7, color="C0")
        ax.plot([lo, hi], [lo, hi], color="0.5", linestyle="--", linewidth=1, label="identity")
        if age_bias is not None and column == columns[0]:
            line = f"validation fit: {age_bias.slope:.2f} x age + {age_bias.intercept:.1f}"
            ax.plot([lo, hi], age_bias.expected([lo, hi]), color="C1", linewidth=1, label=line)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="chronological age (years)", ylabel=f"{name} (years)")
        ax.set_title(f"{name}: MAE {mae:.2f} y, {len(age)} scans", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_run_plots(
    task: str,
    predictions_csv: str | os.PathLike,
    threshold: float | DecisionThreshold = THRESHOLD,
    age_bias: AgeBias | None = None,
) -> list[Path]:
    """Draw the task's plots from an evaluation's predictions CSV, beside it.

    Args:
        task: ``"adni_ad"`` or ``"brain_age"``.
        predictions_csv: ``eval/test_predictions.csv`` (with a ``label`` column).
        threshold: AD: the decision threshold the evaluation used.
        age_bias: brain age: the model's correction (its line is drawn).

    Returns:
        the PNGs written.

    Raises:
        ValueError: the table cannot give the plot (one class only, no ages); OSError on unreadable or
            unwritable files.
    """
    csv = Path(predictions_csv)
    frame = pd.read_csv(csv)
    if task_spec(task).is_binary:
        return [plot_roc_pr(frame, threshold, csv.with_name(ROC_PR_PNG))]
    return [plot_age_scatter(frame, csv.with_name(AGE_SCATTER_PNG), age_bias)]


class RunPlots:
    """Ignite handler: :func:`write_run_plots` when the evaluation completes; a failure only warns.

    Attach it after the :class:`~mri_slice_transfer.engine.predictions.PredictionWriter` of
    ``predictions_csv`` (handlers of one event run in the order they were attached).

    Args:
        task: the task.
        predictions_csv: the CSV the writer writes.
        threshold: AD: the evaluation's decision threshold (``evaluate.json``: ``@test_threshold``).
        record: the model's :class:`~mri_slice_transfer.engine.model_record.ModelRecord` (brain age:
            its ``age_bias`` line is drawn; None: not drawn).
    """

    def __init__(
        self,
        task: str,
        predictions_csv: str,
        threshold: float | DecisionThreshold | None = THRESHOLD,
        record: Any = None,
    ) -> None:
        self.task = task
        self.age_bias: AgeBias | None = getattr(record, "age_bias", None)
        self.predictions_csv = Path(predictions_csv)
        self.threshold = THRESHOLD if threshold is None else threshold
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not is_main_process():
            return
        try:
            self.written = write_run_plots(self.task, self.predictions_csv, self.threshold, self.age_bias)
        except Exception as exc:  # noqa: BLE001 - a plot never fails the evaluation
            name = type(exc).__name__
            logger.warning("no evaluation plot from %s: %s: %s", self.predictions_csv, name, exc)
            return
        logger.info("wrote %s", ", ".join(str(p) for p in self.written))
