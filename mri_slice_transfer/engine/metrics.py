"""Validation/test metrics for both tasks, as Ignite ``EpochMetric`` objects (DDP-gathered).

AD (binary, the network gives one logit): balanced accuracy (key metric), F1, average precision and
ROC AUC, and the decision threshold that balanced accuracy and F1 use. The threshold is either
fixed (0.5, the paper's) or, with ``decision_threshold: "validation"``, chosen on each validation to
maximise balanced accuracy there (:func:`tune_threshold`); the best epoch's threshold is saved beside
the model (``models/model.json``, see :class:`~mri_slice_transfer.engine.handlers.BestModelSaver`) and
evaluation and inference then use it (:func:`operating_threshold`).

Decisions are made in logit space (:class:`DecisionThreshold`: AD when ``logit >= cut``), so that
saturated outputs (logits beyond about +-37, whose probabilities round to 0 or 1) are still decided
and scored exactly; the probability ``sigmoid(cut)`` is a derived value for people (``threshold``
beside ``threshold_logit`` in the metrics, ``val_threshold`` beside ``val_threshold_logit`` in
``model.json``). Average precision and ROC AUC rank the logits, not the rounded probabilities.

Brain age: MAE (key metric, lower is better), RMSE and Pearson r. Undefined values (e.g. ROC AUC with
one class present) are NaN.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ignite.metrics import EpochMetric
from scipy.special import expit
from scipy.special import logit as _logit
from sklearn import metrics as skm

from mri_slice_transfer.vocabulary import task_spec

__all__ = [
    "THRESHOLD",
    "DecisionThreshold",
    "as_threshold",
    "metrics_threshold",
    "flat_pred_label",
    "carry_status",
    "STATUS_KEY",
    "tune_threshold",
    "threshold_setting",
    "operating_threshold",
    "classification_metrics",
    "pearson_r",
    "regression_metrics",
    "compute_metrics",
    "make_key_metric",
    "make_additional_metrics",
    "metric_cmp_fn",
    "lower_is_better",
]

#: The fixed probability threshold (the paper's).
THRESHOLD = 0.5

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecisionThreshold:
    """The AD decision rule: AD when the network's logit is ``>= logit`` (a cut in logit space).

    Args:
        logit: the cut; any float, also beyond the range where ``sigmoid`` is distinguishable from
            0 or 1 (``-inf``: every scan is AD).
    """

    logit: float

    @classmethod
    def from_probability(cls, probability: float) -> DecisionThreshold:
        """The cut ``logit(probability)`` of a probability threshold in [0, 1]."""
        p = float(probability)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"a probability threshold must be between 0 and 1, not {probability!r}")
        return cls(float(_logit(p)))

    @property
    def probability(self) -> float:
        """``sigmoid(logit)`` for display (0.0 or 1.0 for saturated cuts)."""
        return float(expit(self.logit))

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """Boolean AD decisions of ``logits`` (``logit >= cut``)."""
        return np.asarray(logits, dtype=np.float64) >= self.logit


def as_threshold(threshold: float | DecisionThreshold) -> DecisionThreshold:
    """``threshold`` as a :class:`DecisionThreshold`; a float is a probability threshold (e.g. 0.5)."""
    if isinstance(threshold, DecisionThreshold):
        return threshold
    return DecisionThreshold.from_probability(threshold)


#: The output key :func:`carry_status` copies each scan's ``status`` into: the evaluator's metrics see
#: only its output (``image``, ``label``, ``pred``), not the batch where ``SafeTransform`` puts ``status``.
STATUS_KEY = "scan_status"


def carry_status(data: dict) -> dict:
    """An evaluator ``postprocessing``: copy the scan's ``status`` (``ok`` if absent) into :data:`STATUS_KEY`.

    MONAI's postprocessing sees the batch and output of one scan merged and keeps new keys in the
    output, where :func:`flat_pred_label` finds them.

    Args:
        data: one scan's batch and output items.

    Returns:
        ``data`` with :data:`STATUS_KEY` added.
    """
    return {**data, STATUS_KEY: data.get("status", "ok")}


def flat_pred_label(output: dict | Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine output (batched dict or decollated list) -> fp32 ``(pred, label)`` of shape ``(N,)``.

    Scans whose :data:`STATUS_KEY` is not ``"ok"`` (unreadable, replaced by a blank image; see
    :func:`carry_status`) are left out, so the metrics are over the readable scans only.
    """
    if isinstance(output, dict):
        pred, label = output["pred"], output["label"]
    else:
        output = [o for o in output if o.get(STATUS_KEY, "ok") == "ok"]
        pred = torch.tensor([float(torch.as_tensor(o["pred"]).reshape(-1)[0]) for o in output])
        label = torch.tensor([float(torch.as_tensor(o["label"]).reshape(-1)[0]) for o in output])
    return torch.as_tensor(pred).detach().float().reshape(-1).cpu(), torch.as_tensor(
        label
    ).detach().float().reshape(-1).cpu()


def _safe(fn: Callable[[], float]) -> float:
    try:
        value = float(fn())
    except ValueError:
        return math.nan
    return value


