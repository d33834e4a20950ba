"""``mri-slice-transfer grid``: planning, resume with a broken run, summaries, and one real tiny run.

A fake runner writes the files a bundle run writes (logs, metrics, predictions) without training, so
resume and failure handling are tested in well under a second; one real run goes through
``python -m monai.bundle run`` on the tiny data of ``test_bundles.py`` with its tiny network.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mri_slice_transfer.cli import main
from mri_slice_transfer.commands.grid import QUICK_EPOCHS
from mri_slice_transfer.experiments.bootstrap import bootstrap_ci
from mri_slice_transfer.experiments.presets import PRESETS, ModelConfig, expand_grid
from mri_slice_transfer.experiments.run_folder import collect_existing
from mri_slice_transfer.experiments.runner import (
    BundleRunner,
    GridError,
    PlannedRun,
    RunFailed,
    find_bundle,
    plan_runs,
    run_grid,
)
from mri_slice_transfer.experiments.summary import summarize
from mri_slice_transfer.experiments.tables import format_paper_table, format_report, format_table


class FakeRunner:
    """Writes what a bundle run writes; runs listed in ``fail`` crash during training."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.fail = set(fail)
        self.calls: list[tuple[str, str, bool]] = []

    def commands(self, run: PlannedRun, run_dir: Path) -> dict[str, list[str]]:
        return {"train": ["fake-train", run.run_id], "evaluate": ["fake-evaluate", run.run_id]}

    def train(self, run: PlannedRun, run_dir: Path, resume: bool) -> None:
        self.calls.append(("train", run.run_id, resume))
        init = "imagenet" if run.config.pretrained else "scratch"
        log = run_dir / "train.log"
        log.touch()
        (run_dir / "run_info.json").write_text(json.dumps({"encoder_init": init}))  # as log_run_info does
        (run_dir / "models").mkdir(exist_ok=True)
        (run_dir / "models" / "checkpoint.pt").write_bytes(b"epoch 1")
        if run.run_id in self.fail:
            with log.open("a", encoding="utf-8") as fh:
                fh.write("Traceback (most recent call last):\nRuntimeError: out of memory (fake)\n")
            raise RunFailed(f"train failed: RuntimeError: out of memory (fake) (see {log})", log)
        (run_dir / "models" / "model.pt").write_bytes(b"weights")
        base = 0.6 + 0.1 * run.row + 0.01 * run.seed
        rows = [
            {"epoch": 1, "val_balanced_accuracy": base, "val_f1": 0.5},
            {"epoch": 2, "val_balanced_accuracy": base + 0.05, "val_f1": 0.6},
            {"epoch": 3, "val_balanced_accuracy": base + 0.05, "val_f1": 0.7},  # tie: epoch 2 stays best
        ]
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / "val_metrics.json").write_text(json.dumps(rows))

    def evaluate(self, run: PlannedRun, run_dir: Path) -> None:
        self.calls.append(("evaluate", run.run_id, False))
        rng = np.random.default_rng(run.seed + 10 * run.row)
        label = np.array([0, 1] * 10, dtype=float)
        prob = np.clip(
            0.5 + (label - 0.5) * (0.2 + 0.1 * run.row) + 0.2 * rng.standard_normal(20), 0.01, 0.99
        )
        frame = pd.DataFrame(
            {
                "subject_id": [f"s{i // 2}" for i in range(20)],  # two scans per subject
                "session_id": ["ses-1", "ses-2"] * 10,
                "image": [f"/x/{i}.nii" for i in range(20)],
                "label": label,
                "probability": prob,
                "status": "ok",
                "error": "",
            }
        )
        frame.to_csv(run_dir / "eval" / "test_predictions.csv", index=False)
        from mri_slice_transfer.engine.metrics import compute_metrics

        metrics = compute_metrics("adni_ad", np.log(prob / (1 - prob)), label)
        metrics.update(n_scans=20, n_errors=0)
        (run_dir / "eval" / "test_metrics.json").write_text(json.dumps(metrics))

    def count_parameters(self, run: PlannedRun) -> int:
        return {"cnn5": 998_625, "resnet18": 11_188_833, "conv3d": 2_948_801}[run.config.encoder]


CONFIGS = [
    ModelConfig("conv3d", None, None),
    ModelConfig("cnn5", "sagittal", "mean", "learned"),
    ModelConfig("resnet18", "axial", "mean", "none", True),
]


