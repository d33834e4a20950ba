"""Fast unit tests of the predictions CSV / metrics writer and the error-tolerant transform
(engine/predictions.py), called directly instead of through a bundle run, so that mutation testing of
the module (scripts/mutation.sh) selects them instead of the minutes-long tests/test_infer_raw.py
(docs/testing.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from mri_slice_transfer.engine import predictions
from mri_slice_transfer.engine.metrics import DecisionThreshold
from mri_slice_transfer.engine.predictions import PredictionWriter, SafeTransform
from mri_slice_transfer.errors import ScanError


def _collect(writer: PredictionWriter, items: list[dict], preds: list[float]) -> None:
    output = [{"pred": torch.tensor([z])} for z in preds]
    writer.reset()
    writer.collect(SimpleNamespace(state=SimpleNamespace(batch=items, output=output)))


# --- SafeTransform ------------------------------------------------------------------------------


def test_a_readable_scan_passes_as_a_plain_tensor_with_status_ok() -> None:
    """The transform's MetaTensor becomes a plain tensor; status ok, no error; the input dict is untouched."""
    data = {"image": "s1.nii", "subject_id": "s1"}
    out = SafeTransform(lambda d: {**d, "image": MetaTensor(torch.ones(1, 2, 2, 2))})(data)
    assert type(out["image"]) is torch.Tensor and out["image"].shape == (1, 2, 2, 2)
    assert out["status"] == "ok" and out["error"] == "" and out["subject_id"] == "s1"
    assert data == {"image": "s1.nii", "subject_id": "s1"}
    out = SafeTransform(lambda d: {**d, "image": np.zeros((1, 2, 2, 2), np.float32)})(data)
    assert torch.is_tensor(out["image"]) and out["status"] == "ok"


def test_an_unreadable_scan_becomes_a_blank_error_row_naming_the_root_cause(caplog) -> None:
    """The blank image has the network's input shape; the reason is the ScanError or the root cause,
    on one line; the other keys are kept and the warning names the scan."""

    def broken(data: dict) -> dict:
        try:
            raise OSError("disk\nunreadable")
        except OSError as exc:
            raise RuntimeError("applying transform LoadImaged") from exc

    data = {"image": "a.nii", "image_path": "/x/a.nii", "subject_id": "s1"}
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        out = SafeTransform(broken, spatial_size=(4, 5, 6))(data)
    assert out["status"] == "error" and out["error"] == "OSError: disk unreadable"
    assert torch.equal(out["image"], torch.zeros(1, 4, 5, 6))
    assert out["subject_id"] == "s1" and out["image_path"] == "/x/a.nii"
    assert caplog.records[-1].getMessage() == "cannot use /x/a.nii: OSError: disk unreadable"

    def scan_error(data: dict) -> dict:
        try:
            raise ScanError("/x/b.nii", "holds NaN values")
        except ScanError as exc:
            raise RuntimeError("in Compose") from exc

    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        out = SafeTransform(scan_error)({"image": "b.nii"})
    assert out["error"] == "ScanError: /x/b.nii: holds NaN values"
    assert caplog.records[-1].getMessage().startswith("cannot use b.nii: ")  # no image_path: the image

    def scan_error_with_a_cause(data: dict) -> dict:  # the ScanError, not what caused it, is the reason
        try:
            try:
                raise OSError("errno 5")
            except OSError as exc:
                raise ScanError("/x/c.nii", "cannot be read") from exc
        except ScanError:
            raise RuntimeError("in Compose")  # noqa: B904 - chained implicitly, as MONAI's Compose does

    out = SafeTransform(scan_error_with_a_cause)({"image": "c.nii"})
    assert out["error"] == "ScanError: /x/c.nii: cannot be read"


def test_a_scan_that_could_not_be_prepared_is_an_error_row_without_loading() -> None:
    """A non-empty prepare_error is the row's error; the transform is not called."""

    def must_not_run(data: dict) -> dict:
        raise AssertionError("loaded a scan that failed preparation")

    out = SafeTransform(must_not_run, spatial_size=(2, 2, 2))(
        {"image": "a.nii", "prepare_error": "bad header"}
    )
    assert out["status"] == "error" and out["error"] == "bad header" and out["image"].shape == (1, 2, 2, 2)
    ok = SafeTransform(lambda d: {**d, "image": torch.ones(1)})({"image": "a.nii", "prepare_error": ""})
    assert ok["status"] == "ok"


