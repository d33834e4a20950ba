"""Per-scan error rows in evaluation and inference (issue 20): unreadable, truncated, non-finite, odd inputs.

A tiny network (``TINY_NET``) trained for a few epochs on tiny volumes (``tests/test_bundles.py``)
stands in for a trained model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_bundles import FAST, TINY_NET, copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.fileio import file_sha256
from mri_slice_transfer.transforms import load_scan


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_err"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    bundle = copy_bundle(tmp_path_factory.mktemp("trained_err"))
    run_workflow(str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=1, **FAST)
    return bundle


def _chain(exc: BaseException | None) -> str:
    """The messages of an exception and those it wraps (MONAI wraps handler errors)."""
    text = ""
    while exc is not None:
        text += f"{exc}\n"
        exc = exc.__cause__ or exc.__context__
    return text


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_evaluate_reports_a_truncated_test_scan_and_scores_the_others(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    test = pd.read_csv(data / "test.csv")
    _truncate(data / test.loc[1, "image"])
    configs = [str(trained / "configs" / f) for f in ("train.json", "evaluate.json")]
    out = tmp_path / "eval"
    wf = run_workflow(configs, "eval", dataset_dir=str(data), output_dir=str(out), **FAST)
    pred = pd.read_csv(out / "test_predictions.csv", keep_default_na=False)
    assert len(pred) == 4
    bad = pred[pred["status"] == "error"]
    assert len(bad) == 1 and test.loc[1, "image"].split("/")[-1] in bad.iloc[0]["image"]
    assert "truncated" in bad.iloc[0]["error"]
    metrics = json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_scans"] == 3 and metrics["n_skipped"] == 1 and metrics["n_errors"] == 1
    logged = wf.evaluator.state.metrics  # what the StatsHandler logs as test_*
    assert {f"test_{n}" for n in ("balanced_accuracy", "roc_auc", "f1", "threshold_logit")} <= set(logged)
    for name, value in logged.items():
        assert value == pytest.approx(metrics[name.removeprefix("test_")], nan_ok=True), name


def test_non_finite_outputs_are_error_rows_and_not_scored(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path)
    (bundle / "models").mkdir()
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    torch.save(
        {k: torch.full_like(v, float("nan")) for k, v in state.items()}, bundle / "models" / "model.pt"
    )
    record = json.loads((trained / "models" / "model.json").read_text(encoding="utf-8"))
    record["sha256"] = file_sha256(bundle / "models" / "model.pt")  # a model that diverged, recorded as such
    (bundle / "models" / "model.json").write_text(json.dumps(record), encoding="utf-8")
    out_csv = tmp_path / "pred.csv"
    with pytest.raises(Exception) as info:  # every scan failed: the run fails after writing the CSV
        run_workflow(
            str(bundle / "configs" / "inference.json"),
            "infer",
            input=str(tiny_data / "images" / "sub-0[01]_T1w.nii"),
            predictions_csv=str(out_csv),
            network_def=TINY_NET,
        )
    assert "no scan could be predicted" in _chain(info.value)
    pred = pd.read_csv(out_csv, keep_default_na=False)
    assert len(pred) == 2 and (pred["status"] == "error").all()
    assert pred["error"].str.contains("non-finite").all()
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    out = tmp_path / "eval"
    with pytest.raises(Exception) as info:
        run_workflow(configs, "eval", dataset_dir=str(tiny_data), output_dir=str(out), **FAST)
    assert "no scan could be predicted" in _chain(info.value)
    metrics = json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_scans"] == 0 and metrics["n_non_finite"] == 4 and metrics["n_skipped"] == 4


def test_permission_denied_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nibabel as nib

    from mri_slice_transfer.template import TEMPLATE_AFFINE

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), TEMPLATE_AFFINE), path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nib, "load", denied)  # root ignores chmod 000, so simulate it
    with pytest.raises(ScanError, match="permission denied") as info:
        load_scan(path)
    assert "corrupt" not in str(info.value) and str(path) in str(info.value)


def test_folder_inference_gives_every_input_a_row(trained: Path, tiny_data: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    (scans / "site2" / "sub-x").mkdir(parents=True)
    (scans / ".hidden_folder").mkdir()
    images = sorted((tiny_data / "images").glob("*.nii"))
    shutil.copy(images[0], scans / "a.nii")
    shutil.copy(images[1], scans / "site2" / "sub-x" / "a.nii")  # nested, same name
    shutil.copy(images[2], scans / ".a.nii.tmp1234.nii.gz")  # our own atomic temp file: skipped
    shutil.copy(images[2], scans / ".hidden_folder" / "c.nii")  # hidden folder: skipped
    (scans / "dangling.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (scans / "loop.nii.gz").symlink_to(scans / "loop.nii.gz")
    out_csv = tmp_path / "pred.csv"
    override = {"input": str(scans), "predictions_csv": str(out_csv), "network_def": TINY_NET}
    run_workflow(str(trained / "configs" / "inference.json"), "infer", **override)
    pred = pd.read_csv(out_csv, keep_default_na=False)
    rows = {str(Path(r["image"]).relative_to(scans)): r for r in pred.to_dict("records")}
    assert sorted(rows) == ["a.nii", "dangling.nii.gz", "loop.nii.gz", "site2/sub-x/a.nii"]
    assert rows["a.nii"]["status"] == rows["site2/sub-x/a.nii"]["status"] == "ok"
    assert rows["dangling.nii.gz"]["status"] == "error"
    assert "dangling symbolic link" in rows["dangling.nii.gz"]["error"]
    assert "gone.nii.gz" in rows["dangling.nii.gz"]["error"]
    assert rows["loop.nii.gz"]["status"] == "error" and "link loop" in rows["loop.nii.gz"]["error"]


def test_folder_inference_fails_when_no_scan_succeeds(trained: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    (scans / "dangling.nii").symlink_to(tmp_path / "gone.nii")
    out_csv = tmp_path / "pred.csv"
    override = {"input": str(scans), "predictions_csv": str(out_csv), "network_def": TINY_NET}
    with pytest.raises(Exception) as info:
        run_workflow(str(trained / "configs" / "inference.json"), "infer", **override)
    assert "no scan could be predicted: all 2 failed" in _chain(info.value)
    assert (pd.read_csv(out_csv)["status"] == "error").all()