def test_presets_are_the_papers_tables() -> None:
    ad, ba = PRESETS["paper-ad"], PRESETS["paper-brain-age"]
    assert len(ad.rows) == 19 and len({c.key() for c in ad.rows}) == 19
    assert ad.rows[0].is_conv3d and ad.paper[0]["balanced_accuracy"] == (88.40, 0.703)
    assert [c.axis for c in ad.rows[1:4]] == ["sagittal", "coronal", "axial"]
    assert (
        sum(c.pretrained for c in ad.rows) == 6
        and sum(c.position_encoding == "learned" for c in ad.rows) == 9
    )
    assert ad.paper[18]["balanced_accuracy"] == (88.60, 2.058)  # ResNet-18 ImageNet + PE, axial
    assert len(ba.rows) == 9 and {c.axis for c in ba.rows if not c.is_conv3d} == {"sagittal"}
    assert [c.aggregation for c in ba.rows].count("attention") == 2 and ba.rows[8].encoder == "resnet50"
    assert ba.paper[6]["mae"] == (2.715, 0.029)
    assert [c.describe() for c in ad.headline_rows()] == [
        "3D-CNN",
        "2D-CNN (Mean) sagittal, scratch",
        "2D-ResNet-18 (Mean) axial, scratch",
        "2D-ResNet-18 (Mean) axial, ImageNet",
        "2D-ResNet-18 (Mean) axial + learned pos. enc., ImageNet",
    ]
    table = format_paper_table(ad)
    assert table.count("\n") == 21 and "| 3D-CNN | - | ✗ | - | 88.40 ± 0.703" in table
    assert "~ 26M" in format_paper_table(ba) and "Axis" not in format_paper_table(ba)


def test_expand_grid_drops_impossible_and_duplicate_models() -> None:
    configs, notes = expand_grid(
        ["conv3d", "cnn5", "resnet18"], AXES3, ["mean"], ["none", "learned"], [False, True]
    )
    keys = [c.key() for c in configs]
    assert keys.count("conv3d") == 1 and len(keys) == 1 + 6 + 12
    assert not any(c.encoder == "cnn5" and c.pretrained for c in configs)
    assert any("cnn5 has no ImageNet weights" in n for n in notes)
    runs = plan_runs(configs[:2], [0, 1], {"epochs": 3})
    assert [r.run_id for r in runs][:2] == ["conv3d_seed0", "conv3d_seed1"]
    assert "axis" not in runs[0].overrides and runs[0].overrides["epochs"] == 3
    assert plan_runs([CONFIGS[2]], [0])[0].overrides["pretrained"] == "auto"
    assert plan_runs([CONFIGS[2]], [0], strict_pretrained=True)[0].overrides["pretrained"] == "true"


AXES3 = ["sagittal", "coronal", "axial"]


