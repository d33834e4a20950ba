"""Validation/test metrics for both tasks, as Ignite ``EpochMetric`` objects (DDP-gathered).

AD (binary, the network gives one logit): balanced accuracy (key metric), F1, average precision and
ROC AUC, thresholding the probability at 0.5. Brain age: MAE (key metric, lower is better), RMSE and
Pearson r. Undefined values (e.g. ROC AUC with one class present) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn import metrics as skm

__all__ = [
    "KEY_METRIC",
    "LOWER_IS_BETTER",
    "flat_pred_label",
    "classification_metrics",
    "regression_metrics",
    "compute_metrics",
    "make_key_metric",
    "make_additional_metrics",
    "metric_cmp_fn",
]

#: Key metric name per task.
KEY_METRIC = {"adni_ad": "balanced_accuracy", "brain_age": "mae"}
#: Whether a smaller key metric is better.
LOWER_IS_BETTER = {"adni_ad": False, "brain_age": True}
THRESHOLD = 0.5


def flat_pred_label(output: dict | Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine output (batched dict or decollated list) -> fp32 ``(pred, label)`` of shape ``(N,)``."""
    if isinstance(output, dict):
        pred, label = output["pred"], output["label"]
    else:
        pred = torch.stack([torch.as_tensor(o["pred"]).reshape(-1)[0] for o in output])
        label = torch.stack([torch.as_tensor(o["label"]).reshape(-1)[0] for o in output])
    return torch.as_tensor(pred).detach().float().reshape(-1).cpu(), torch.as_tensor(
        label
    ).detach().float().reshape(-1).cpu()


def _safe(fn: Callable[[], float]) -> float:
    try:
        value = float(fn())
    except ValueError:
        return math.nan
    return value


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of AD-vs-CN logits against 0/1 labels (probability threshold 0.5)."""
    prob = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    y = np.asarray(labels).astype(int)
    hat = (prob >= THRESHOLD).astype(int)
    both = len(np.unique(y)) > 1
    return {
        "balanced_accuracy": _safe(lambda: skm.balanced_accuracy_score(y, hat)),
        "f1": _safe(lambda: skm.f1_score(y, hat, zero_division=0)),
        "average_precision": _safe(lambda: skm.average_precision_score(y, prob)) if both else math.nan,
        "roc_auc": _safe(lambda: skm.roc_auc_score(y, prob)) if both else math.nan,
    }


def regression_metrics(pred: np.ndarray, age: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and Pearson r of predicted against true age."""
    pred, age = np.asarray(pred, dtype=np.float64), np.asarray(age, dtype=np.float64)
    err = pred - age
    r = math.nan
    if len(age) > 1 and np.std(pred) > 0 and np.std(age) > 0:
        r = float(np.corrcoef(pred, age)[0, 1])
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))), "pearson_r": r}


def compute_metrics(task: str, pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """All metrics of ``task`` (raw network outputs against labels)."""
    if task == "adni_ad":
        return classification_metrics(pred, label)
    if task == "brain_age":
        return regression_metrics(pred, label)
    raise ValueError(f"unknown task {task!r}; expected 'adni_ad' or 'brain_age'")


def _epoch_metric(task: str, name: str) -> EpochMetric:
    def fn(pred: torch.Tensor, label: torch.Tensor) -> float:
        return compute_metrics(task, pred.numpy(), label.numpy())[name]

    return EpochMetric(fn, output_transform=flat_pred_label, check_compute_fn=False)


def make_key_metric(task: str, prefix: str = "val_") -> dict[str, EpochMetric]:
    """``{"val_<key>": metric}`` for the evaluator's ``key_val_metric``."""
    return {prefix + KEY_METRIC[task]: _epoch_metric(task, KEY_METRIC[task])}


def make_additional_metrics(task: str, prefix: str = "val_") -> dict[str, EpochMetric]:
    """The other metrics of ``task`` for the evaluator's ``additional_metrics``."""
    names = compute_metrics(task, np.array([0.0, 1.0]), np.array([0.0, 1.0])).keys()
    return {prefix + n: _epoch_metric(task, n) for n in names if n != KEY_METRIC[task]}


def metric_cmp_fn(task: str) -> Callable[[float, float], bool]:
    """``current, best -> improved`` for the evaluator's best-metric tracking."""
    if LOWER_IS_BETTER[task]:
        return lambda current, best: best == -1 or current < best
    return lambda current, best: current > best
