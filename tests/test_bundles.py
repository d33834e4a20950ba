"""End-to-end tests of the MONAI bundles on tiny data (a tiny network override keeps them fast).

Train -> evaluate -> infer through ``ConfigWorkflow``; resume equals an uninterrupted run; a
2-process gloo DDP run; a data list with several problems is rejected before training; inference
survives a corrupt scan.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow

from mri_slice_transfer.engine.model_record import ModelRecordError
from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE

REPO = Path(__file__).resolve().parents[1]

#: A few-thousand-parameter MONAI network standing in for SliceSetNet (same input/output shapes).
TINY_NET = {
    "_target_": "monai.networks.nets.Regressor",
    "in_shape": [1, *TEMPLATE_SHAPE],
    "out_shape": [1],
    "channels": [2, 4],
    "strides": [4, 4],
}
FAST = {"network_def": TINY_NET, "progress_bar": False, "batch_size": 4, "cache_num_workers": 1}


def write_tiny_dataset(out: Path, n_per_split: tuple[int, ...] = (8, 4, 4), seed: int = 0) -> Path:
    """AD/CN scans on the template grid: CN and AD differ by a bright block; data lists alongside."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    k = 0
    for split, n in zip(("train", "val", "test"), n_per_split, strict=True):
        rows = []
        for i in range(n):
            ad = i % 2
            vol = np.zeros(TEMPLATE_SHAPE, np.float32)
            vol[15:75, 15:95, 10:80] = 1.0 + 0.1 * rng.standard_normal((60, 80, 70))
            vol[30:60, 40:70, 30:60] += 3.0 * ad
            name = f"images/sub-{k:02d}_T1w.nii"
            nib.save(nib.Nifti1Image(vol, TEMPLATE_AFFINE), out / name)
            rows.append(
                {
                    "subject_id": f"sub-{k:02d}",
                    "session_id": "ses-1",
                    "image": name,
                    "dx": "AD" if ad else "CN",
                }
            )
            k += 1
        pd.DataFrame(rows).to_csv(out / f"{split}.csv", index=False)
    return out


def copy_bundle(dst: Path, name: str = "adni_ad") -> Path:
    """A copy of the bundle's configs, so outputs land in ``dst`` (bundle_root follows the configs)."""
    shutil.copytree(REPO / "bundles" / name / "configs", dst / name / "configs")
    return dst / name


def bundle_precision(wf: ConfigWorkflow) -> torch.autocast:
    """The autocast context a workflow's ``inferer`` computes in (``amp`` auto: bf16 on CPUs with native
    bf16), so a test's recomputation of the network's outputs matches what the bundle wrote."""
    inferer = wf.parser.get_parsed_content("inferer")
    return torch.autocast("cpu", dtype=inferer.dtype, enabled=inferer.enabled)


def run_workflow(config_file, workflow_type: str = "train", **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, **override)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_ad"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A bundle copy trained for 3 epochs on the tiny data."""
    bundle = copy_bundle(tmp_path_factory.mktemp("trained"))
    wf = run_workflow(str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=3, **FAST)
    assert wf.parser.get_parsed_content("bundle_root") == str(bundle.resolve())
    return bundle


