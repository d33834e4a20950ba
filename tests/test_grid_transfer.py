"""``grid --preset transfer``: encoder initialisations x label fractions x seeds, with pretraining stages.

A fake runner (``test_grid.FakeRunner`` plus a fake pretraining stage) writes what the bundle
commands write, so planning, rerun and outputs are tested in about a second; the leakage refusal goes
through the real preflight (the pretraining data guard) on tiny NIfTI files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_grid import FakeRunner

from mri_slice_transfer.cli import main
from mri_slice_transfer.experiments import transfer
from mri_slice_transfer.experiments.presets import PRESETS, ModelConfig
from mri_slice_transfer.experiments.runner import GridError, PlannedRun, PretrainStage, plan_runs, run_grid
from mri_slice_transfer.experiments.summary import summarize
from mri_slice_transfer.experiments.transfer import PRETRAIN_SHARED_KEYS, plan_transfer, with_fractions
from mri_slice_transfer.vocabulary import Init, names


class FakeTransferRunner(FakeRunner):
    """FakeRunner that also pretrains (writes the encoder file) and reports ``file:`` inits."""

    def pretrain(self, stage: PretrainStage, stage_dir: Path) -> None:
        self.calls.append(("pretrain", stage.stage_id, False))
        Path(stage.encoder_file).parent.mkdir(parents=True, exist_ok=True)
        Path(stage.encoder_file).write_bytes(b"encoder")

    def train(self, run: PlannedRun, run_dir: Path, resume: bool) -> None:
        if run.pretrain is not None:
            assert Path(run.pretrain.encoder_file).is_file()  # pretraining ran before its runs
        super().train(run, run_dir, resume)
        if run.config.init in ("ssl", "file"):
            info = {"encoder_init": f"file:{run.overrides['pretrained']}"}
            (run_dir / "run_info.json").write_text(json.dumps(info))

    def count_parameters(self, run: PlannedRun) -> int:
        return 1000


def _plan(tmp_path: Path, monkeypatch, imagenet: bool, **kw) -> transfer.TransferPlan:
    monkeypatch.setattr(transfer, "imagenet_weights_present", lambda encoder: imagenet)
    rows = with_fractions(PRESETS["transfer"].rows, (0.25, 1.0))
    return plan_transfer(rows, [0, 1], tmp_path, {"epochs": 2, "dataset_dir": "/d"}, {"epochs": 3}, **kw)


def test_old_run_keys_do_not_change() -> None:
    # grid folders of paper-ad / paper-brain-age made before init and train_fraction must still resume
    assert ModelConfig("resnet18", "axial", "mean", "learned", True).key() == (
        "resnet18_axial_mean_pe-learned_imagenet"
    )
    assert ModelConfig("cnn5", "sagittal").key() == "cnn5_sagittal_mean_pe-none_scratch"
    assert ModelConfig("conv3d", None, None).key() == "conv3d"
    assert ModelConfig("cnn5", "axial", init="scratch").key() == ModelConfig("cnn5", "axial").key()
    old = plan_runs([ModelConfig("resnet18", "axial", "mean", "none", True)], [0], {"epochs": 2})
    assert "train_fraction" not in old[0].overrides and "init" not in old[0].overrides
    assert ModelConfig("cnn5", "axial", init="ssl", train_fraction=0.25).key() == (
        "cnn5_axial_mean_pe-none_ssl_frac0.25"
    )
    assert set(names(Init)) == {"scratch", "imagenet", "ssl", "file"}
    with pytest.raises(ValueError, match="train_fraction must be in"):
        ModelConfig("cnn5", train_fraction=0.0).key()
    with pytest.raises(ValueError, match="unknown init"):
        ModelConfig("cnn5", init="radimagenet").key()
    with pytest.raises(GridError, match="needs a weights file"):
        plan_runs([ModelConfig("cnn5", init="ssl")], [0])


def test_planning_rows_fractions_seeds_and_skipped_imagenet(tmp_path: Path, monkeypatch) -> None:
    plan = _plan(tmp_path, monkeypatch, imagenet=False)
    assert len(plan.runs) == 5 * 2 * 2  # rows x fractions x seeds
    skipped = [r for r in plan.runs if r.skip]
    assert {r.config.init for r in skipped} == {"imagenet"} and len(skipped) == 4
    assert "ImageNet rows of resnet18 skipped: weights not found" in plan.notes[0]
    # one pretraining stage per encoder and seed, shared by every fraction
    assert sorted(s.stage_id for s in plan.stages) == [
        "cnn5_axial_seed0",
        "cnn5_axial_seed1",
        "resnet18_axial_seed0",
        "resnet18_axial_seed1",
    ]
    for stage in plan.stages:
        # only data, input size and pretraining settings: no test list, no evaluation split, no labels
        assert set(stage.overrides) <= {
            *PRETRAIN_SHARED_KEYS,
            "encoder",
            "axis",
            "seed",
            "epochs",
            "unlabeled",
        }
        assert stage.overrides["epochs"] == 3 and stage.overrides["dataset_dir"] == "/d"
        assert not any("test" in str(v) for v in stage.overrides.values())
    ssl = [r for r in plan.runs if r.config.init == "ssl"]
    assert len(ssl) == 8 and all(r.overrides["pretrained"] == r.pretrain.encoder_file for r in ssl)
    assert {r.config.train_fraction for r in ssl} == {0.25, 1.0}
    frac = next(r for r in plan.runs if r.config.train_fraction == 0.25)
    assert frac.overrides["train_fraction"] == 0.25 and frac.run_id.endswith("_frac0.25_seed0")
    scratch = [r for r in plan.runs if r.config.init == "scratch"]
    assert all(r.overrides["pretrained"] == "false" and r.pretrain is None for r in scratch)

    present = _plan(tmp_path, monkeypatch, imagenet=True)
    imagenet = [r for r in present.runs if r.config.init == "imagenet"]
    assert not any(r.skip for r in present.runs) and present.notes == []
    assert all(r.overrides["pretrained"] == "true" for r in imagenet)  # strict: no silent random init


def test_a_user_file_adds_rows_and_a_missing_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "radimagenet_r18.pt"
    weights.write_bytes(b"w")
    plan = _plan(tmp_path, monkeypatch, imagenet=False, pretrained_file=weights)
    files = [r for r in plan.runs if r.config.init == "file"]
    assert len(files) == 2 * 2 * 2  # (resnet18, cnn5) x fractions x seeds
    assert all(r.overrides["pretrained"] == str(weights.resolve()) and r.pretrain is None for r in files)
    with pytest.raises(GridError, match="--pretrained-file must be an existing file"):
        _plan(tmp_path, monkeypatch, imagenet=False, pretrained_file=tmp_path / "missing.pt")


def test_transfer_grid_runs_pretrains_once_writes_outputs_and_reruns_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    plan = _plan(tmp_path, monkeypatch, imagenet=False)
    runner = FakeTransferRunner()
    results = run_grid(plan.runs, tmp_path, runner, "adni_ad", n_bootstrap=20, progress=None)
    pretrains = [c for c in runner.calls if c[0] == "pretrain"]
    assert len(pretrains) == len(plan.stages) == 4  # once per stage, not per fraction
    assert [r["status"] for r in results].count("skipped") == 4
    assert sum(r["status"] == "ok" for r in results) == 16
    assert (tmp_path / "pretrain" / "cnn5_axial_seed0" / "done.json").is_file()

    paths = summarize(results, tmp_path, "adni_ad", preset=PRESETS["transfer"])
    frame = pd.read_csv(paths["results"])
    assert {"init", "train_fraction", "test_balanced_accuracy_ci_low", "encoder_init"} <= set(frame)
    assert set(frame["init"]) == {"scratch", "ssl", "imagenet"} and set(frame["train_fraction"]) == {
        0.25,
        1.0,
    }
    table = paths["table"].read_text(encoding="utf-8")
    assert "| Encoder | Pos. Enc. | Init | Labels |" in table and "## The paper" not in table
    assert "| 2D-CNN (Mean) | ✗ | ssl | 25% |" in table and "| skipped |" in table
    assert "Skipped: ImageNet rows of resnet18 skipped" in table
    for key in ("plot", "learning_curve"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG" and paths[key].stat().st_size > 1000

    again = FakeTransferRunner()
    rerun = run_grid(plan.runs, tmp_path, again, "adni_ad", progress=None)
    assert again.calls == [] and [r["status"] for r in rerun] == [r["status"] for r in results]


def test_a_failed_pretraining_fails_its_runs_once_and_is_retried_on_rerun(
    tmp_path: Path, monkeypatch
) -> None:
    plan = _plan(tmp_path, monkeypatch, imagenet=False)

    class Broken(FakeTransferRunner):
        def pretrain(self, stage: PretrainStage, stage_dir: Path) -> None:
            self.calls.append(("pretrain", stage.stage_id, False))
            from mri_slice_transfer.experiments.runner import RunFailed

            raise RunFailed("pretrain failed: DataListError: leakage (fake)")

    broken = Broken()
    results = run_grid(plan.runs, tmp_path, broken, "adni_ad", n_bootstrap=10, progress=None)
    failed = [r for r in results if r["status"] == "failed"]
    assert len(failed) == 8 and all(r["stage"] == "pretrain" for r in failed)
    assert len([c for c in broken.calls if c[0] == "pretrain"]) == 4  # each stage tried once
    fixed = FakeTransferRunner()
    run_grid(plan.runs, tmp_path, fixed, "adni_ad", n_bootstrap=10, progress=None)
    assert len([c for c in fixed.calls if c[0] == "pretrain"]) == 4
    assert {c[1] for c in fixed.calls if c[0] == "train"} == {r["run_id"] for r in failed}


def test_grid_refuses_unlabeled_scans_of_the_test_list_before_running(tmp_path: Path, capsys) -> None:
    from test_bundles import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data", (4, 2, 2))
    test = pd.read_csv(data / "test.csv")
    unlabeled = tmp_path / "unlabeled.csv"
    pd.DataFrame({"image": [str(data / test["image"].iloc[0])]}).to_csv(unlabeled, index=False)
    out = tmp_path / "grid"
    code = main(
        ["grid", "--preset", "transfer", "--quick", "--dataset-dir", str(data), "--unlabeled", str(unlabeled)]
        + ["--out", str(out)]
    )
    assert code == 2
    text = capsys.readouterr().out
    assert "test.csv" in text and str(test["subject_id"].iloc[0]) in text
    assert not (out / "runs").exists() and not (out / "pretrain").exists()


def test_grid_command_plans_the_quick_transfer_preset(tmp_path: Path, capsys, monkeypatch) -> None:
    code = main(["grid", "--preset", "transfer", "--quick", "--out", str(tmp_path), "--dry-run"])
    assert code == 0
    text = capsys.readouterr().out
    assert "pretraining stage cnn5_axial_seed0" in text and "--epochs 2 --demo_epochs 2 --seed 0" in text
    assert text.count("--pretrained " + str(tmp_path.resolve() / "pretrain")) == 4  # train + evaluate
    assert "--train_fraction 0.25" in text
    code = main(["grid", "--preset", "transfer", "--fractions", "0,1", "--out", str(tmp_path), "--dry-run"])
    assert code == 2 and "train_fraction must be in (0, 1]" in capsys.readouterr().out


def test_a_launcher_gets_the_runs_after_their_pretraining_and_never_the_skipped_ones(
    tmp_path: Path, monkeypatch
) -> None:
    # grid --launcher slurm: parallel jobs must find each shared pretraining stage finished (the driver
    # runs it once) and never redo it; skipped (ImageNet) rows are made by the driver, not submitted
    plan = _plan(tmp_path, monkeypatch, imagenet=False)
    runner, seen = FakeTransferRunner(), {}

    def launcher(runs, out_dir, runner_, task, redo, n_bootstrap, say):
        seen.update(n=len(runs), redo=redo, skips=[r.skip for r in runs])
        assert all(Path(r.pretrain.encoder_file).is_file() for r in runs if r.pretrain is not None)
        return run_grid(list(runs), out_dir, runner_, task, redo=redo, n_bootstrap=0, progress=None)

    rows = run_grid(plan.runs, tmp_path, runner, "adni_ad", n_bootstrap=0, progress=None, launcher=launcher)
    assert [r["run_id"] for r in rows] == [r.run_id for r in plan.runs]
    assert seen == {"n": len(plan.runs) - 4, "redo": False, "skips": [""] * (len(plan.runs) - 4)}
    assert sorted(r["status"] for r in rows) == ["ok"] * (len(plan.runs) - 4) + ["skipped"] * 4
    n_stages = len({r.pretrain.stage_id for r in plan.runs if r.pretrain is not None})
    assert n_stages == 4 and sum(1 for c in runner.calls if c[0] == "pretrain") == n_stages  # once each
    rows = run_grid(
        plan.runs, tmp_path, runner, "adni_ad", redo=True, n_bootstrap=0, progress=None, launcher=launcher
    )
    assert seen["redo"] is False and sum(1 for c in runner.calls if c[0] == "pretrain") == 2 * n_stages
