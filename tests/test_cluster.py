"""Beyond one machine (issue 21, docs/cluster.md): multi-node training on localhost, sharded inference.

Every test here starts real processes (torchrun's launcher, gloo on the CPU) on tiny data with the tiny
network of ``test_bundles.py``, one epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_bundles import FAST, TINY_NET, copy_bundle, run_workflow, write_tiny_dataset

#: Settings of the training runs compared below: one epoch, a global batch of 4 (2 processes x 2).
TRAIN = ["--epochs", "1", "--network_def", json.dumps(TINY_NET), "--progress_bar", "false"]
TRAIN += ["--batch_size", "2", "--cache", "memory", "--cache_num_workers", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _bundle_run(bundle: Path, configs: list[str], launcher: list[str], args: list[str]) -> list[str]:
    files = ",".join(f"'{bundle}/configs/{c}'" for c in configs)
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "monai.bundle", "run"]
    return cmd + ["--config_file", f"[{files}]", *args]


def _check(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("cluster_data"), (8, 2, 2))


def test_two_nodes_train_the_same_weights_as_one_node_with_two_processes(
    small_data: Path, tmp_path: Path
) -> None:
    """2 "nodes" x 1 process (c10d rendezvous on localhost) == 1 node x 2 processes, same seed and batch."""
    configs = ["train.json", "multi_gpu_train.json"]
    one = copy_bundle(tmp_path / "one_node")
    args = [*TRAIN, "--dataset_dir", str(small_data)]
    single = ["--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    procs = [
        subprocess.Popen(
            _bundle_run(one, configs, single, args),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    ]
    two = copy_bundle(tmp_path / "two_nodes")
    rdzv = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d"]
    rdzv += ["--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "--rdzv_id", "test-job"]
    for node in (0, 1):
        procs.append(
            subprocess.Popen(
                _bundle_run(two, configs, [*rdzv, "--node_rank", str(node)], args),
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    _check(procs)
    a = torch.load(one / "models" / "checkpoint.pt", weights_only=True)
    b = torch.load(two / "models" / "checkpoint.pt", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 2  # 8 scans / global batch 4
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # written once, by rank 0: one row per epoch, one best model
    rows = json.loads((two / "eval" / "val_metrics.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in rows] == [1]
    assert sorted(p.name for p in (two / "models").glob("*.pt")) == ["checkpoint.pt", "model.pt"]


@pytest.fixture(scope="module")
def trained_small(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> Path:
    bundle = copy_bundle(tmp_path_factory.mktemp("cluster_trained"))
    run_workflow(str(bundle / "configs" / "train.json"), dataset_dir=str(small_data), epochs=1, **FAST)
    return bundle


def _scans_with_a_broken_file(data: Path, out: Path) -> Path:
    out.mkdir()
    for p in sorted((data / "images").glob("*.nii"))[:4]:
        shutil.copy(p, out / p.name)
    (out / "sub-02_broken.nii.gz").write_bytes(b"not a NIfTI file")  # sorted between good scans
    return out


def _rows(path: Path) -> list[dict]:
    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


#: Network outputs: equal up to float32 rounding (a process scores other batches, with other threads).
NUMBERS = ("probability", "logit")


def _assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert [list(r) for r in got] == [list(r) for r in expected]  # the same columns, the same rows
    for a, b in zip(got, expected, strict=True):
        assert {k: v for k, v in a.items() if k not in NUMBERS} == {
            k: v for k, v in b.items() if k not in NUMBERS
        }
        for key in NUMBERS:
            assert (a[key] == b[key] == "") or float(a[key]) == pytest.approx(
                float(b[key]), rel=1e-5, abs=1e-6
            )


def test_two_process_inference_and_shards_give_the_single_process_rows(
    trained_small: Path, small_data: Path, tmp_path: Path
) -> None:
    from mri_slice_transfer.cli import main

    scans = _scans_with_a_broken_file(small_data, tmp_path / "scans")
    infer = str(trained_small / "configs" / "inference.json")
    common = {"input": str(scans), "network_def": TINY_NET, "progress_bar": False, "save_features": False}
    single = tmp_path / "single.csv"
    run_workflow(infer, "infer", predictions_csv=str(single), **common)
    expected = _rows(single)
    assert len(expected) == 5 and [r["status"] for r in expected].count("error") == 1
    # 2 processes (torchrun, gloo): each scores its share, rank 0 writes the merged file
    merged = tmp_path / "two_processes.csv"
    args = ["--input", str(scans), "--network_def", json.dumps(TINY_NET), "--progress_bar", "false"]
    args += ["--predictions_csv", str(merged)]
    launcher = ["--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "monai.bundle", "run"]
    proc = subprocess.run(
        [*cmd, "--config_file", infer, *args], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_same_rows(_rows(merged), expected)
    # a SLURM array: --shard i/2 writes one file per task, merge-shards puts the rows back in order
    target = tmp_path / "eval" / "predictions.csv"
    for i in (0, 1):
        run_workflow(infer, "infer", predictions_csv=str(target), shard=f"{i}/2", **common)
    shards = sorted(p.name for p in target.parent.iterdir())
    assert shards == ["predictions.shard-0-of-2.csv", "predictions.shard-1-of-2.csv"]
    assert len(_rows(target.parent / shards[0])) == 3 and len(_rows(target.parent / shards[1])) == 2
    assert main(["merge-shards", str(target)]) == 0
    _assert_same_rows(_rows(target), expected)
    assert sorted(_rows(target), key=str) == sorted(  # the merge copies the shards' cells as they are
        _rows(target.parent / shards[0]) + _rows(target.parent / shards[1]), key=str
    )


def _raw_scans(folder: Path, n: int) -> Path:
    """``n`` raw scans: the template's T1 on its own grid (registration converges at once), ``n`` names."""
    import nibabel as nib
    import numpy as np

    from mri_slice_transfer.template import load_template

    template = load_template()
    folder.mkdir()
    for i in range(n):
        image = nib.Nifti1Image(np.asarray(template.t1, np.float32) * (1000.0 + i), template.affine)
        nib.save(image, folder / f"scan{i}.nii.gz")
    return folder


