"""Lost work and unsafe runs (issue 20), on tiny bundles.

Durable atomic writes (fsync, umask mode, stale temporary files swept), checked weight files
(``model.json`` records the sha256 of ``model.pt``, ``checkpoint.pt`` embeds its digest; truncated or
corrupt files give one error naming the file in evaluate / inference / resume), one training per
bundle folder (lock file), no fresh run over an earlier one without ``--overwrite true``, a stop on a
non-finite loss, and one training log line per epoch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow
from test_bundles import FAST, TINY_NET, copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer import fileio
from mri_slice_transfer.engine import (
    ExistingRunError,
    NonFiniteLossError,
    RunLockedError,
    WeightFileError,
)
from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.fileio import atomic_write_text, sweep_temp_files


def find_error(exc: BaseException, cls: type) -> BaseException:
    """``exc`` or the error of type ``cls`` it wraps (MONAI wraps errors raised in config expressions)."""
    seen = exc
    while seen is not None and not isinstance(seen, cls):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None, f"no {cls.__name__} in {exc!r}"
    return seen


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_ad_rel"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A bundle trained for 2 epochs; tests that damage it work on a copy (:func:`copy_trained`)."""
    bundle = copy_bundle(tmp_path_factory.mktemp("trained_rel"))
    run_workflow(str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=2, **FAST)
    return bundle


def copy_trained(trained: Path, dst: Path) -> Path:
    shutil.copytree(trained, dst / trained.name)
    return dst / trained.name


