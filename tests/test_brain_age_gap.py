"""Issue 15 item 4: the brain-age gap with the age-bias correction (engine/brain_age.py).

The correction is fitted on the validation split by ``BestModelSaver`` at each new best epoch, recorded
in ``models/model.json`` (``age_bias``), and applied by ``PredictionWriter`` (evaluate, inference,
``api.predict``): ``corrected_age`` and ``brain_age_gap`` columns, corrected metrics.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine, Events
from test_brain_age_conv3d import CONV3D, _with_ages
from test_bundles import copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.engine import model_record
from mri_slice_transfer.engine.brain_age import (
    MIN_SLOPE,
    AgeBias,
    age_bias_metrics,
    fit_age_bias,
    gap_age_correlation,
)
from mri_slice_transfer.engine.handlers import BestModelSaver
from mri_slice_transfer.engine.model_record import ModelRecord, ModelRecordError
from mri_slice_transfer.engine.predictions import PredictionWriter
from mri_slice_transfer.vocabulary import Task, task_spec


def _biased(age: np.ndarray, seed: int) -> np.ndarray:
    """Predictions regressed towards the mean, as brain-age models do: 0.6 * age + 20 + noise."""
    return 0.6 * age + 20.0 + np.random.default_rng(seed).normal(0.0, 2.0, len(age))


def test_the_correction_removes_the_gap_age_correlation() -> None:
    """Fitted on one (validation) sample, the correction removes the gap-vs-age correlation of another."""
    rng = np.random.default_rng(0)
    val_age, test_age = rng.uniform(45, 80, 2000), rng.uniform(45, 80, 2000)
    val_pred = _biased(val_age, 1)
    bias = fit_age_bias(val_pred, val_age)
    assert bias.slope == pytest.approx(0.6, abs=0.03) and bias.intercept == pytest.approx(20, abs=2)
    assert bias.n == 2000 and bias.fitted_on == "validation"
    assert gap_age_correlation(bias.gap(val_pred, val_age), val_age) == pytest.approx(0.0, abs=1e-9)
    pred = _biased(test_age, 2)
    assert gap_age_correlation(pred - test_age, test_age) < -0.8  # the raw gap: regression to the mean
    assert abs(gap_age_correlation(bias.gap(pred, test_age), test_age)) < 0.1
    metrics = age_bias_metrics(pred, test_age, bias)
    assert metrics["gap_age_correlation"] < -0.8 and abs(metrics["corrected_gap_age_correlation"]) < 0.1
    assert metrics["corrected_mae"] == pytest.approx(np.mean(np.abs(bias.gap(pred, test_age))))
    # de Lange & Cole 2020: corrected = pred + age - (slope * age + intercept); gap = corrected - age
    assert bias.correct(70.0, 60.0) == pytest.approx(70.0 + 60.0 - (bias.slope * 60.0 + bias.intercept))
    assert np.isnan(bias.correct(70.0, np.nan))  # no age, no corrected age


def test_no_correction_from_too_few_scans_or_one_age() -> None:
    assert fit_age_bias([60.0, 61.0], [60.0, 70.0]) is None
    assert fit_age_bias([60.0, 61.0, 62.0], [65.0, 65.0, 65.0]) is None
    assert fit_age_bias([60.0, np.nan, 62.0, 63.0], [60.0, 61.0, 62.0, 63.0]).n == 3


def _validation(ages: np.ndarray, preds: list[np.ndarray]) -> Engine:
    """An evaluator over ``ages`` in batches of 2 whose epoch ``e`` predicts ``preds[e - 1]``."""

    def step(engine: Engine, batch: np.ndarray) -> list[dict]:
        pred = preds[engine.state.epoch - 1][batch]
        return [
            {"pred": torch.tensor([p]), "label": torch.tensor([ages[i]])}
            for p, i in zip(pred, batch, strict=True)
        ]

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def mae(engine: Engine) -> None:
        engine.state.metrics["val_mae"] = float(np.mean(np.abs(preds[engine.state.epoch - 1] - ages)))

    return engine


def test_each_new_best_model_carries_the_fit_of_its_own_validation_predictions(tmp_path: Path) -> None:
    ages = np.linspace(50, 80, 6)
    preds = [_biased(ages, 1), ages + 9.0, 0.9 * ages + 6.0]  # epoch 2 is worse: no new model, no refit
    evaluator = _validation(ages, preds)
    saver = BestModelSaver(torch.nn.Linear(1, 1), str(tmp_path / "model.pt"), task="brain_age")
    saver.attach(evaluator)
    evaluator.state.metrics = {}
    fits = []
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: fits.append(model_record.read(saver.path)))
    evaluator.run(np.arange(6).reshape(3, 2), max_epochs=3)
    assert [f.epoch for f in fits] == [1, 1, 3]
    for fit, epoch in zip(fits, (1, 1, 3), strict=True):
        expected = fit_age_bias(preds[epoch - 1], ages)
        assert fit.age_bias.epoch == epoch and fit.age_bias.n == 6 and fit.age_bias.fitted_on == "validation"
        assert fit.age_bias.slope == pytest.approx(expected.slope)
        assert fit.age_bias.intercept == pytest.approx(expected.intercept)
    assert fits[-1].age_bias.slope == pytest.approx(0.9)


def test_an_ad_model_records_no_age_bias(tmp_path: Path) -> None:
    saver = BestModelSaver(torch.nn.Linear(1, 1), str(tmp_path / "model.pt"), task="adni_ad")
    assert not saver.fits_age_bias
    assert saver.record({"val_balanced_accuracy": 0.5}, "0" * 64)["age_bias"] is None


#: A recorded correction: pred = 0.5 * age + 30 on 10 validation scans at epoch 3.
_FIT = {"slope": 0.5, "intercept": 30.0, "n": 10, "fitted_on": "validation", "epoch": 3}


def _record(tmp_path: Path, age_bias: dict | None) -> ModelRecord:
    raw = {"task": "brain_age", "epoch": 3, "key_metric": "val_mae", "metrics": {"val_mae": 4.0}}
    if age_bias is not None:
        raw["age_bias"] = age_bias
    path = tmp_path / "model.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return model_record.read(path)


def _write(writer: PredictionWriter, items: list[dict], preds: list[float]) -> pd.DataFrame:
    output = [{"pred": torch.tensor([z])} for z in preds]
    writer.reset()
    writer.collect(SimpleNamespace(state=SimpleNamespace(batch=items, output=output)))
    writer.write()
    return pd.read_csv(writer.predictions_csv)


def test_the_writer_adds_corrected_age_and_gap_from_the_record(tmp_path: Path, caplog) -> None:
    record = _record(tmp_path, _FIT)
    assert record.age_bias == AgeBias(0.5, 30.0, 10, epoch=3) and record.to_json()["age_bias"]["slope"] == 0.5
    # evaluation: the label is the age; the metrics gain the corrected MAE and both correlations
    writer = PredictionWriter("brain_age", str(tmp_path / "t.csv"), str(tmp_path / "m.json"), record=record)
    labelled = [{"image_path": f"{i}.nii", "label": torch.tensor([a])} for i, a in enumerate((60.0, 80.0))]
    frame = _write(writer, labelled, [62.0, 68.0])
    assert list(frame.columns[4:7]) == list(task_spec(Task.BRAIN_AGE).prediction_columns)
    assert list(frame["corrected_age"]) == pytest.approx([62.0 + 60 - 60, 68.0 + 80 - 70])
    assert list(frame["brain_age_gap"]) == pytest.approx([2.0, -2.0])
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics["corrected_mae"] == pytest.approx(2.0) and metrics["mae"] == pytest.approx(7.0)
    assert metrics["gap_age_correlation"] == pytest.approx(-1.0)
    # inference: the age comes from the input CSV's age column; without one the columns are empty
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"), record=record)
    items = [
        {"image_path": "a.nii", "age": "60"},
        {"image_path": "b.nii", "age": ""},
        {"image_path": "c.nii"},
        {"image_path": "d.nii", "age": "sixty"},
        {"image_path": "e.nii", "age": "inf"},
    ]
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        frame = _write(writer, items, [62.0] * 5)
    assert frame["age"].tolist()[0] == 60.0 and frame["age"].isna().tolist()[1:] == [True] * 4
    assert frame["corrected_age"].tolist()[0] == 62.0 and frame["corrected_age"].isna().sum() == 4
    assert frame["brain_age_gap"].tolist()[0] == 2.0 and frame["brain_age_gap"].isna().sum() == 4
    assert "4 scan(s) have no chronological age" in caplog.text and "'age' column" in caplog.text
    assert "2 age cell(s) of the input are not finite numbers" in caplog.text
    assert "d.nii: 'sixty'" in caplog.text and "e.nii: 'inf'" in caplog.text


def test_a_record_without_age_bias_still_predicts_with_a_warning(tmp_path: Path, caplog) -> None:
    record = _record(tmp_path, None)
    assert record.age_bias is None
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"), record=record)
    assert "records no age-bias correction" in caplog.text and str(record.path) in caplog.text
    frame = _write(writer, [{"image_path": "a.nii", "age": "60"}], [62.0])
    assert "corrected_age" not in frame and "brain_age_gap" not in frame
    assert frame["predicted_age"].tolist() == [62.0]


def test_a_flat_model_s_correction_is_flagged_in_training_and_prediction_logs(tmp_path: Path, caplog) -> None:
    """Slope below MIN_SLOPE: the model predicts one age for all, its corrected age is mostly the true age."""
    ages = np.linspace(50, 80, 6)
    evaluator = _validation(ages, [65.0 + 0.01 * (ages - 65.0) + np.array([0.3, -0.3] * 3)])
    saver = BestModelSaver(torch.nn.Linear(1, 1), str(tmp_path / "model.pt"), task="brain_age")
    saver.attach(evaluator)
    evaluator.state.metrics = {}
    with caplog.at_level(logging.INFO, logger="mri_slice_transfer.engine"):
        evaluator.run(np.arange(6).reshape(3, 2), max_epochs=1)
    record = model_record.read(saver.record_path)
    assert record.age_bias.slope < MIN_SLOPE and record.age_bias.degenerate
    flagged = [r for r in caplog.records if "predicts nearly the same age" in r.getMessage()]
    assert [r.levelno for r in flagged] == [logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        PredictionWriter("brain_age", str(tmp_path / "p.csv"), record=record)
    assert "predicts nearly the same age" in caplog.text and str(saver.record_path) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        PredictionWriter("brain_age", str(tmp_path / "p.csv"), record=_record(tmp_path, _FIT))
    assert caplog.text == ""  # a usable slope: no warning
    assert not AgeBias(MIN_SLOPE, 0.0, 3).degenerate


def test_a_bad_age_bias_is_an_error_naming_the_file_and_value(tmp_path: Path) -> None:
    with pytest.raises(
        ModelRecordError, match=r"model\.json: age_bias\.slope must be a finite number, not 'x'"
    ):
        _record(tmp_path, {"slope": "x", "intercept": 1.0, "n": 5})


def _with_paths(data: Path, split: str, out: Path) -> pd.DataFrame:
    """The split's data list (with its ``age`` column) as an inference input CSV of absolute paths."""
    frame = pd.read_csv(data / f"{split}.csv")
    frame["image"] = [str(data / p) for p in frame["image"]]
    frame.to_csv(out, index=False)
    return frame