# --- PredictionWriter ---------------------------------------------------------------------------


def test_prediction_rows_hold_label_logit_probability_and_the_decision_at_the_cut(tmp_path: Path) -> None:
    """Columns in order; AD exactly when logit >= cut; metrics record the cut as probability and logit."""
    writer = PredictionWriter(
        "adni_ad", str(tmp_path / "p.csv"), str(tmp_path / "m.json"), DecisionThreshold(0.5)
    )
    items = [
        {"subject_id": f"s{i}", "image_path": f"s{i}.nii", "label": torch.tensor([i % 2])} for i in range(4)
    ]
    _collect(writer, items, [0.5, 0.49, 2.0, -1.0])
    metrics = writer.write()
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(frame.columns) == [
        "subject_id", "session_id", "image", "label", "probability", "logit", "predicted", "status", "error"
    ]  # fmt: skip
    assert list(frame["predicted"]) == ["AD", "CN", "AD", "CN"] and list(frame["label"]) == [
        0.0,
        1.0,
        0.0,
        1.0,
    ]
    assert list(frame["logit"]) == pytest.approx([0.5, 0.49, 2.0, -1.0])
    assert list(frame["session_id"]) == [""] * 4 and list(frame["status"]) == ["ok"] * 4
    assert list(frame["subject_id"]) == ["s0", "s1", "s2", "s3"]
    assert metrics["balanced_accuracy"] == 0.0  # at the cut 0.5 every call is wrong (0.25 at 0)
    assert metrics["threshold_logit"] == 0.5 and metrics["threshold"] == pytest.approx(1 / (1 + np.exp(-0.5)))
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == pytest.approx(
        metrics, nan_ok=True
    )


def test_brain_age_rows_hold_the_predicted_age_and_no_metrics_without_labels(tmp_path: Path) -> None:
    """Inference (no labels, no metrics file): predicted_age per scan and no metrics returned."""
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"))
    _collect(writer, [{"subject_id": "s1", "image_path": "a.nii"}, {"subject_id": "s2"}], [71.5, 64.0])
    assert writer.write() is None
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(frame.columns) == ["subject_id", "session_id", "image", "predicted_age", "status", "error"]
    assert list(frame["predicted_age"]) == [71.5, 64.0] and list(frame["image"]) == ["a.nii", ""]


def test_a_non_finite_output_is_an_error_row_and_all_failed_is_an_error(tmp_path: Path) -> None:
    """NaN / inf outputs are error rows saying so; no scan predicted at all: write() raises after the CSV."""
    writer = PredictionWriter("adni_ad", str(tmp_path / "p.csv"), str(tmp_path / "m.json"))
    items = [{"image_path": "a.nii", "label": 1}, {"image_path": "b.nii", "status": "error", "error": "bad"}]
    _collect(writer, items, [float("inf"), 0.0])
    with pytest.raises(RuntimeError, match=r"no scan could be predicted: all 2 failed \(1 with non-finite"):
        writer.write()
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(frame["status"]) == ["error", "error"] and frame["error"][1] == "bad"
    assert frame["error"][0] == (
        "non-finite network output (inf): the model weights may be damaged (restore or retrain "
        "models/model.pt) or the scan's intensities are extreme"
    )
    assert list(frame["predicted"]) == ["", ""] and list(frame["probability"]) == ["", ""]
    writer.reset()
    assert writer.n_non_finite == 0 and writer.rows == [] and writer._raw == []