def overwrite_tensor_bytes(path: Path, n: int = 16) -> None:
    """Random bytes inside the largest tensor's data record, same file size (a bit-rot / bad copy)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start : start + n] = bytes(255 - b for b in data[start : start + n])  # every byte changes
    path.write_bytes(bytes(data))


def test_atomic_writes_are_fsynced_and_follow_the_umask(tmp_path: Path, monkeypatch) -> None:
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    old = os.umask(0o027)
    try:
        out = atomic_write_text(tmp_path / "a" / "result.csv", "x\n")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o640  # mkstemp alone gives 0o600
    assert len(synced) >= 2  # the file before the rename, the folder after it
    assert [p.name for p in out.parent.iterdir()] == ["result.csv"]


def test_sweep_removes_only_old_temporary_files_of_the_given_destinations(tmp_path: Path) -> None:
    dest = tmp_path / "checkpoint.pt"
    stale = tmp_path / ".checkpoint.pt.ab_cd123.pt"  # what atomic_path names it
    other = tmp_path / ".model.pt.ab_cd123.pt"
    keep = [tmp_path / ".checkpoint.pt.notmine", tmp_path / "checkpoint.pt.ab_cd123.pt", other]
    for p in [stale, *keep]:
        p.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    assert sweep_temp_files([dest], older_than=1) == []  # not older than the cut-off: left alone
    assert sweep_temp_files([dest]) == [stale]
    assert all(p.exists() for p in keep)


def test_fresh_run_into_a_trained_folder_refuses_unless_overwrite(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    bundle = copy_trained(trained, tmp_path)
    models = bundle / "models"
    stale = models / ".checkpoint.pt.k1ll3d_9.pt"  # a kill -9 during a checkpoint write
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (1, 1))
    model_before = (models / "model.pt").read_bytes()
    train = str(bundle / "configs" / "train.json")
    with pytest.raises(Exception) as info:
        run_workflow(train, dataset_dir=str(tiny_data), epochs=1, **FAST)
    text = str(find_error(info.value, ExistingRunError))
    assert "model.pt" in text and "--resume true" in text and "--overwrite true" in text
    assert (models / "model.pt").read_bytes() == model_before
    assert stale.exists()  # refused before taking the lock: nothing touched
    assert not (models / "train.lock").exists()
    run_workflow(train, dataset_dir=str(tiny_data), epochs=1, overwrite=True, **FAST)
    assert not stale.exists()  # swept at the start, under the lock
    rows = json.loads((bundle / "eval" / "val_metrics.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in rows] == [1]  # the old run's epochs 1-2 are gone, not mixed in
    assert pd.read_csv(bundle / "eval" / "val_metrics.csv")["epoch"].tolist() == [1]


def test_fresh_run_is_refused_before_the_data_are_loaded(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    bundle = copy_trained(trained, tmp_path)
    lists = tmp_path / "lists"  # the data lists without their images: loading them would fail
    lists.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(tiny_data / f"{split}.csv", lists / f"{split}.csv")
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), dataset_dir=str(lists), **FAST)
    wf.initialize()  # no check_properties(): it builds the trainer (and data); `monai.bundle run` does not
    with pytest.raises(Exception) as info:
        wf.run()
    find_error(info.value, ExistingRunError)
    lock = bundle / "models" / "train.lock"
    assert not lock.exists()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}  # a live process
    lock.write_text(json.dumps(holder), encoding="utf-8")
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), dataset_dir=str(lists), resume=True, **FAST
    )
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    assert str(lock) in str(find_error(info.value, RunLockedError))


def test_model_record_holds_the_sha256_and_a_corrupt_model_is_refused(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    import hashlib

    record = json.loads((trained / "models" / "model.json").read_text(encoding="utf-8"))
    assert record["sha256"] == hashlib.sha256((trained / "models" / "model.pt").read_bytes()).hexdigest()
    bundle = copy_trained(trained, tmp_path)
    model = bundle / "models" / "model.pt"
    overwrite_tensor_bytes(model)
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    with pytest.raises(Exception) as info:
        run_workflow(configs, "eval", dataset_dir=str(tiny_data), **FAST)
    text = str(find_error(info.value, WeightFileError))
    assert str(model) in text and "model.json" in text and "sha256" in text
    scans = tiny_data / "images"
    override = {"input": str(scans), "predictions_csv": str(tmp_path / "p.csv"), "network_def": TINY_NET}
    with pytest.raises(Exception) as info:
        run_workflow(str(bundle / "configs" / "inference.json"), "infer", **override)
    assert str(model) in str(find_error(info.value, WeightFileError))
    # a model of another epoch next to this record (a kill between the two writes): refused too
    torch.save({k: v + 1 for k, v in torch.load(trained / "models" / "model.pt").items()}, model)
    with pytest.raises(Exception) as info:
        run_workflow(str(bundle / "configs" / "inference.json"), "infer", **override)
    assert "different runs or epochs" in str(find_error(info.value, WeightFileError))


def test_truncated_model_is_one_clear_error_in_evaluate(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    bundle = copy_trained(trained, tmp_path)
    model = bundle / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[:200])
    (bundle / "models" / "model.json").unlink()  # no record to compare with: the reader must say it
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    with pytest.raises(Exception) as info:
        run_workflow(configs, "eval", dataset_dir=str(tiny_data), **FAST)
    text = str(find_error(info.value, WeightFileError))
    assert str(model) in text and "truncated" in text


@pytest.mark.parametrize("damage", ["truncate", "random_bytes"])
def test_broken_checkpoint_is_refused_on_resume(
    trained: Path, tiny_data: Path, tmp_path: Path, damage
) -> None:
    bundle = copy_trained(trained, tmp_path)
    ckpt = bundle / "models" / "checkpoint.pt"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        overwrite_tensor_bytes(ckpt)
    with pytest.raises(Exception) as info:
        run_workflow(
            str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=3, resume=True, **FAST
        )
    text = str(find_error(info.value, WeightFileError))
    assert str(ckpt) in text and ("truncated" if damage == "truncate" else "sha256") in text
    assert not (bundle / "models" / "train.lock").exists()


def test_second_training_refuses_while_another_holds_the_lock(tiny_data: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path)
    lock = bundle / "models" / "train.lock"
    lock.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        lock.write_text(json.dumps({"pid": other.pid, "host": host, "started": "now"}), encoding="utf-8")
        with pytest.raises(Exception) as info:
            run_workflow(str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=1, **FAST)
        text = str(find_error(info.value, RunLockedError))
        assert str(lock) in text and str(other.pid) in text and host in text
        assert lock.exists() and not (bundle / "models" / "model.pt").exists()
    finally:
        other.kill()
        other.wait()
    # the holder is gone (killed): its lock is stale and taken over, and released at the end
    run_workflow(str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=1, **FAST)
    assert (bundle / "models" / "model.pt").is_file() and not lock.exists()


def test_non_finite_loss_stops_training_with_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path)
    nan_loss = "$lambda pred, label: (pred - label.float()).abs().mean() * float('nan')"
    with pytest.raises(Exception) as info:
        run_workflow(
            str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), loss=nan_loss, **FAST
        )
    text = str(find_error(info.value, NonFiniteLossError))
    assert "epoch 1, iteration 1" in text and "learning rate" in text
    assert not (bundle / "models" / "checkpoint.pt").exists()


def test_training_log_has_one_info_line_per_epoch(tiny_data: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path)
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=2, **FAST
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)  # after the workflow applied the bundle's logging.conf
    try:
        wf.initialize()
        wf.run()
        wf.finalize()
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    epoch_lines = [m for m in lines if "train_loss" in m]
    assert len(epoch_lines) == 2, lines  # not one per iteration
    assert epoch_lines[1].startswith("epoch 2/2: train_loss ") and "lr " in epoch_lines[1]
    assert "val_balanced_accuracy" in epoch_lines[1]
    assert not [m for m in lines if "Epoch[" in m or "Iter:" in m], lines


def test_a_broken_model_file_is_one_message_on_the_command_line(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    bundle = copy_trained(trained, tmp_path)
    model = bundle / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[:300])
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
    ]
    cmd += ["--input", str(tiny_data / "images"), "--network_def", json.dumps(TINY_NET)]
    env = {k: v for k, v in os.environ.items() if k != "MRI_SLICE_TRANSFER_TRACEBACK"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR ")]
    assert errors, proc.stderr[-2000:]
    assert errors == [f"ERROR WeightFileError: {errors[0].split(': ', 1)[1]}"] and str(model) in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout  # was ~80 lines of traceback


def test_short_errors_leaves_other_errors_alone(monkeypatch, capsys) -> None:
    from mri_slice_transfer.engine.short_errors import short_errors, user_error

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(a[1]))
    short_errors()
    wrapped = RuntimeError("Failed to evaluate ConfigExpression")
    wrapped.__cause__ = WeightFileError("/x/model.pt: truncated. Train again.")
    assert user_error(wrapped) is wrapped.__cause__
    sys.excepthook(RuntimeError, wrapped, None)
    assert "ERROR WeightFileError: /x/model.pt: truncated. Train again." in capsys.readouterr().err
    scan = RuntimeError("Failed to instantiate component 'monai.data.dataset.CacheDataset'")
    scan.__context__ = ScanError("/d/sub-05_T1w.nii", "could not be read as NIfTI")
    assert user_error(scan) is scan.__context__  # a broken scan while caching: one line naming it
    other = KeyError("a bug")
    sys.excepthook(KeyError, other, None)
    assert seen == [other]  # the full traceback, as before