def test_prepare_on_submitit_jobs_is_killed_resumes_and_writes_one_manifest(tmp_path: Path) -> None:
    import signal
    import time

    from mri_slice_transfer.prepare.jobs import prepare_scans_as_jobs

    raw, out = _raw_scans(tmp_path / "raw", 3), tmp_path / "prepared"
    cmd = [sys.executable, "-m", "mri_slice_transfer", "prepare", str(raw), "--out", str(out)]
    cmd += ["--engine", "submitit", "--workers", "2", "--slurm-option", "cluster=local", "--no-progress"]
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(out.glob("scan*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its two jobs, part-way through the batch
    proc.wait()
    before = {p.stem for p in out.glob("scan*.json")}  # the records of the scans finished before the kill
    assert 1 <= len(before) < 3 and not (out / "manifest.csv").exists()
    table = prepare_scans_as_jobs([raw], out, workers=2, cluster="local", progress=False)
    assert table["input"].tolist() == [str(raw / f"scan{i}.nii.gz") for i in range(3)]
    skipped = {Path(p).name.removesuffix(".nii.gz") for p in table.loc[table["status"] == "skipped", "input"]}
    assert skipped == before  # finished scans are skipped by their records, the others prepared now
    assert set(table["status"]) <= {"skipped", "ok"} and len(list(out.glob("scan*.json"))) == 3
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["input"].tolist() == table["input"].tolist()


def test_grid_on_submitit_jobs_survives_a_dead_job_and_writes_the_local_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``grid --launcher slurm`` with submitit's local executor: one job per run, a job killed on its first
    attempt is a failed row, the rerun redoes only it, and results.csv equals the default launcher's."""
    from cluster_fakes import DyingRunner

    import mri_slice_transfer.experiments.runner as runner_module
    from mri_slice_transfer.cli import main

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the jobs unpickle DyingRunner
    grid = ["grid", "--bundle", "adni_ad", "--encoders", "cnn5,resnet18", "--seeds", "0"]
    grid += ["--n-bootstrap", "20"]
    monkeypatch.setattr(runner_module, "BundleRunner", lambda bundle, timeout=None: DyingRunner())
    assert main([*grid, "--out", str(tmp_path / "here"), "--no-plot"]) == 0
    monkeypatch.setattr(runner_module, "BundleRunner", lambda bundle, timeout=None: DyingRunner("resnet18"))
    jobs = [*grid, "--out", str(tmp_path / "jobs"), "--launcher", "slurm", "--slurm-option", "cluster=local"]
    assert main(jobs) == 1
    first = pd.read_csv(tmp_path / "jobs" / "results.csv")
    dead = first.loc[first["status"] == "failed"]
    assert len(dead) == 1 and "resnet18" in dead["run_id"].iloc[0]
    assert "ended without a result" in dead["error"].iloc[0]
    assert main(jobs) == 0  # the rerun submits the dead run only
    here = pd.read_csv(tmp_path / "here" / "results.csv")
    there = pd.read_csv(tmp_path / "jobs" / "results.csv")
    same = [c for c in here.columns if not c.endswith(("seconds", "wall_time_s", "run_dir"))]
    pd.testing.assert_frame_equal(there[same], here[same])
    assert (tmp_path / "jobs" / "table.md").is_file() and (tmp_path / "jobs" / "plot.png").is_file()


def test_shards_cover_every_scan_once_and_merge_names_a_missing_shard(tmp_path: Path) -> None:
    from mri_slice_transfer.engine.distributed import interleave, parse_shard, shard_path, shard_records
    from mri_slice_transfer.engine.shards import ShardError, merge_shards

    records = [{"image": f"s{i}"} for i in range(7)]
    parts = [shard_records(records, f"{i}/3") for i in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2] and interleave(parts) == records
    assert shard_records(records) == records and parse_shard("") is None
    for bad in ("3/3", "1", "a/2", "-1/2"):
        with pytest.raises(ValueError, match=f"--shard must be INDEX/COUNT .* not '{bad}'"):
            parse_shard(bad)
    assert shard_path("/x.y/pred.csv", "1/4") == "/x.y/pred.shard-1-of-4.csv"
    assert shard_path("/x.y/pred", "1/4") == "/x.y/pred.shard-1-of-4"
    target = tmp_path / "pred.csv"
    pd.DataFrame(parts[0]).to_csv(shard_path(str(target), "0/3"), index=False)
    pd.DataFrame(parts[2]).to_csv(shard_path(str(target), "2/3"), index=False)
    with pytest.raises(ShardError, match=r"shard\(s\) 1/3 missing"):
        merge_shards(target)
    pd.DataFrame(parts[1]).to_csv(shard_path(str(target), "1/3"), index=False)
    assert _rows(merge_shards(target)) == records