def test_prepared_scans_get_the_raw_input_and_the_prepare_qc_columns(tmp_path: Path) -> None:
    """inference.json --prepare true: input, then after error the prepare status, QC flag and correlation."""
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"))
    prepared = {
        "subject_id": "s1",
        "input": "/raw/s1.dcm",
        "image_path": "/prep/s1.nii.gz",
        "prepare_status": "ok",
        "flagged": torch.tensor([True]),
        "prepare_correlation": torch.tensor([0.875]),
        "qc_png": "/prep/s1.png",
        "prepare_note": "",
    }
    failed = {"subject_id": "s2", "prepare_status": "error", "status": "error", "error": "no brain"}
    _collect(writer, [prepared, failed], [70.0, 0.0])
    writer.write()
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(frame.columns) == [
        "subject_id", "session_id", "input", "image", "predicted_age", "status", "error",
        "prepare_status", "flagged", "prepare_correlation", "qc_png", "prepare_note",
    ]  # fmt: skip
    first = frame.iloc[0].to_dict()
    assert (
        first["input"] == "/raw/s1.dcm"
        and first["flagged"] == "True"
        and first["prepare_correlation"] == "0.875"
    )
    assert first["qc_png"] == "/prep/s1.png" and first["prepare_status"] == "ok"
    second = frame.iloc[1].to_dict()
    assert second["flagged"] == "" and second["input"] == "" and second["prepare_correlation"] == ""
    assert predictions._plain(torch.tensor([[1.0, 2.0]])) == [[1.0, 2.0]] and predictions._plain("x") == "x"


def test_prediction_writer_needs_decollated_outputs_and_attaches_to_the_run(tmp_path: Path) -> None:
    """A batched dict is refused with the fix; attached, one evaluator run writes one row per scan."""
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"))
    assert writer.n_non_finite == 0 and writer.rows == []
    batched = SimpleNamespace(state=SimpleNamespace(batch={"image": 0}, output=[{"pred": 1}]))
    with pytest.raises(TypeError, match="decollate=True"):
        writer.collect(batched)
    with pytest.raises(TypeError, match="decollate=True"):
        writer.collect(SimpleNamespace(state=SimpleNamespace(batch=[{}], output={"pred": 1})))
    evaluator = Engine(lambda e, batch: [{"pred": torch.tensor([float(x["age"])])} for x in batch])
    writer.rows.append({"stale": 1})  # from an earlier run: cleared when the run starts
    writer.attach(evaluator)
    evaluator.run([[{"subject_id": "s1", "age": 60}], [{"subject_id": "s2", "age": 61}]], max_epochs=1)
    assert list(pd.read_csv(tmp_path / "p.csv")["predicted_age"]) == [60.0, 61.0]


def test_only_the_main_process_writes_predictions(tmp_path: Path, monkeypatch) -> None:
    """Under DDP the other ranks write nothing and return None."""
    monkeypatch.setattr(predictions, "is_main_process", lambda: False)
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"), str(tmp_path / "m.json"))
    _collect(writer, [{"subject_id": "s1", "label": 60.0}], [61.0])
    assert writer.write() is None and not (tmp_path / "p.csv").exists()


def test_skipped_scans_are_counted_and_named_in_a_warning(tmp_path: Path, caplog) -> None:
    """The warning says how many scans the metrics are over, how many were skipped, and why."""
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"), str(tmp_path / "m.json"))
    items = [
        {"label": 60.0},
        {"label": 61.0, "status": "error", "error": "x"},
        {"label": 62.0},
        {"label": 63.0},
    ]
    _collect(writer, items, [60.5, 0.0, float("nan"), 64.0])
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        metrics = writer.write()
    assert metrics["n_scans"] == 2 and metrics["mae"] == pytest.approx(0.75)
    assert (
        "test metrics are over the 2 readable scans: 2 scan(s) skipped (1 unreadable, 1 with non-finite "
        f"network outputs); see the 'error' column of {tmp_path / 'p.csv'}"
    ) in caplog.text


def test_the_blank_image_of_an_unreadable_scan_has_the_grid_of_the_input_scale() -> None:
    """With ``input_scale`` the blank image of an error row has that scale's grid (the network's input)."""

    def broken(data: dict) -> dict:
        raise OSError("unreadable")

    out = SafeTransform(broken, spatial_size=(4, 5, 6), input_scale="0.5")({"image": "a.nii"})
    assert out["image"].shape == (1, 46, 54, 46) and out["status"] == "error"
    assert SafeTransform(broken, spatial_size=(4, 5, 6)).spatial_size == (4, 5, 6)


def test_a_row_without_status_or_error_keys_is_ok_with_an_empty_error(tmp_path: Path) -> None:
    """Items that did not go through SafeTransform (no ``status`` / ``error``): ok, and no error text."""
    writer = PredictionWriter("adni_ad", str(tmp_path / "p.csv"))
    _collect(writer, [{"image_path": "a.nii", "subject_id": "s1"}], [0.0])
    assert writer.rows[0]["status"] == "ok" and writer.rows[0]["error"] == ""


