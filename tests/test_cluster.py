"""Beyond one machine (issue 21, docs/cluster.md): multi-node training on localhost.

Every test here starts real processes (torchrun's launcher, gloo on the CPU) on tiny data with the tiny
network of ``test_bundles.py``, one epoch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bundles import TINY_NET, copy_bundle, write_tiny_dataset

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
