"""Brain-age gap with the age-bias correction (de Lange & Cole 2020), fitted on the validation split.

A brain-age model regresses towards the training mean: it over-estimates the young and under-estimates
the old, so the raw gap ``predicted_age - age`` correlates negatively with age. The standard correction
fits the linear regression of predicted age on chronological age, ``pred = slope * age + intercept``, on
data the model was not trained on (here: the validation split, at each new best epoch, by
:class:`~mri_slice_transfer.engine.handlers.BestModelSaver`), records it with the model
(``models/model.json``: ``age_bias``) and applies it to new predictions:

    corrected_age = pred + (age - (slope * age + intercept))
    brain_age_gap = corrected_age - age = pred - (slope * age + intercept)

(de Lange & Cole 2020, NeuroImage: Clinical 26:102229). It needs the chronological age of every scan
it corrects; without one only ``predicted_age`` can be written. ``docs/brain_age.md`` explains the
choice against Cole et al. 2018's ``(pred - intercept) / slope`` and Smith et al. 2019.

Standard library and numpy only: the model record imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mri_slice_transfer.engine.metrics import pearson_r

__all__ = [
    "AGE_BIAS_METHOD",
    "MIN_FIT_SCANS",
    "MIN_SLOPE",
    "AgeBias",
    "age_bias_metrics",
    "fit_age_bias",
    "gap_age_correlation",
]

#: The formula of :meth:`AgeBias.correct` (recorded in ``model.json``).
AGE_BIAS_METHOD = "de Lange & Cole 2020: corrected = pred + age - (slope * age + intercept)"

#: Below this slope the model predicts nearly one age for everyone and the correction is degenerate:
#: ``corrected_age`` is then nearly the chronological age itself (our choice of cut, see
#: ``docs/brain_age.md``, "Caveats").
MIN_SLOPE = 0.1

#: Fewest validation scans (with at least two distinct ages) a correction is fitted on.
MIN_FIT_SCANS = 3


@dataclass(frozen=True)
class AgeBias:
    """The linear age bias of a brain-age model: ``pred ~ slope * age + intercept``.

    Attributes:
        slope: slope of predicted on chronological age (1 = no regression to the mean).
        intercept: intercept in years.
        n: number of scans the line was fitted on.
        fitted_on: which split (always ``"validation"`` for the bundles: never training data).
        epoch: the epoch whose predictions were fitted (the saved model's best epoch; 0: unknown).
        method: the correction formula (:data:`AGE_BIAS_METHOD`).
    """

    slope: float
    intercept: float
    n: int
    fitted_on: str = "validation"
    epoch: int = 0
    method: str = AGE_BIAS_METHOD

    @property
    def degenerate(self) -> bool:
        """Whether the slope is below :data:`MIN_SLOPE`: the corrected age is then mostly the true age."""
        return self.slope < MIN_SLOPE

    def describe(self) -> str:
        """One line for the log: the line, its data and, when :attr:`degenerate`, what that means."""
        text = (
            f"age bias pred = {self.slope:.3f} x age + {self.intercept:.2f} ({self.n} {self.fitted_on} scans)"
        )
        if self.degenerate:
            text += (
                f": slope below {MIN_SLOPE}, the model predicts nearly the same age for every scan, so its "
                "corrected_age is nearly the chronological age and brain_age_gap means little"
            )
        return text

    def expected(self, age: Any) -> np.ndarray:
        """What the model predicts on average at ``age``: ``slope * age + intercept``."""
        return self.slope * np.asarray(age, dtype=np.float64) + self.intercept

    def correct(self, pred: Any, age: Any) -> np.ndarray:
        """Bias-corrected predicted age (NaN where ``pred`` or ``age`` is NaN).

        Args:
            pred: predicted ages in years.
            age: chronological ages in years (same shape).

        Returns:
            ``pred + age - (slope * age + intercept)``.
        """
        age = np.asarray(age, dtype=np.float64)
        return np.asarray(pred, dtype=np.float64) + age - self.expected(age)

    def gap(self, pred: Any, age: Any) -> np.ndarray:
        """Bias-corrected brain-age gap ``corrected_age - age`` (the residual of the fitted line)."""
        return self.correct(pred, age) - np.asarray(age, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """The ``age_bias`` entry of ``model.json``."""
        return {
            "slope": self.slope,
            "intercept": self.intercept,
            "n": self.n,
            "fitted_on": self.fitted_on,
            "epoch": self.epoch,
            "method": self.method,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "age_bias") -> AgeBias:
        """Read :meth:`to_json`'s dict back.

        Args:
            raw: the JSON object.
            where: what to name in an error (``"<file>: age_bias"``).

        Raises:
            ValueError: not an object, or ``slope`` / ``intercept`` / ``n`` missing or not finite
                numbers (the message names ``where``, the field and the value).
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object, not {raw!r}")
        values = {}
        for name in ("slope", "intercept", "n"):
            value = raw.get(name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise ValueError(f"{where}.{name} must be a finite number, not {value!r}")
            values[name] = number
        return cls(
            slope=values["slope"],
            intercept=values["intercept"],
            n=int(values["n"]),
            fitted_on=str(raw.get("fitted_on", "validation")),
            epoch=int(raw.get("epoch") or 0),
            method=str(raw.get("method", AGE_BIAS_METHOD)),
        )


def fit_age_bias(pred: Any, age: Any, epoch: int = 0, fitted_on: str = "validation") -> AgeBias | None:
    """Fit ``pred = slope * age + intercept`` by least squares.

    Args:
        pred: predicted ages of the fitting split (the validation split; never training data).
        age: their chronological ages.
        epoch: the epoch whose predictions these are.
        fitted_on: name of the split.

    Returns:
        the fit, or None when fewer than :data:`MIN_FIT_SCANS` finite pairs or a single distinct age.
    """
    pred, age = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(age, dtype=np.float64).ravel()
    ok = np.isfinite(pred) & np.isfinite(age)
    pred, age = pred[ok], age[ok]
    if len(age) < MIN_FIT_SCANS or np.ptp(age) == 0:
        return None
    slope, intercept = np.polyfit(age, pred, 1)
    return AgeBias(float(slope), float(intercept), int(len(age)), fitted_on=fitted_on, epoch=int(epoch))


def gap_age_correlation(gap: Any, age: Any) -> float:
    """Pearson correlation of a brain-age gap with age (NaN when either is constant or < 2 scans)."""
    return pearson_r(gap, age)


def age_bias_metrics(pred: Any, age: Any, bias: AgeBias | None) -> dict[str, float]:
    """Test metrics of the gap: correlation with age before / after correction, corrected MAE.

    Args:
        pred: predicted ages.
        age: chronological ages.
        bias: the model's recorded correction (None: only the uncorrected correlation).

    Returns:
        ``gap_age_correlation`` (of ``pred - age``) and, with ``bias``, ``corrected_mae`` and
        ``corrected_gap_age_correlation``.
    """
    pred, age = np.asarray(pred, dtype=np.float64), np.asarray(age, dtype=np.float64)
    out = {"gap_age_correlation": gap_age_correlation(pred - age, age)}
    if bias is not None and len(age):
        gap = bias.gap(pred, age)
        out["corrected_mae"] = float(np.mean(np.abs(gap)))
        out["corrected_gap_age_correlation"] = gap_age_correlation(gap, age)
    return out