def test_grid_records_a_failure_goes_on_and_resumes(tmp_path: Path) -> None:
    runs = plan_runs(CONFIGS, [0, 1], {"epochs": 3})
    broken_id = "cnn5_sagittal_mean_pe-learned_scratch_seed1"
    first = FakeRunner(fail=(broken_id,))
    lines: list[str] = []
    results = run_grid(runs, tmp_path, first, "adni_ad", n_bootstrap=50, progress=lines.append)
    assert [r["status"] for r in results] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    failed = results[3]
    assert failed["run_id"] == broken_id and "out of memory (fake)" in failed["error"]
    assert "RuntimeError" in failed["log_tail"] and failed["stage"] == "train"
    assert (tmp_path / "runs" / broken_id / "failed.json").is_file()
    assert not (tmp_path / "runs" / broken_id / "done.json").exists()
    assert any("FAILED" in line for line in lines) and any("[6/6]" in line for line in lines)
    ok = results[0]
    assert ok["best_epoch"] == 2 and ok["epochs_run"] == 3 and ok["encoder_init"] == "scratch"
    assert ok["n_params"] == 2_948_801 and ok["test_balanced_accuracy_ci_low"] <= ok["test_balanced_accuracy"]
    assert ok["bootstrap_unit"] == "subject" and ok["n_test_subjects"] == 10
    config = json.loads((tmp_path / "runs" / "conv3d_seed0" / "config.json").read_text(encoding="utf-8"))
    assert (
        config["overrides"]["encoder"] == "conv3d"
        and config["commands"]["train"] == "fake-train conv3d_seed0"
    )

    # a run interrupted after training (no done.json; train.done present): only evaluation is redone
    (tmp_path / "runs" / "conv3d_seed1" / "done.json").unlink()
    # a run interrupted during training (checkpoint, no markers): training resumes
    interrupted = tmp_path / "runs" / "resnet18_axial_mean_pe-none_imagenet_seed0"
    (interrupted / "done.json").unlink()
    (interrupted / "train.done").unlink()

    second = FakeRunner()
    results = run_grid(runs, tmp_path, second, "adni_ad", n_bootstrap=50, progress=None)
    assert [r["status"] for r in results] == ["ok"] * 6
    assert second.calls == [
        ("evaluate", "conv3d_seed1", False),
        ("train", broken_id, True),  # the failed attempt left a checkpoint
        ("evaluate", broken_id, False),
        ("train", "resnet18_axial_mean_pe-none_imagenet_seed0", True),
        ("evaluate", "resnet18_axial_mean_pe-none_imagenet_seed0", False),
    ]
    assert not (tmp_path / "runs" / broken_id / "failed.json").exists()

    # everything finished: a third pass runs nothing
    third = FakeRunner()
    run_grid(runs, tmp_path, third, "adni_ad", progress=None)
    assert third.calls == []

    # other settings in the same folder are refused (naming the runs), --redo starts over
    changed = plan_runs(CONFIGS, [0, 1], {"epochs": 5})
    with pytest.raises(GridError, match=r"conv3d_seed0: made with other settings \(epochs: 3 -> 5\)"):
        run_grid(changed, tmp_path, FakeRunner(), "adni_ad", progress=None)
    redo = FakeRunner()
    run_grid(changed[:1], tmp_path, redo, "adni_ad", redo=True, n_bootstrap=10, progress=None)
    assert redo.calls == [("train", "conv3d_seed0", False), ("evaluate", "conv3d_seed0", False)]

    # summaries: results.csv, table.md, plot.png
    paths = summarize(collect_existing(tmp_path), tmp_path, "adni_ad", preset=PRESETS["paper-ad"])
    frame = pd.read_csv(paths["results"])
    assert len(frame) == 6 and (frame["status"] == "ok").all()
    assert list(frame.columns[:4]) == ["run_id", "status", "task", "model"]
    assert {"test_f1_ci_low", "test_f1_ci_high", "val_balanced_accuracy", "wall_time_s", "n_params"} <= set(
        frame
    )
    table = paths["table"].read_text(encoding="utf-8")
    assert "| 2D-ResNet-18 (Mean) | ✗ | ✓ | axial |" in table and "## The paper" in table
    assert paths["plot"].stat().st_size > 1000 and paths["plot"].read_bytes()[:4] == b"\x89PNG"


def synthetic_results(task: str = "adni_ad") -> pd.DataFrame:
    rows = []
    values = {
        ("conv3d", "-", "-", "none", False): [0.80, 0.82, 0.84],
        ("cnn5", "sagittal", "mean", "learned", False): [0.70, 0.74, None],  # third seed failed
        ("resnet18", "axial", "mean", "none", True): [0.86, 0.88, 0.90],
        ("resnet18", "coronal", "mean", "none", True): [0.75],
    }
    models = {"conv3d": "3D-CNN", "cnn5": "2D-CNN (Mean)", "resnet18": "2D-ResNet-18 (Mean)"}
    for row, ((enc, axis, agg, pe, pt), vals) in enumerate(values.items()):
        for seed, v in enumerate(vals):
            r = {
                "run_id": f"{enc}_{axis}_seed{seed}",
                "status": "ok" if v is not None else "failed",
                "task": task,
                "model": models[enc],
                "encoder": enc,
                "axis": axis,
                "aggregation": agg,
                "position_encoding": pe,
                "pretrained": pt,
                # the coronal ResNet could not load ImageNet weights
                "encoder_init": ("imagenet" if axis == "axial" else "random (ImageNet weights unavailable)")
                if pt
                else "scratch",
                "seed": seed,
                "n_params": {"conv3d": 2948801, "cnn5": 1016097, "resnet18": 11188833}[enc],
                "row": row,
                "data": "demo (synthetic)",
                "error": "" if v is not None else "train failed: RuntimeError: boom",
                "best_epoch": 3,
                "wall_time_s": 12.0,
            }
            if v is not None:
                if task == "adni_ad":
                    r.update(test_balanced_accuracy=v, test_f1=v - 0.05, test_average_precision=v + 0.02)
                    r.update(test_balanced_accuracy_ci_low=v - 0.1, test_balanced_accuracy_ci_high=v + 0.05)
                else:
                    r.update(test_mae=10 * v, test_rmse=12 * v)
            rows.append(r)
    return pd.DataFrame(rows)