def _age_record(tmp_path: Path):
    from mri_slice_transfer.engine import model_record

    raw = {"task": "brain_age", "epoch": 3, "key_metric": "val_mae", "metrics": {"val_mae": 4.0}}
    raw["age_bias"] = {"slope": 0.5, "intercept": 30.0, "n": 10, "fitted_on": "validation", "epoch": 3}
    (tmp_path / "model.json").write_text(json.dumps(raw), encoding="utf-8")
    return model_record.read(tmp_path / "model.json")


@pytest.mark.parametrize("n_bad", [3, 4])
def test_missing_and_bad_input_ages_are_warned_about_with_at_most_three_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, n_bad: int
) -> None:
    """One warning counts the scans without an age and says what to do; another counts the cells that are
    not numbers and names the first three, with "; ..." only when there are more."""
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"), record=_age_record(tmp_path))
    items = [{"image_path": f"{i}.nii", "age": f"x{i}"} for i in range(n_bad)] + [{"image_path": "ok.nii"}]
    _collect(writer, items, [62.0] * len(items))
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        writer.write()
    named = "; ".join(f"{i}.nii: 'x{i}'" for i in range(3)) + ("; ..." if n_bad > 3 else "")
    assert [r.getMessage() for r in caplog.records] == [
        f"{n_bad + 1} scan(s) have no chronological age: their corrected_age and brain_age_gap are empty "
        "(the age-bias correction needs the age); give the input CSV an 'age' column",
        f"{n_bad} age cell(s) of the input are not finite numbers and were left out ({named})",
    ]


def test_non_finite_outputs_are_counted_and_each_named_in_a_warning(tmp_path: Path, caplog) -> None:
    """Two NaN outputs: ``n_non_finite`` 2 in the metrics, one warning per scan naming it and the reason."""
    writer = PredictionWriter("adni_ad", str(tmp_path / "p.csv"), str(tmp_path / "m.json"), threshold=None)
    assert writer.threshold.probability == 0.5  # None: the default threshold
    items = [{"image_path": f"{n}.nii", "label": 1} for n in "abc"]
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        _collect(writer, items, [float("nan"), float("nan"), 1.0])
    assert writer.n_non_finite == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{n}.nii: {predictions._non_finite(float('nan'))}" for n in "ab"
    ]


def test_a_prepared_scan_without_flag_or_qc_keys_is_not_flagged_and_has_empty_cells(tmp_path: Path) -> None:
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"))
    _collect(writer, [{"image_path": "a.nii", "prepare_status": "ok"}], [70.0])
    row = writer.rows[0]
    assert row["flagged"] is False and row["qc_png"] == "" and row["prepare_note"] == ""


def test_age_bias_warnings_of_the_writer_name_the_record_or_say_the_model_record(
    tmp_path: Path, caplog
) -> None:
    """A record without a correction, or with a degenerate one: the exact warning, naming the record's file
    or, for a record without a path, "the model record" / "model record"."""
    from mri_slice_transfer.engine.brain_age import AgeBias

    flat = AgeBias(0.01, 60.0, 10, epoch=3)
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.predictions"):
        PredictionWriter("brain_age", str(tmp_path / "p.csv"), record=SimpleNamespace(age_bias=None))
        PredictionWriter("brain_age", str(tmp_path / "p.csv"), record=SimpleNamespace(age_bias=flat))
        PredictionWriter(
            "brain_age", str(tmp_path / "p.csv"), record=SimpleNamespace(age_bias=flat, path="r.json")
        )
    assert [r.getMessage() for r in caplog.records] == [
        "the model record records no age-bias correction (an older model): writing predicted_age without "
        "corrected_age / brain_age_gap; retrain the bundle to fit one on its validation split",
        f"model record: {flat.describe()}",
        f"r.json: {flat.describe()}",
    ]


def test_a_batched_output_is_refused_with_the_exact_fix(tmp_path: Path) -> None:
    writer = PredictionWriter("brain_age", str(tmp_path / "p.csv"))
    state = SimpleNamespace(batch={"image": None}, output={"pred": None})
    with pytest.raises(
        TypeError, match=r"^PredictionWriter needs decollated engine outputs \(decollate=True\)$"
    ):
        writer.collect(SimpleNamespace(state=state))
