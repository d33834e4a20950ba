"""Issue 15 item 5: the evaluation's plots in ``eval/`` (engine/run_plots.py).

The bundle runs that draw them: ``tests/test_bundles.py::test_evaluate_scores_the_test_split`` (AD:
``test_roc_pr.png``) and ``tests/test_brain_age_gap.py`` (brain age: ``test_age_scatter.png``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mri_slice_transfer.engine.brain_age import AgeBias
from mri_slice_transfer.engine.metrics import DecisionThreshold
from mri_slice_transfer.engine.run_plots import (
    AGE_SCATTER_PNG,
    ROC_PR_PNG,
    RunPlots,
    operating_point,
    write_run_plots,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _ad_table(path: Path, labels: list[int]) -> Path:
    logits = np.linspace(-2.0, 2.0, len(labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {"image": [f"{i}.nii" for i in range(len(labels))], "label": labels, "logit": logits}
    pd.DataFrame({**rows, "status": "ok"}).to_csv(path, index=False)
    return path


def test_the_operating_point_is_where_the_threshold_cuts() -> None:
    """At cut 0: of 3 CN, 1 called AD (FPR 1/3); of 3 AD, 2 called AD (TPR 2/3); precision 2/3."""
    labels, logits = np.array([0, 0, 1, 0, 1, 1]), np.array([-2.0, -1.0, -0.5, 0.0, 1.0, 2.0])
    assert operating_point(labels, logits, DecisionThreshold(0.0)) == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    assert operating_point(labels, logits, 0.5) == pytest.approx((1 / 3, 2 / 3, 2 / 3))  # a probability
    assert operating_point(labels, logits, DecisionThreshold(5.0)) == (0.0, 0.0, 1.0)  # nothing called AD


def test_ad_and_brain_age_plots_are_written_beside_the_csv(tmp_path: Path) -> None:
    csv = _ad_table(tmp_path / "ad" / "test_predictions.csv", [0, 1, 0, 1, 1, 0])
    assert write_run_plots("adni_ad", csv, DecisionThreshold(0.3)) == [csv.with_name(ROC_PR_PNG)]
    ages = np.array([50.0, 60.0, 70.0, 80.0])
    frame = pd.DataFrame({"label": ages, "predicted_age": 0.6 * ages + 25, "status": "ok"})
    for corrected in (False, True):
        csv = tmp_path / f"age{corrected}" / "test_predictions.csv"
        csv.parent.mkdir(parents=True)
        (frame.assign(corrected_age=ages + 1.0) if corrected else frame).to_csv(csv, index=False)
        bias = AgeBias(0.6, 25.0, 4) if corrected else None
        assert write_run_plots("brain_age", csv, age_bias=bias) == [csv.with_name(AGE_SCATTER_PNG)]
    for png in tmp_path.rglob("*.png"):
        assert png.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")) == []


def test_a_plot_that_cannot_be_drawn_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One class only (no ROC), or a missing CSV: a warning naming the file, no PNG, no exception."""
    csv = _ad_table(tmp_path / "test_predictions.csv", [1, 1, 1])
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.run_plots"):
        RunPlots("adni_ad", str(csv))()
        RunPlots("brain_age", str(tmp_path / "missing.csv"))()
    assert "both classes" in caplog.text and str(csv) in caplog.text and "missing.csv" in caplog.text
    assert not list(tmp_path.glob("*.png"))
