"""``mri_slice_transfer.load_model`` / ``predict``: a trained bundle from Python, same rows as inference.json.

A tiny model is trained at a non-default axis, aggregation and input scale; ``load_model`` rebuilds it
from its record alone, and ``predict`` gives the inference CSV's table, value for value.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_bundles import copy_bundle, run_workflow, write_tiny_dataset

import mri_slice_transfer
from mri_slice_transfer.engine.checkpoint import WeightFileError
from mri_slice_transfer.engine.metrics import THRESHOLD, DecisionThreshold, compute_metrics
from mri_slice_transfer.engine.model_record import ModelRecordError
from mri_slice_transfer.transforms import load_scan_tensor
from mri_slice_transfer.vocabulary import task_spec

#: A small real SliceSetNet, not the default one: every setting differs from train.json's AD defaults.
MODEL = {
    "encoder": "cnn5",
    "axis": "sagittal",
    "aggregation": "max",
    "position_encoding": "learned",
    "input_scale": 0.25,
    "pretrained": False,
}
RUN = {"progress_bar": False, "batch_size": 4, "cache_num_workers": 1}


def _with_ages(data: Path) -> Path:
    """Brain-age data lists (an ``age`` column instead of ``dx``) for the same tiny scans."""
    for split in ("train", "val", "test"):
        frame = pd.read_csv(data / f"{split}.csv")
        frame["age"] = 60.0 + 2.0 * np.arange(len(frame))
        frame.drop(columns="dx").to_csv(data / f"{split}.csv", index=False)
    return data


def _train(root: Path, bundle: str) -> tuple[Path, Path]:
    data = write_tiny_dataset(root / "data", n_per_split=(4, 4, 2))
    if bundle == "ukbb_brain_age":
        _with_ages(data)
    trained = copy_bundle(root / "run", bundle)
    run_workflow(str(trained / "configs" / "train.json"), dataset_dir=str(data), epochs=2, **MODEL, **RUN)
    return trained, data


@pytest.fixture(scope="module", params=["adni_ad", "ukbb_brain_age"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bundle copy trained for 2 epochs on tiny data with :data:`MODEL`, and that data."""
    return _train(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture()
def scans(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    """Four readable tiny scans and one corrupt file."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for p in sorted((trained[1] / "images").glob("*.nii"))[:4]:
        shutil.copy(p, folder / p.name)
    (folder / "zz_corrupt.nii.gz").write_bytes(b"not a NIfTI file")
    return folder


def test_load_model_rebuilds_the_trained_network_from_its_record(trained: tuple[Path, Path]) -> None:
    bundle, _ = trained
    model = mri_slice_transfer.load_model(bundle)
    network, record = model
    assert not network.training
    assert (record.encoder.value, record.axis.value, record.aggregation.value) == ("cnn5", "sagittal", "max")
    assert record.input_scale == 0.25 and tuple(record.spatial_size) == (23, 27, 23)
    saved = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in network.state_dict().items())
    same = mri_slice_transfer.load_model(bundle / "models" / "model.pt")
    assert same.record == record and same.weights == model.weights


def test_predict_equals_bundle_inference(trained: tuple[Path, Path], scans: Path, tmp_path: Path) -> None:
    bundle, _ = trained
    out_csv = tmp_path / "pred.csv"
    infer = {"input": str(scans), "predictions_csv": str(out_csv), "progress_bar": False}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", **infer)  # no model options
    table = mri_slice_transfer.load_model(bundle).predict(scans)
    assert table.to_csv(index=False) == out_csv.read_text(encoding="utf-8")  # same columns, same values
    assert list(table["status"]) == ["ok"] * 4 + ["error"]
    assert "zz_corrupt.nii.gz" in table["error"].iloc[-1]


def test_predict_accepts_files_and_tensors(trained: tuple[Path, Path], scans: Path) -> None:
    bundle, _ = trained
    model = mri_slice_transfer.load_model(bundle)
    files = sorted(scans.glob("*.nii"))[:3]
    by_file = mri_slice_transfer.predict(bundle, [str(f) for f in files])
    value = "logit" if "logit" in by_file else "predicted_age"
    tensors = [load_scan_tensor(f) for f in files]
    by_tensor = model.predict(tensors)
    assert list(by_tensor["image"]) == ["<tensor 0>", "<tensor 1>", "<tensor 2>"]
    np.testing.assert_allclose(by_tensor[value], by_file[value], rtol=0, atol=1e-5)
    batch = model.predict(torch.stack(tensors))
    np.testing.assert_allclose(batch[value], by_file[value], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"must have shape \[1, 91, 109, 91\].*not \[1, 23, 27, 23\]"):
        model.predict([torch.zeros(1, 23, 27, 23)])
    with pytest.raises(ValueError, match="must be files or all tensors, not a mix of both"):
        model.predict([tensors[0], str(files[0])])


def test_load_model_refuses_contradicting_options_and_missing_weights(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, _ = trained
    with pytest.raises(ModelRecordError, match=r"input_scale 1.0 contradicts .*input_scale 0.25"):
        mri_slice_transfer.load_model(bundle, input_scale=1)
    with pytest.raises(WeightFileError, match="not found"):
        mri_slice_transfer.load_model(tmp_path)


@pytest.mark.parametrize("trained", ["adni_ad"], indirect=True)  # the README example is the AD bundle's
def test_readme_python_example_runs_on_a_trained_model(trained: tuple[Path, Path], scans: Path) -> None:
    bundle, _ = trained
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    code = code.replace('"bundles/adni_ad"', repr(str(bundle))).replace('"scans/"', repr(str(scans)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert list(namespace["table"]["status"]) == ["ok"] * 4 + ["error"]
    assert not namespace["network"].training and namespace["record"].input_scale == 0.25


def test_load_model_reproduces_the_recorded_validation_metrics(trained: tuple[Path, Path]) -> None:
    """``predict`` on the validation list gives the metrics training recorded for the saved epoch."""
    bundle, data = trained
    model = mri_slice_transfer.load_model(bundle)
    record, spec = model.record, task_spec(model.record.task)
    val = pd.read_csv(data / "val.csv")
    table = model.predict(data / "val.csv")
    assert (table["status"] == "ok").all() and len(table) == len(val)
    labels = val[spec.label_column].map(spec.classes) if spec.classes else val[spec.label_column]
    value = table["logit"] if spec.is_binary else table["predicted_age"]
    threshold = DecisionThreshold(record.threshold_logit) if spec.is_binary else THRESHOLD
    metrics = compute_metrics(record.task.value, value.to_numpy(), labels.to_numpy(float), threshold)
    compared = {
        k.removeprefix("val_"): v for k, v in record.metrics.items() if k.removeprefix("val_") in metrics
    }
    assert spec.key_metric in compared
    assert {k: metrics[k] for k in compared} == compared  # exactly
