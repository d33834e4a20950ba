"""Progress of evaluation and inference in scans (issue 20): a bar when interactive, log lines when not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from test_bundles import FAST, TINY_NET, copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.engine import ScanProgress


def _run(progress: ScanProgress, n_scans: int = 5, batch_size: int = 1) -> None:
    loader = torch.utils.data.DataLoader(list(range(n_scans)), batch_size=batch_size)
    engine = Engine(lambda e, b: None)
    progress.attach(engine)
    engine.run(loader)


def test_log_lines_every_n_scans_when_not_interactive(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mri_slice_transfer.engine.progress"):
        _run(ScanProgress("inference", every=2, interval=1e9, interactive=False))
    lines = [r.getMessage() for r in caplog.records if r.name == "mri_slice_transfer.engine.progress"]
    assert [line.split(" scans")[0] for line in lines] == [
        "inference: 2/5",
        "inference: 4/5",
        "inference: 5/5",
    ]
    assert all("scans/s" in line for line in lines) and "left" in lines[0] and "left" not in lines[-1]


def test_bar_in_scans_when_interactive(capsys: pytest.CaptureFixture) -> None:
    _run(ScanProgress("evaluation", interactive=True), n_scans=6, batch_size=4)
    err = capsys.readouterr().err
    assert "evaluation" in err and "6/6" in err and "scan/s" in err


def test_disabled_shows_nothing(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        _run(ScanProgress(enabled=False, every=1, interactive=False))
    assert not [r for r in caplog.records if r.name == "mri_slice_transfer.engine.progress"]
    assert capsys.readouterr().err == ""


def test_bundle_inference_and_evaluation_report_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_tiny_dataset(tmp_path / "data", n_per_split=(4, 2, 3))
    bundle = copy_bundle(tmp_path)
    run_workflow(str(bundle / "configs" / "train.json"), dataset_dir=str(data), epochs=1, **FAST)
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    run_workflow(configs, "eval", dataset_dir=str(data), **{**FAST, "progress_bar": True})
    run_workflow(
        str(bundle / "configs" / "inference.json"),
        "infer",
        input=str(data / "images"),
        predictions_csv=str(tmp_path / "pred.csv"),
        network_def=TINY_NET,
    )
    out = capsys.readouterr().out  # the bundle's logging.conf logs to standard output
    assert "mri_slice_transfer.engine.progress - INFO - evaluation: 3/3 scans (" in out
    assert "mri_slice_transfer.engine.progress - INFO - inference: 9/9 scans (" in out
