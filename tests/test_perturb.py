"""Robustness evaluation (issue 22 item 5): perturbations, severities, seeds, and the bundle overlay."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_brain_age_conv3d import CONV3D, _with_ages
from test_bundles import FAST, copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.engine.perturb import (
    SEVERITIES,
    Perturbation,
    PerturbImaged,
    parse_perturbations,
    perturb_image,
)


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 12, 14, 10)
    img[:, 2:10, 3:11, 2:8] = 1.0 + 0.1 * torch.randn(1, 8, 8, 6, generator=g)
    return (img - img.mean()) / img.std()


@pytest.mark.parametrize("kind", list(Perturbation))
def test_severity_zero_is_the_identity_and_distance_grows(kind: Perturbation) -> None:
    img = _image()
    assert perturb_image(img, kind, 0) is img
    distances = [float((perturb_image(img, kind, s, seed=3) - img).norm()) for s in SEVERITIES]
    assert distances[0] == 0.0
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances
    out = perturb_image(img, kind, 2, seed=3)
    assert out.shape == img.shape and out.dtype == img.dtype


@pytest.mark.parametrize("kind", [Perturbation.BIAS_FIELD, Perturbation.NOISE, Perturbation.MOTION])
def test_a_fixed_seed_repeats_and_another_seed_differs(kind: Perturbation) -> None:
    img = _image()
    a, b = perturb_image(img, kind, 2, seed=1), perturb_image(img.clone(), kind, 2, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, perturb_image(img, kind, 2, seed=2))


def test_unknown_names_are_rejected_with_a_suggestion() -> None:
    assert parse_perturbations("gibbs, noise,gibbs") == [Perturbation.GIBBS, Perturbation.NOISE]
    with pytest.raises(ValueError, match="unknown perturbation 'gibs'.*did you mean 'gibbs'"):
        parse_perturbations("bias_field,gibs")
    with pytest.raises(ValueError, match="did you mean 'motion'"):
        parse_perturbations("motoin")
    with pytest.raises(ValueError, match="at least one"):
        parse_perturbations(" , ")
    with pytest.raises(ValueError, match="severity must be one of 0, 1, 2, 3"):
        perturb_image(_image(), "noise", 4)


def test_the_dict_transform_leaves_failed_scans_and_severity_zero_alone() -> None:
    t = PerturbImaged(seed=0)
    data = {"image": _image(), "status": "ok"}
    assert t(data) is data
    t.set("noise", 1)
    assert not torch.equal(t(data)["image"], data["image"])
    failed = {"image": torch.zeros(1, 2, 2, 2), "status": "error"}
    assert t(failed) is failed


def test_robustness_overlay_writes_the_table_and_severity_zero_is_clean_evaluate(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    bundle = copy_bundle(tmp_path / "b")
    cfg = bundle / "configs"
    run_workflow(str(cfg / "train.json"), dataset_dir=str(data), epochs=2, **FAST)
    configs = [str(cfg / f) for f in ("train.json", "evaluate.json", "robustness.json")]
    wf = run_workflow(configs, "eval", dataset_dir=str(data), perturb="noise,contrast", **FAST)
    # the perturber the runner steers is the last step of the data the network sees, and it works
    dataset = wf.parser.get_parsed_content("robustness#dataset")
    perturber = wf.parser.get_parsed_content("robustness#perturber")
    assert dataset.transform.transforms[-1] is perturber and perturber.condition is None
    clean_image = dataset[0]["image"]
    perturber.set("noise", 3)
    assert not torch.equal(dataset[0]["image"], clean_image)
    perturber.condition = None
    clean = json.loads((bundle / "eval" / "test_metrics.json").read_text(encoding="utf-8"))
    table = pd.read_csv(bundle / "eval" / "robustness.csv")
    assert list(table["perturbation"]) == ["noise"] * 4 + ["contrast"] * 4
    assert list(table["severity"]) == [0, 1, 2, 3] * 2
    names = ["balanced_accuracy", "f1", "average_precision", "roc_auc", "threshold"]
    for _, row in table[table["severity"] == 0].iterrows():
        for name in names:
            assert row[name] == pytest.approx(clean[name], abs=0.0, nan_ok=True), name
    assert (bundle / "eval" / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    # the perturbed runs left the clean evaluation's own files as they were
    pred = pd.read_csv(bundle / "eval" / "test_predictions.csv")
    assert len(pred) == 4
    # a fixed seed repeats every number
    run_workflow(configs, "eval", dataset_dir=str(data), perturb="noise,contrast", **FAST)
    pd.testing.assert_frame_equal(pd.read_csv(bundle / "eval" / "robustness.csv"), table)


def test_brain_age_robustness_matches_the_clean_mae_and_noise_moves_it(tmp_path: Path) -> None:
    data = _with_ages(write_tiny_dataset(tmp_path / "data", n_per_split=(4, 2, 3)))
    bundle = copy_bundle(tmp_path / "run", "ukbb_brain_age")
    cfg = bundle / "configs"
    run_workflow(str(cfg / "train.json"), "train", dataset_dir=str(data), epochs=1, batch_size=2, **CONV3D)
    runtime = {k: CONV3D[k] for k in ("channels_last", "progress_bar", "cache_num_workers")}
    configs = [str(cfg / f) for f in ("train.json", "evaluate.json", "robustness.json")]
    run_workflow(configs, "eval", dataset_dir=str(data), batch_size=2, perturb="noise", **runtime)
    clean = json.loads((bundle / "eval" / "test_metrics.json").read_text(encoding="utf-8"))
    table = pd.read_csv(bundle / "eval" / "robustness.csv")
    assert list(table["severity"]) == [0, 1, 2, 3]
    for name in ("mae", "rmse", "pearson_r"):
        assert table[name][0] == pytest.approx(clean[name], abs=0.0, nan_ok=True), name
    assert table["mae"][3] != table["mae"][0]  # the perturbed image reaches the network