def metrics_threshold(metrics: dict) -> DecisionThreshold:
    """The threshold a ``test_metrics.json`` was computed at: ``threshold_logit`` (or, written by older
    versions, the probability ``threshold``; 0.5 when neither is there)."""
    if metrics.get("threshold_logit") is not None:
        return DecisionThreshold(float(metrics["threshold_logit"]))
    return as_threshold(metrics.get("threshold", THRESHOLD))


def tune_threshold(logits: np.ndarray, labels: np.ndarray) -> DecisionThreshold:
    """The decision threshold that maximises balanced accuracy on these scans.

    Candidate cuts lie half-way (in logit space) between neighbouring distinct logits, so no scan sits
    on the threshold; of several equally good cuts the middle one is taken. With one class only (or no
    scans) the fixed :data:`THRESHOLD` is returned. The cut stays a logit, so it separates scans whose
    probabilities round to the same value (``|logit|`` above about 37) and any finite logit works.

    Args:
        logits: (N,) network outputs (AD logits) of the validation scans.
        labels: (N,) 0 = CN, 1 = AD.

    Returns:
        the threshold: predict AD when ``logit >= threshold.logit``.
    """
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    if len(z) == 0 or y.all() or not y.any():
        return as_threshold(THRESHOLD)
    u = np.unique(z)
    cuts = np.r_[u[0] - 1.0, u[:-1] + (u[1:] - u[:-1]) / 2.0, u[-1] + 1.0]
    tpr = (z[y][None, :] > cuts[:, None]).mean(axis=1)
    tnr = (z[~y][None, :] < cuts[:, None]).mean(axis=1)
    bacc = (tpr + tnr) / 2.0
    best = np.flatnonzero(bacc == bacc.max())
    return DecisionThreshold(float(cuts[best[len(best) // 2]]))


def threshold_setting(decision_threshold: str | float) -> float | None:
    """Parse the bundles' ``decision_threshold``: ``"validation"`` -> None (tune), or a probability.

    Raises:
        ValueError: neither ``"validation"`` nor a number strictly between 0 and 1.
    """
    if isinstance(decision_threshold, str) and decision_threshold.strip().lower() == "validation":
        return None
    try:
        value = float(decision_threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"decision_threshold must be 'validation' or a probability between 0 and 1 (e.g. 0.5), "
            f"got {decision_threshold!r}"
        )
    return value


def operating_threshold(
    decision_threshold: str | float, model_json: str | Path, task: str | None = None
) -> DecisionThreshold | None:
    """The decision threshold evaluation and inference use for a trained AD model.

    Args:
        task: the bundle's task; a regression task has no threshold (None is returned).
        decision_threshold: ``"validation"`` (the threshold chosen on validation for the saved model,
            read from ``model_json``) or a fixed probability.
        model_json: the file :class:`~mri_slice_transfer.engine.handlers.BestModelSaver` writes beside
            ``model.pt`` (``models/model.json``; the path of ``model.pt`` finds it too):
            ``val_threshold_logit`` (the cut), or in records of older versions only ``val_threshold``
            (a probability, converted to its logit).

    Returns:
        the threshold; with ``"validation"`` and no threshold recorded (a model trained with a fixed
        threshold or by an older version) a warning is logged and :data:`THRESHOLD` returned.

    Raises:
        ValueError: the record's ``val_threshold`` and ``val_threshold_logit`` disagree (one was
            edited by hand) or are not numbers; the message names the file.
    """
    if task is not None and not task_spec(task).is_binary:
        return None
    fixed = threshold_setting(decision_threshold)
    if fixed is not None:
        return as_threshold(fixed)
    path = Path(model_json)
    path = path.with_suffix(".json") if path.suffix == ".pt" else path
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
        problem = None if "val_threshold" in metrics else "no val_threshold"
    except (OSError, ValueError, KeyError, TypeError) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        logger.warning(
            "decision_threshold 'validation': no validation threshold in %s (%s); using %.2f",
            path, problem, THRESHOLD,
        )  # fmt: skip
        return as_threshold(THRESHOLD)
    value = _recorded_threshold(metrics, path)
    logger.info(
        "decision threshold: logit %.6g (probability %.4f, chosen on validation, from %s)",
        value.logit, value.probability, path,
    )  # fmt: skip
    return value


def _recorded_threshold(metrics: dict, path: Path) -> DecisionThreshold:
    """``val_threshold_logit`` of a model record, checked against ``val_threshold``."""
    prob, cut = metrics["val_threshold"], metrics.get("val_threshold_logit")
    try:
        value = DecisionThreshold(float(cut)) if cut is not None else as_threshold(prob)
        shown = float(prob)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: val_threshold must be a probability and val_threshold_logit a number, not "
            f"{prob!r} and {cut!r} ({err})"
        ) from err
    if math.isnan(value.logit) or not math.isclose(value.probability, shown, rel_tol=1e-6, abs_tol=1e-9):
        raise ValueError(
            f"{path}: val_threshold {prob!r} and val_threshold_logit {cut!r} (probability "
            f"{value.probability!r}) must agree; the logit is the one decisions use: correct or delete "
            "val_threshold_logit, or pass --decision_threshold <probability>"
        )
    return value


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, threshold: float | DecisionThreshold = THRESHOLD
) -> dict[str, float]:
    """Metrics of AD-vs-CN logits against 0/1 labels; balanced accuracy and F1 at ``threshold``.

    Args:
        logits: (N,) network outputs.
        labels: (N,) 0 = CN, 1 = AD.
        threshold: a :class:`DecisionThreshold` or a probability threshold.

    Returns:
        balanced accuracy, F1, average precision and ROC AUC (the last two rank the logits; NaN
        with one class only).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    hat = as_threshold(threshold).decide(z).astype(int)
    both = len(np.unique(y)) > 1
    return {
        "balanced_accuracy": _safe(lambda: skm.balanced_accuracy_score(y, hat)),
        "f1": _safe(lambda: skm.f1_score(y, hat, zero_division=0)),
        "average_precision": _safe(lambda: skm.average_precision_score(y, z)) if both else math.nan,
        "roc_auc": _safe(lambda: skm.roc_auc_score(y, z)) if both else math.nan,
    }


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of ``x`` and ``y``; NaN for fewer than 2 values or a constant one (no warning)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(y) > 1 and np.std(x) > 0 and np.std(y) > 0:
        return float(np.corrcoef(x, y)[0, 1])
    return math.nan


def regression_metrics(pred: np.ndarray, age: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and Pearson r of predicted against true age."""
    pred, age = np.asarray(pred, dtype=np.float64), np.asarray(age, dtype=np.float64)
    err = pred - age
    r = pearson_r(pred, age)
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))), "pearson_r": r}