def test_table_formatter_on_a_synthetic_results_file(tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    synthetic_results().to_csv(csv, index=False)
    frame = pd.read_csv(csv)
    table = format_table(frame, "adni_ad", title="AD")
    lines = table.splitlines()
    assert lines[0] == "**AD**"
    header = "| Encoder | Pos. Enc. | Pretrained | Axis | Bal. Accuracy | F1 Score | Avg. Precision "
    header += "| # Params | Seeds |"
    assert lines[2] == header
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert rows[0] == "| 3D-CNN | - | ✗ | - | 82.00 ± 2.00 | 77.00 ± 2.00 | 84.00 ± 2.00 | 2.95M | 3 |"
    assert (
        rows[1] == "| 2D-CNN (Mean) | ✓ | ✗ | sagittal | 72.00 ± 2.83 | 67.00 ± 2.83 | 74.00 ± 2.83 | 1.02M "
        "| 2 (1 failed) |"
    )
    # best mean per column in bold (higher is better for AD), a single seed has no std
    assert (
        rows[2]
        == "| 2D-ResNet-18 (Mean) | ✗ | ✓ | axial | **88.00** ± 2.00 | **83.00** ± 2.00 | **90.00** ± 2.00 "
        "| 11.19M | 3 |"
    )
    assert rows[3].startswith("| 2D-ResNet-18 (Mean) | ✗ | ✓ † | coronal | 75.00 | 70.00 | 77.00 |")
    assert "† ImageNet weights were requested but not used" in table and "single seed" in table
    assert "Failed seeds are left out" in table

    report = format_report(frame, "adni_ad", preset=PRESETS["paper-ad"])
    assert "Synthetic data" in report and "## Per run (95% bootstrap CI" in report
    assert "| cnn5_sagittal_seed2 | 2 | failed |" in report
    assert "82.00 [72.00, 87.00]" in report  # conv3d seed 1 with its confidence interval

    brain = format_table(synthetic_results("brain_age"), "brain_age")
    assert "Axis" in brain and "Mean Absolute Err. (MAE)" in brain
    assert (
        "| 2D-CNN (Mean) | ✓ | ✗ | sagittal | **7.200** ± 0.283 | **8.640** ± 0.339 |" in brain
    )  # lower wins


def test_bootstrap_ci_resamples_subjects() -> None:
    label = np.array([0, 1] * 30, dtype=float)
    perfect = np.where(label > 0, 3.0, -3.0)
    ci = bootstrap_ci("adni_ad", perfect, label, n_bootstrap=200)
    assert ci["balanced_accuracy"] == (1.0, 1.0) and ci["roc_auc"] == (1.0, 1.0)
    rng = np.random.default_rng(0)
    age = rng.uniform(50, 80, 60)
    pred = age + rng.normal(0, 3, 60)
    groups = [f"s{i // 3}" for i in range(60)]  # 20 subjects x 3 scans
    by_subject = bootstrap_ci("brain_age", pred, age, groups, n_bootstrap=300, seed=1)
    by_scan = bootstrap_ci("brain_age", pred, age, None, n_bootstrap=300, seed=1)
    mae = float(np.mean(np.abs(pred - age)))
    for ci in (by_subject, by_scan):
        assert ci["mae"][0] < mae < ci["mae"][1]
    assert bootstrap_ci("brain_age", pred, age, groups, n_bootstrap=300, seed=1) == by_subject  # seeded


@pytest.mark.parametrize(("task", "threshold"), [("adni_ad", 0.5), ("adni_ad", 0.7), ("brain_age", 0.5)])
def test_fast_bootstrap_equals_compute_metrics_on_every_resample(task: str, threshold: float) -> None:
    rng = np.random.default_rng(3)
    label = (rng.random(40) < 0.3).astype(float) if task == "adni_ad" else rng.uniform(50, 80, 40).round(0)
    pred = (
        (rng.normal(size=40) + 2 * label).round(1)
        if task == "adni_ad"
        else (label + rng.normal(0, 4, 40)).round(0)
    )
    groups = [f"s{i // 2}" for i in range(40)]  # rounded scores: many ties; some one-class resamples
    fast = bootstrap_ci(task, pred, label, groups, n_bootstrap=60, seed=5, threshold=threshold)
    exact = bootstrap_ci(task, pred, label, groups, n_bootstrap=60, seed=5, exact=True, threshold=threshold)
    assert fast.keys() == exact.keys()
    for name in fast:
        assert np.allclose(fast[name], exact[name], atol=1e-9, equal_nan=True), (
            name,
            fast[name],
            exact[name],
        )


def test_a_run_reports_its_encoder_init_as_data(tmp_path: Path, monkeypatch) -> None:
    import torch

    from mri_slice_transfer.engine import log_run_info
    from mri_slice_transfer.engine.run_info import RUN_INFO_ENV
    from mri_slice_transfer.experiments.runner import collect_run_result

    net = torch.nn.Linear(1, 1)
    net.encoder_init = "random (ImageNet weights unavailable)"
    monkeypatch.setenv(RUN_INFO_ENV, str(tmp_path / "run_info.json"))
    log_run_info("cpu", False, network=net)  # what the bundle's train.json runs
    assert json.loads((tmp_path / "run_info.json").read_text(encoding="utf-8")) == {
        "encoder_init": net.encoder_init
    }

    run = plan_runs([CONFIGS[2]], [0])[0]
    FakeRunner().evaluate(run, _trained(tmp_path))
    (tmp_path / "train.log").write_text("encoder initialisation: imagenet\n")  # the log is not read
    assert collect_run_result("adni_ad", run, tmp_path, n_bootstrap=0)["encoder_init"] == net.encoder_init
    # a run folder trained before run_info.json existed: its train log still says it
    (tmp_path / "run_info.json").unlink()
    assert collect_run_result("adni_ad", run, tmp_path, n_bootstrap=0)["encoder_init"] == "imagenet"


def test_bundle_runner_asks_the_train_command_for_run_info(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    from mri_slice_transfer.engine.run_info import RUN_INFO_ENV

    seen: dict[str, dict[str, str]] = {}

    def fake_run(cmd, env, **_kw):
        seen[cmd[-2]] = env
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    runner = BundleRunner(find_bundle("adni_ad"))
    run = plan_runs([CONFIGS[0]], [0])[0]
    runner.train(run, tmp_path, resume=False)
    assert seen["--overwrite"][RUN_INFO_ENV] == str(tmp_path / "run_info.json")
    runner.evaluate(run, tmp_path)
    assert RUN_INFO_ENV not in seen["--seed"]  # evaluation does not overwrite what training reported


def _trained(run_dir: Path) -> Path:
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "val_metrics.json").write_text(
        json.dumps([{"epoch": 1, "val_balanced_accuracy": 0.5}])
    )
    return run_dir


def _grid_modules_imported(module: str) -> set[str]:
    """Experiments modules ``experiments/<module>.py`` imports anywhere (also inside functions)."""
    import mri_slice_transfer.experiments as experiments

    tree = ast.parse((Path(experiments.__file__).parent / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "mri_slice_transfer.experiments."
        ):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {
                a.name.rsplit(".", 1)[1]
                for a in node.names
                if a.name.startswith("mri_slice_transfer.experiments.")
            }
    return found


def test_runner_and_summary_share_the_run_folder_contract_not_each_other() -> None:
    runner, summary = _grid_modules_imported("runner"), _grid_modules_imported("summary")
    assert "summary" not in runner and "runner" not in summary
    assert "run_folder" in runner and "run_folder" in summary
    assert _grid_modules_imported("run_folder") == set()


@pytest.mark.parametrize(("task", "threshold"), [("adni_ad", 0.5), ("adni_ad", 0.3), ("brain_age", 0.5)])
def test_vectorised_metrics_equal_compute_metrics_on_each_resample(task: str, threshold: float) -> None:
    from mri_slice_transfer.experiments.bootstrap import resample_metrics

    rng = np.random.default_rng(7)
    label = (rng.random(30) < 0.4).astype(float) if task == "adni_ad" else rng.uniform(50, 80, 30)
    pred = (rng.normal(size=30) + label).round(1) if task == "adni_ad" else (label + rng.normal(0, 4, 30))
    counts = rng.integers(0, 3, size=(40, 30)) * (rng.random((40, 30)) < 0.3)  # sparse: one-class rows
    counts[:, 0] += 1  # no empty resample
    fast = resample_metrics(task, pred, label, counts, threshold)
    exact = resample_metrics(task, pred, label, counts, threshold, exact=True)
    assert fast.keys() == exact.keys()
    for name in fast:
        assert np.allclose(fast[name], exact[name], atol=1e-9, equal_nan=True), name
    assert task == "brain_age" or np.isnan(exact["roc_auc"]).any()  # one-class resamples were drawn


def test_grid_command_dry_run_and_summarize_only(tmp_path: Path, capsys) -> None:
    assert main(["grid", "--preset", "paper-ad", "--quick", "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("5 runs with bundle") and "--seed 0" in out
    assert f"--demo_epochs {QUICK_EPOCHS}" in out
    assert "--pretrained auto" in out and "evaluate.json" in out
    assert "--class_balance" not in out  # quick keeps the bundle's demo settings (balanced classes)
    assert main(["grid", "--preset", "paper-ad", "--out", str(tmp_path), "--dry-run"]) == 0
    assert "--class_balance false" in capsys.readouterr().out  # full preset: the paper's plain BCE
    args = ["grid", "--preset", "paper-brain-age", "--out", str(tmp_path), "--dry-run", "--epochs", "3"]
    assert main(args + ["--seeds", "0,1"]) == 0
    assert capsys.readouterr().out.startswith("18 runs with bundle")
    assert main(["grid", "--preset", "paper-ad", "--encoders", "cnn5", "--out", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().out
    assert main(["grid", "--bundle", "nowhere", "--encoders", "cnn5", "--out", str(tmp_path)]) == 2
    assert "bundle 'nowhere' not found" in capsys.readouterr().out

    fake = FakeRunner(fail=("conv3d_seed0",))
    run_grid(plan_runs(CONFIGS, [0]), tmp_path, fake, "adni_ad", n_bootstrap=20, progress=None)
    code = main(["grid", "--preset", "paper-ad", "--out", str(tmp_path), "--summarize-only", "--no-plot"])
    assert code == 1  # one run failed
    out = capsys.readouterr().out
    assert "1 of 3 runs failed" in out and "conv3d_seed0: train failed" in out
    assert (tmp_path / "table.md").is_file() and not (tmp_path / "plot.png").exists()


def test_planning_a_grid_imports_no_engine(tmp_path: Path) -> None:
    # import rule (docs/architecture.md): experiments import the engine (torch, MONAI) only to score runs
    code = (
        "import sys; from mri_slice_transfer.cli import main; "
        f"main(['grid', '--preset', 'paper-ad', '--out', {str(tmp_path)!r}, '--dry-run']); "
        "print(sorted({'torch', 'monai', 'mri_slice_transfer.engine'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_one_real_tiny_run_through_the_bundle(tmp_path: Path) -> None:
    from test_bundles import TINY_NET, write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data")
    extra = {"dataset_dir": str(data), "epochs": 2, "network_def": TINY_NET, "batch_size": 4}
    runs = plan_runs([ModelConfig("cnn5", "axial")], [0], {**extra, "cache_num_workers": 1})
    runner = BundleRunner(find_bundle("adni_ad"), timeout=120)
    (result,) = run_grid(runs, tmp_path / "grid", runner, "adni_ad", n_bootstrap=100, progress=None)
    assert result["status"] == "ok", result.get("error", "") + "\n" + result.get("log_tail", "")
    run_dir = tmp_path / "grid" / "runs" / runs[0].run_id
    for name in (
        "config.json",
        "train.log",
        "evaluate.log",
        "done.json",
        "models/model.pt",
        "models/checkpoint.pt",
        "run_info.json",
    ):
        assert (run_dir / name).is_file(), name
    pred = pd.read_csv(run_dir / "eval" / "test_predictions.csv")
    assert len(pred) == 4 and result["test_n_scans"] == 4 and result["epochs_run"] == 2
    assert result["n_params"] == sum(np.prod(s) for s in _tiny_param_shapes())
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert "monai.bundle run" in config["commands"]["train"]
    again = time.perf_counter()
    (same,) = run_grid(runs, tmp_path / "grid", runner, "adni_ad", progress=None)  # finished: skipped
    assert same == result and time.perf_counter() - again < 5.0


def _tiny_param_shapes() -> list[tuple[int, ...]]:
    from monai.bundle import ConfigParser
    from test_bundles import TINY_NET

    net = ConfigParser({"net": TINY_NET}).get_parsed_content("net")
    return [tuple(p.shape) for p in net.parameters()]
