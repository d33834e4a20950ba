"""``grid --preset architectures``: encoders x aggregations x planes with a robustness stage per run.

A fake runner writes what the bundle commands write (``test_grid.FakeRunner`` plus
``robustness/robustness.csv``), so planning, the robustness column, rerun and outputs are tested in
about a second.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from test_grid import FakeRunner

from mri_slice_transfer.cli import main
from mri_slice_transfer.engine.perturb import parse_severities, run_robustness
from mri_slice_transfer.experiments.presets import PRESETS, ModelConfig, unavailable
from mri_slice_transfer.experiments.run_folder import collect_existing
from mri_slice_transfer.experiments.runner import PlannedRun, collect_robustness, plan_runs, run_grid
from mri_slice_transfer.experiments.summary import summarize

PERTURBATIONS = ("bias_field", "gibbs", "noise", "contrast")


class FakeRobustRunner(FakeRunner):
    """FakeRunner that also writes ``robustness/robustness.csv`` (clean + severity 2) and epoch times."""

    def train(self, run: PlannedRun, run_dir: Path, resume: bool) -> None:
        super().train(run, run_dir, resume)
        with (run_dir / "train.log").open("a", encoding="utf-8") as fh:
            fh.write("x - INFO - epoch 1/2: train_loss 0.7, val_balanced_accuracy 0.5 (best ...), 12.0 s\n")
            fh.write("x - INFO - epoch 2/2: train_loss 0.6, val_balanced_accuracy 0.6 (best ...), 10.0 s\n")

    def robustness(self, run: PlannedRun, run_dir: Path) -> None:
        self.calls.append(("robustness", run.run_id, False))
        assert run.robustness == "2"
        rows = []
        for i, kind in enumerate(PERTURBATIONS):
            rows.append(
                {"perturbation": kind, "severity": 0, "parameter": math.nan, "balanced_accuracy": 0.8}
            )
            rows.append(
                {"perturbation": kind, "severity": 2, "parameter": 0.5, "balanced_accuracy": 0.8 - 0.1 * i}
            )
        (run_dir / "robustness").mkdir(exist_ok=True)
        pd.DataFrame(rows).to_csv(run_dir / "robustness" / "robustness.csv", index=False)

    def count_parameters(self, run: PlannedRun) -> int:
        return 1234


def test_the_preset_holds_the_papers_models_and_the_new_ones() -> None:
    preset = PRESETS["architectures"]
    keys = [c.key() for c in preset.rows]
    for key in (
        "conv3d",
        "resnet18_axial_mean_pe-none_scratch",
        "resnet18_axial_attention_pe-none_scratch",
        "resnet18_axial_transformer_pe-none_scratch",
        "cnn5_axial_mean_pe-none_scratch",
        "cnn5_all_mean_pe-none_scratch",
        "efficientnet_b0_axial_mean_pe-none_scratch",
        "regnet_y_400mf_axial_mean_pe-none_scratch",
    ):
        assert key in keys
    assert len(set(keys)) == len(keys) and preset.robustness == "2" and preset.quick_epochs == 1
    assert preset.table_metrics == ("balanced_accuracy", "roc_auc")
    assert unavailable(ModelConfig("cnn5", "axial", "transformer")) == ""
    assert unavailable(ModelConfig("conv3d", None, None)) == ""
    assert "not 'no_such_net'" in unavailable(ModelConfig("no_such_net", "axial"))
    assert unavailable(ModelConfig("regnet_y_400mf", "axial")) == ""
    assert unavailable(ModelConfig("cnn5", "all")) == ""
    assert "axis" in unavailable(ModelConfig("cnn5", "diagonal"))


def test_middle_severity_only_and_the_drop_per_perturbation(tmp_path: Path) -> None:
    assert (
        parse_severities(None) == [1, 2, 3]
        and parse_severities("2") == [2]
        and parse_severities([3, 1]) == [1, 3]
    )
    with pytest.raises(ValueError, match="perturb_severities must be 1, 2 or 3"):
        parse_severities("0,2")

    class Evaluator:  # what run_robustness needs of a MONAI evaluator
        def __init__(self) -> None:
            self.state = type("State", (), {"metrics": {}})()
            self.runs = 0

        def run(self) -> None:
            self.runs += 1
            self.state.metrics = {"balanced_accuracy": 0.9 - 0.01 * self.runs}

    from mri_slice_transfer.engine.perturb import PerturbImaged

    ev = Evaluator()
    table = run_robustness(ev, PerturbImaged(seed=0), "noise,gibbs", "adni_ad", tmp_path, severities="2")
    assert ev.runs == 3 and list(table["severity"]) == [0, 2, 0, 2]  # clean once, then one per perturbation
    drops = collect_robustness("adni_ad", tmp_path / "robustness.csv")
    assert drops["robust_drop_noise"] == pytest.approx(0.01) and drops["robust_drop_gibbs"] == pytest.approx(
        0.02
    )
    assert drops["robust_noise_s2"] == pytest.approx(0.88) and drops["robust_drop_mean"] == pytest.approx(
        0.015
    )


def test_architecture_grid_runs_three_stages_writes_the_robustness_column_and_reruns_nothing(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    configs = [ModelConfig("conv3d", None, None), ModelConfig("cnn5", "axial", "transformer")]
    runs = [replace(r, robustness="2") for r in plan_runs(configs, [0, 1], {"epochs": 2})]
    runner = FakeRobustRunner()
    results = run_grid(runs, tmp_path, runner, "adni_ad", n_bootstrap=20, progress=None)
    assert [r["status"] for r in results] == ["ok"] * 4
    assert [c[0] for c in runner.calls[:3]] == ["train", "evaluate", "robustness"]
    row = results[0]
    assert row["robust_drop_mean"] == pytest.approx(0.15) and row["robust_drop_contrast"] == pytest.approx(
        0.3
    )
    assert row["seconds_per_epoch"] == pytest.approx(12.0)  # median of 10 and 12 (upper middle)
    paths = summarize(results, tmp_path, "adni_ad", preset=PRESETS["architectures"])
    frame = pd.read_csv(paths["results"])
    assert {"robust_drop_mean", "robust_bias_field_s2", "robust_drop_gibbs", "seconds_per_epoch"} <= set(
        frame
    )
    table = paths["table"].read_text(encoding="utf-8")
    assert "| ROC AUC | s / epoch | Robustness drop (balanced_accuracy) | # Params | Seeds |" in table
    assert "| 15.00 ± 0.00 |" in table and "Robustness drop: how much worse" in table
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG" and "learning_curve" not in paths
    again = FakeRobustRunner()
    run_grid(runs, tmp_path, again, "adni_ad", progress=None)
    assert again.calls == []


def test_grid_command_plans_quick_architectures_with_robustness(tmp_path: Path, capsys) -> None:
    assert main(["grid", "--preset", "architectures", "--quick", "--out", str(tmp_path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("--perturb_severities 2") >= 4 and "--epochs 1 --demo_epochs 1" in text
    assert "cnn5_axial_transformer_pe-none_scratch_seed0" in text and "conv3d_seed0" in text


def test_a_rerun_takes_the_plans_row_order_and_recounts_missing_parameters(tmp_path: Path) -> None:
    class NoCount(FakeRobustRunner):
        def count_parameters(self, run: PlannedRun) -> int:
            raise RuntimeError("old engine in memory")

    configs = [ModelConfig("cnn5", "axial", "transformer")]
    first = run_grid(plan_runs(configs, [0]), tmp_path, NoCount(), "adni_ad", n_bootstrap=10, progress=None)
    assert first[0]["n_params"] is None and first[0]["row"] == 0
    later = plan_runs([ModelConfig("conv3d", None, None), *configs], [0])[1:]  # the same run, now row 1
    (again,) = run_grid(later, tmp_path, FakeRobustRunner(), "adni_ad", progress=None)
    assert again["n_params"] == 1234 and again["row"] == 1
    assert collect_existing(tmp_path)[0]["n_params"] == 1234  # stored in done.json