def test_a_tiny_brain_age_run_fits_on_validation_and_evaluate_writes_the_gap(tmp_path: Path) -> None:
    """Train (3D-CNN, 0.1 grid) -> model.json's age_bias is the fit of the saved model's predictions on
    the 5 validation scans (not the 6 training or 3 test ones) -> evaluate and inference, with no model
    option (the record gives the network and the correction), write the corrected columns, the gap
    metrics and the scatter plot."""
    data = _with_ages(write_tiny_dataset(tmp_path / "data", n_per_split=(6, 5, 3)))
    bundle = copy_bundle(tmp_path / "run", "ukbb_brain_age")
    train = {"dataset_dir": str(data), "epochs": 2, "batch_size": 2, "input_scale": 0.1}
    run_workflow(str(bundle / "configs" / "train.json"), "train", **{**CONV3D, **train})
    record = model_record.read(bundle / "models" / "model.json")
    assert record.age_bias.n == 5 and record.age_bias.fitted_on == "validation"
    assert record.age_bias.epoch == record.epoch
    runtime = {k: CONV3D[k] for k in ("channels_last", "progress_bar", "cache_num_workers")}
    # the saved model's own validation predictions give the recorded line
    val = _with_paths(data, "val", tmp_path / "val_with_age.csv")
    infer = {"input": str(tmp_path / "val_with_age.csv"), "predictions_csv": str(tmp_path / "val.csv")}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", **runtime, **infer)
    refit = fit_age_bias(pd.read_csv(tmp_path / "val.csv")["predicted_age"], val["age"])
    assert record.age_bias.slope == pytest.approx(refit.slope, abs=1e-4)
    assert record.age_bias.intercept == pytest.approx(refit.intercept, abs=1e-3)
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    run_workflow(configs, "eval", dataset_dir=str(data), batch_size=2, **runtime)
    pred = pd.read_csv(bundle / "eval" / "test_predictions.csv")
    assert len(pred) == 3 and (pred["status"] == "ok").all()
    gap = record.age_bias.gap(pred["predicted_age"], pred["label"])
    assert np.allclose(pred["brain_age_gap"], gap) and np.allclose(pred["corrected_age"], pred["label"] + gap)
    metrics = json.loads((bundle / "eval" / "test_metrics.json").read_text(encoding="utf-8"))
    assert metrics["corrected_mae"] == pytest.approx(np.mean(np.abs(gap)))
    assert {"gap_age_correlation", "corrected_gap_age_correlation"} <= set(metrics)
    assert (bundle / "eval" / "test_age_scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frame = _with_paths(data, "test", tmp_path / "with_age.csv")
    out_csv = tmp_path / "pred.csv"
    infer = {"input": str(tmp_path / "with_age.csv"), "predictions_csv": str(out_csv), "batch_size": 2}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", **runtime, **infer)
    inferred = pd.read_csv(out_csv)
    assert list(inferred["age"]) == list(frame["age"])
    assert np.allclose(inferred["brain_age_gap"], gap, atol=1e-4)
    assert np.allclose(inferred["corrected_age"], inferred["age"] + inferred["brain_age_gap"])


def test_two_process_ddp_fits_on_all_ranks_validation_scans(tmp_path: Path) -> None:
    """Under DDP (2 gloo processes) every rank's validation predictions are gathered for the fit: 5
    validation scans, padded by the sampler (``even_divisible``) to 3 per rank, give n = 6."""
    data = _with_ages(write_tiny_dataset(tmp_path / "data", n_per_split=(8, 5, 2)))
    bundle = copy_bundle(tmp_path / "run", "ukbb_brain_age")
    configs = f"['{bundle}/configs/train.json','{bundle}/configs/multi_gpu_train.json']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", configs, "--dataset_dir", str(data)]
    options = {**CONV3D, "epochs": 1, "batch_size": 2}
    cmd += [str(v) for k, v in options.items() for v in (f"--{k}", v)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = model_record.read(bundle / "models" / "model.json")
    assert record.age_bias.n == 6 and record.age_bias.fitted_on == "validation"