def compute_metrics(
    task: str, pred: np.ndarray, label: np.ndarray, threshold: float | DecisionThreshold = THRESHOLD
) -> dict[str, float]:
    """All metrics of ``task`` (raw network outputs against labels; ``threshold``: AD only)."""
    if task_spec(task).is_binary:
        return classification_metrics(pred, label, threshold)
    return regression_metrics(pred, label)


def _threshold_option(threshold: str | float | DecisionThreshold | None) -> float | DecisionThreshold | None:
    """A threshold argument as the bundles may write it: ``"validation"`` (None: tuned) or ``"0.5"``."""
    return threshold_setting(threshold) if isinstance(threshold, str) else threshold


def _epoch_metric(task: str, name: str, threshold: float | DecisionThreshold | None) -> EpochMetric:
    def fn(pred: torch.Tensor, label: torch.Tensor) -> float:
        p, y = pred.numpy(), label.numpy()
        if not task_spec(task).is_binary:
            return compute_metrics(task, p, y)[name]
        t = tune_threshold(p, y) if threshold is None else as_threshold(threshold)
        if name == "threshold":
            return t.probability
        if name == "threshold_logit":
            return t.logit
        return compute_metrics(task, p, y, t)[name]

    return EpochMetric(fn, output_transform=flat_pred_label, check_compute_fn=False)


def make_key_metric(
    task: str, prefix: str = "val_", threshold: float | DecisionThreshold | None = THRESHOLD
) -> dict[str, EpochMetric]:
    """``{"val_<key>": metric}`` for the evaluator's ``key_val_metric``.

    Args:
        task: ``"adni_ad"`` or ``"brain_age"``.
        prefix: metric name prefix (``"val_"``, ``"test_"``).
        threshold: AD decision threshold (a :class:`DecisionThreshold` or a probability); None or
            ``"validation"`` = tuned on the evaluated scans (:func:`tune_threshold`); ignored for brain age.
    """
    key = task_spec(task).key_metric
    return {prefix + key: _epoch_metric(task, key, _threshold_option(threshold))}


def make_additional_metrics(
    task: str, prefix: str = "val_", threshold: float | DecisionThreshold | None = THRESHOLD
) -> dict[str, EpochMetric]:
    """The other metrics of ``task`` for the evaluator's ``additional_metrics`` (AD: also the threshold
    used, as a probability ``<prefix>threshold`` and as the logit cut ``<prefix>threshold_logit``;
    arguments as :func:`make_key_metric`)."""
    names = list(compute_metrics(task, np.array([0.0, 1.0]), np.array([0.0, 1.0])))
    spec = task_spec(task)
    names += ["threshold", "threshold_logit"] if spec.is_binary else []
    threshold = _threshold_option(threshold)
    return {prefix + n: _epoch_metric(task, n, threshold) for n in names if n != spec.key_metric}


def metric_cmp_fn(task: str) -> Callable[[float, float], bool]:
    """``current, best -> improved`` for the evaluator's best-metric tracking: :meth:`TaskSpec.better`
    (ignite starts with ``best = -1``, which means "none yet" where lower is better)."""
    spec = task_spec(task)
    return lambda current, best: spec.better(current, None if best == -1 and spec.lower_is_better else best)


def lower_is_better(task: str) -> bool:
    """Whether a smaller key metric of ``task`` is better (for ``BestModelSaver(lower_is_better=...)``)."""
    return task_spec(task).lower_is_better
