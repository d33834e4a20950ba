"""Fast tests of engine/metrics.py behaviours that mutation testing found unchecked: which scans the
validation metrics count, the tuned cut at the ends of the logit range, Pearson r of a constant
prediction, and threshold settings given as text (scripts/mutation.sh, docs/testing.md).
"""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch

from mri_slice_transfer.engine.metrics import (
    STATUS_KEY,
    carry_status,
    compute_metrics,
    flat_pred_label,
    make_key_metric,
    operating_threshold,
    regression_metrics,
    tune_threshold,
)


def test_validation_metrics_leave_out_the_scans_that_could_not_be_read() -> None:
    outputs = [
        carry_status({"pred": torch.tensor([2.0]), "label": torch.tensor([1.0])}),  # no status: readable
        carry_status({"pred": torch.tensor([9.0]), "label": torch.tensor([0.0]), "status": "error"}),
        carry_status({"pred": torch.tensor([-1.0]), "label": torch.tensor([0.0]), "status": "ok"}),
    ]
    assert [o[STATUS_KEY] for o in outputs] == ["ok", "error", "ok"]
    pred, label = flat_pred_label(outputs)
    assert pred.tolist() == [2.0, -1.0] and label.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "logits, labels, cut",
    [
        (
            [8.0, 4.0, 4.0, 0.0],
            [1, 0, 1, 0],
            6.0,
        ),  # ties 2 and 6: the cut below the lowest logit is no candidate
        ([12.0, 8.0], [1, 0], 10.0),  # the gap's middle, not a second cut above the highest logit
        ([1.0, 1.0], [0, 1], 2.0),  # one distinct logit, both classes: the cuts below and above it tie
    ],
)
def test_tuned_cut_uses_only_the_middles_of_gaps_and_cuts_outside_the_logit_range(
    logits, labels, cut
) -> None:
    assert tune_threshold(np.array(logits), np.array(labels)).logit == cut


def test_pearson_r_of_a_constant_prediction_is_nan_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value" would be noise in every brain-age log
        assert math.isnan(
            regression_metrics(np.full(4, 60.0), np.array([50.0, 55.0, 60.0, 70.0]))["pearson_r"]
        )
        assert math.isnan(regression_metrics(np.array([50.0, 55.0, 60.0]), np.full(3, 60.0))["pearson_r"])


def test_key_metric_reads_a_threshold_written_as_text() -> None:
    pred = torch.tensor([-2.0, -0.5, 0.5, 1.0, 3.0])
    label = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    at_07 = make_key_metric("adni_ad", threshold="0.7")["val_balanced_accuracy"].compute_fn(pred, label)
    assert at_07 == compute_metrics("adni_ad", pred.numpy(), label.numpy(), 0.7)["balanced_accuracy"]
    assert at_07 != compute_metrics("adni_ad", pred.numpy(), label.numpy(), 0.5)["balanced_accuracy"]
    tuned = make_key_metric("adni_ad", threshold=" Validation ")["val_balanced_accuracy"].compute_fn(
        pred, label
    )
    assert (
        tuned
        == compute_metrics("adni_ad", pred.numpy(), label.numpy(), tune_threshold(pred, label))[
            "balanced_accuracy"
        ]
    )


def test_operating_threshold_reads_the_record_beside_model_pt_and_only_for_the_ad_task(tmp_path) -> None:
    """The path of ``model.pt`` finds ``model.json`` beside it; brain age has no threshold; the AD task
    (given or not) reads the recorded cut."""
    metrics = {"val_threshold": 0.5, "val_threshold_logit": 0.0}
    (tmp_path / "model.json").write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
    metrics = {"val_threshold": 1 / (1 + math.exp(-1.25)), "val_threshold_logit": 1.25}
    (tmp_path / "record.json").write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
    metrics = {"val_threshold": 1 / (1 + math.exp(-2.5)), "val_threshold_logit": 2.5}
    (tmp_path / "m.json").write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
    (tmp_path / "m.pt").write_bytes(b"weights")
    assert operating_threshold("validation", tmp_path / "m.pt").logit == 2.5
    assert operating_threshold("validation", tmp_path / "record.json", task="adni_ad").logit == 1.25
    assert operating_threshold("validation", tmp_path / "record.json", task="brain_age") is None


def test_operating_threshold_without_a_recorded_cut_warns_naming_the_file_and_the_problem(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"metrics": {"val_balanced_accuracy": 0.7}}), encoding="utf-8")
    missing = tmp_path / "missing.json"
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.metrics"):
        assert operating_threshold("validation", old).logit == 0.0
        assert operating_threshold("validation", missing).logit == 0.0
    prefix = "decision_threshold 'validation': no validation threshold in"
    error = f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'"
    assert [r.getMessage() for r in caplog.records] == [
        f"{prefix} {old} (no val_threshold); using 0.50",
        f"{prefix} {missing} ({error}); using 0.50",
    ]