def test_train_writes_model_checkpoint_and_metrics(trained: Path) -> None:
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())
    ckpt = torch.load(trained / "models" / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "rng", "extras"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 3 * 2  # 3 epochs of 8 scans in batches of 4
    rows = json.loads((trained / "eval" / "val_metrics.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("val_balanced_accuracy", "val_f1", "val_average_precision", "val_roc_auc"):
        assert key in rows[-1]
    assert pd.read_csv(trained / "eval" / "val_metrics.csv").shape[0] == 3
    assert any(p.name.startswith("events.out.tfevents") for p in (trained / "eval").iterdir())


def test_evaluate_scores_the_test_split(trained: Path, tiny_data: Path) -> None:
    configs = [str(trained / "configs" / f) for f in ("train.json", "evaluate.json")]
    # the best epoch's validation threshold is saved beside the model, and evaluation uses it
    record = json.loads((trained / "models" / "model.json").read_text(encoding="utf-8"))
    rows = json.loads((trained / "eval" / "val_metrics.json").read_text(encoding="utf-8"))
    assert record["metrics"] == {k: v for k, v in rows[record["epoch"] - 1].items() if k != "epoch"}
    saved = dict(record["metrics"])
    # a recorded threshold, not a recomputed one, is used (here a record of an older version: a
    # probability without the logit cut)
    del record["metrics"]["val_threshold_logit"]
    record["metrics"]["val_threshold"] = 0.123
    (trained / "models" / "model.json").write_text(json.dumps(record), encoding="utf-8")
    try:
        run_workflow(configs, "eval", dataset_dir=str(tiny_data), **FAST)
    finally:
        record["metrics"] = saved
        (trained / "models" / "model.json").write_text(json.dumps(record), encoding="utf-8")
    metrics = json.loads((trained / "eval" / "test_metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_scans"] == 4 and 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert metrics["threshold"] == pytest.approx(0.123)
    pred = pd.read_csv(trained / "eval" / "test_predictions.csv")
    assert {"subject_id", "session_id", "image", "label", "probability"} <= set(pred.columns)
    assert len(pred) == 4 and pred["probability"].between(0, 1).all()
    assert (pred["predicted"] == np.where(pred["probability"] >= 0.123, "AD", "CN")).all()
    assert (trained / "eval" / "test_roc_pr.png").read_bytes()[:4] == b"\x89PNG"  # issue 15: the run's plot
    run_workflow(configs, "eval", dataset_dir=str(tiny_data), decision_threshold=0.5, **FAST)
    metrics = json.loads((trained / "eval" / "test_metrics.json").read_text(encoding="utf-8"))
    assert metrics["threshold"] == 0.5


#: A real slice-set network at non-default settings (cnn5 on a 0.2-scaled grid: 18 x 22 x 18).
UNUSUAL_MODEL = {
    "encoder": "cnn5",
    "pretrained": False,
    "axis": "coronal",
    "aggregation": "max",
    "position_encoding": "sinusoidal",
    "input_scale": 0.2,
    "channels_last": False,
}


def test_evaluate_and_inference_rebuild_the_model_from_its_record(tiny_data: Path, tmp_path: Path) -> None:
    """Issue 13: no model option after training; evaluate and inference reproduce validation exactly."""
    bundle = copy_bundle(tmp_path)
    quiet = {"progress_bar": False, "batch_size": 4, "cache_num_workers": 1}
    run_workflow(
        str(bundle / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=2, **quiet, **UNUSUAL_MODEL
    )
    record = json.loads((bundle / "models" / "model.json").read_text(encoding="utf-8"))
    assert {k: record[k] for k in UNUSUAL_MODEL if k not in ("pretrained", "channels_last")} == {
        k: v for k, v in UNUSUAL_MODEL.items() if k not in ("pretrained", "channels_last")
    }
    assert record["spatial_size"] == [18, 22, 18] and record["num_slices"] == 22
    assert record["training_data"]["sizes"] == {"train": 8, "val": 4, "test": 4}
    # evaluation of the validation split with no model option gives the recorded validation metrics
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    val = {"validate#datalist": "$@data.records('val')"}
    run_workflow(configs, "eval", dataset_dir=str(tiny_data), **quiet, **val)
    metrics = json.loads((bundle / "eval" / "test_metrics.json").read_text(encoding="utf-8"))
    for name in ("balanced_accuracy", "f1", "average_precision", "roc_auc", "threshold_logit"):
        assert metrics[name] == record["metrics"]["val_" + name]
    evaluated = pd.read_csv(bundle / "eval" / "test_predictions.csv")
    # inference on the same scans, again with no model option, gives the same logits
    out_csv = tmp_path / "pred.csv"
    pd.DataFrame({"image": evaluated["image"]}).to_csv(tmp_path / "val.csv", index=False)
    infer = {"input": str(tmp_path / "val.csv"), "predictions_csv": str(out_csv), "progress_bar": False}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", **infer)
    inferred = pd.read_csv(out_csv)
    assert inferred["logit"].tolist() == evaluated["logit"].tolist()
    assert inferred["predicted"].tolist() == evaluated["predicted"].tolist()
    # an explicit option that contradicts the record is an error naming both values
    with pytest.raises(RuntimeError) as err:  # MONAI wraps what a config factory raises
        run_workflow(str(bundle / "configs" / "inference.json"), "infer", input_scale="1", **infer)
    assert isinstance(err.value.__cause__, ModelRecordError)
    assert re.search(r"--input_scale 1\.0 contradicts .* records input_scale 0\.2", str(err.value.__cause__))


def test_inference_survives_a_corrupt_scan(trained: Path, tiny_data: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted((tiny_data / "images").glob("*.nii"))[:3]:
        shutil.copy(p, scans / p.name)
    (scans / "zz_corrupt.nii.gz").write_bytes(b"this is not a NIfTI file")
    out_csv = tmp_path / "pred.csv"
    override = {"input": str(scans), "predictions_csv": str(out_csv), "network_def": TINY_NET}
    run_workflow(str(trained / "configs" / "inference.json"), "infer", **override)
    pred = pd.read_csv(out_csv, keep_default_na=False)
    assert len(pred) == 4
    assert (pred["status"] == "ok").sum() == 3
    bad = pred[pred["status"] == "error"].iloc[0]
    assert "zz_corrupt" in bad["image"] and bad["error"]
    assert pred.loc[pred["status"] == "ok", "probability"].astype(float).between(0, 1).all()


def test_resume_gives_the_same_weights(trained: Path, tiny_data: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path)
    train = str(bundle / "configs" / "train.json")
    run_workflow(train, dataset_dir=str(tiny_data), epochs=2, **FAST)  # "crashes" after epoch 2
    run_workflow(train, dataset_dir=str(tiny_data), epochs=3, resume=True, **FAST)
    for name in ("model.pt",):
        a = torch.load(trained / "models" / name, weights_only=True)
        b = torch.load(bundle / "models" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a = torch.load(trained / "models" / "checkpoint.pt", weights_only=True)
    b = torch.load(bundle / "models" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"]
    rows = json.loads((bundle / "eval" / "val_metrics.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_resume_after_a_crash_continues_the_cosine_schedule(tiny_data: Path, tmp_path: Path) -> None:
    from ignite.engine import Events

    cosine = {"dataset_dir": str(tiny_data), "epochs": 3, "lr_schedule": "cosine", **FAST}
    whole = copy_bundle(tmp_path / "whole")
    run_workflow(str(whole / "configs" / "train.json"), **cosine)
    crashed = copy_bundle(tmp_path / "crashed")
    # bundle_root given: the trainer is built below from the test, outside the workflow's own calls
    cosine_crashed = {**cosine, "bundle_root": str(crashed)}
    wf = ConfigWorkflow(config_file=str(crashed / "configs" / "train.json"), **cosine_crashed)
    wf.initialize()

    def crash(engine) -> None:  # runs after the epoch's validation, scheduler step and checkpoint
        raise RuntimeError("simulated crash")

    wf.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_COMPLETED(once=2), crash)
    with pytest.raises(RuntimeError) as info:  # MONAI wraps it in its own RuntimeError
        wf.run()
    assert "simulated crash" in repr(info.value) + repr(info.value.__cause__)
    assert json.loads((crashed / "eval" / "val_metrics.json").read_text(encoding="utf-8"))[-1]["epoch"] == 2
    run_workflow(str(crashed / "configs" / "train.json"), resume=True, **cosine_crashed)
    a = torch.load(whole / "models" / "checkpoint.pt", weights_only=True)
    b = torch.load(crashed / "models" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extras"]["lr_scheduler"]["last_epoch"] == b["extras"]["lr_scheduler"]["last_epoch"] == 3
    lrs = [g["lr"] for g in a["optimizer"]["param_groups"]]
    assert lrs == [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert lrs[0] == pytest.approx(0.0, abs=1e-12)  # cosine: 0 after the last epoch


def test_datalist_problems_are_all_reported_before_training(tiny_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    train = pd.read_csv(bad / "train.csv")
    train.loc[0, "dx"] = "MCI"  # unknown label
    train.loc[1, "image"] = "images/missing.nii"  # missing file
    train.to_csv(bad / "train.csv", index=False)
    val = pd.read_csv(bad / "val.csv")
    val.loc[0, "subject_id"] = train.loc[2, "subject_id"]  # one subject in two splits
    val.drop(columns=["dx"]).to_csv(bad / "val.csv", index=False)  # missing label column
    bundle = copy_bundle(tmp_path)
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), dataset_dir=str(bad), **FAST)
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    err = info.value
    while not isinstance(err, DataListError) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, DataListError), info.value
    text = str(err)
    assert "MCI" in text and "missing.nii" in text and "dx" in text and "leakage" in text
    assert not (bundle / "models").exists()


def test_two_process_gloo_ddp(tiny_data: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path)
    configs = f"['{bundle}/configs/train.json','{bundle}/configs/multi_gpu_train.json']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--dataset_dir",
        str(tiny_data),
        "--epochs",
        "2",
    ]
    cmd += ["--network_def", json.dumps(TINY_NET), "--progress_bar", "false", "--batch_size", "2"]
    cmd += ["--cache_dir", str(tmp_path / "scan_cache")]  # real data: the on-disk cache (issue 14)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the cache is built once, not once per rank: one build per train + val scan, shared out to both ranks
    builds = [line.split() for line in (tmp_path / "scan_cache").glob("*/builds.log").__next__().open()]
    assert len(builds) == 8 + 4 and len({b[3] for b in builds}) == 12
    assert {b[1] for b in builds} == {"rank=0", "rank=1"}
    assert (bundle / "models" / "model.pt").is_file()
    ckpt = torch.load(bundle / "models" / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 * 2  # 8 scans / (2 processes x batch 2) per epoch
    rows = json.loads((bundle / "eval" / "val_metrics.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in rows] == [1, 2]


@pytest.mark.parametrize("bundle", ["adni_ad", "ukbb_brain_age"])
def test_configs_read_like_a_recipe(bundle: str) -> None:
    """Issue 18: few, short expressions; no conversion wrappers; handlers by id, not list position."""
    for path in sorted((REPO / "bundles" / bundle / "configs").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        expressions = [line.strip() for line in text.splitlines() if '"$' in line]
        assert len(expressions) <= 20 and all(len(e) <= 100 for e in expressions), path.name
        assert "as_bool(" not in text and "as_optional(" not in text, path.name
        assert not re.search(r"handlers#\d|handlers\[", text), path.name


def test_the_recipe_is_the_demo_one_without_data() -> None:
    from mri_slice_transfer.engine.recipe import training_recipe

    real = {"epochs": "100", "batch_size": 8, "lr": "1e-4", "lr_schedule": "constant", "input_scale": 1}
    demo = {"epochs": 10, "batch_size": "4", "lr": 3e-4, "lr_schedule": "cosine", "input_scale": "0.5"}
    real, demo = {**real, "cache": "disk"}, {**demo, "cache": "memory"}
    chosen = training_recipe("null", "", real, demo)
    assert (chosen.demo, chosen.epochs, chosen.batch_size, chosen.input_scale) == (True, 10, 4, 0.5)
    chosen = training_recipe(None, "/data", real, demo)
    assert (chosen.demo, chosen.epochs, chosen.lr, chosen.input_scale) == (False, 100, 1e-4, 1.0)
    with pytest.raises(ValueError, match="demo_epochs must be a number, not 'ten'"):
        training_recipe(None, None, real, {**demo, "epochs": "ten"})
