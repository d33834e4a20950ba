"""Self-supervised pretraining of the slice encoder (``pretrain.json``) and the label budget (issue 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_bundles import copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.engine import build_contrastive_network, build_network
from mri_slice_transfer.engine.datasets import resolve_data, with_train_fraction
from mri_slice_transfer.engine.pretrain import SliceViews
from mri_slice_transfer.engine.pretrain_data import pretraining_data
from mri_slice_transfer.engine.run_guard import ExistingRunError
from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.split import subject_fraction

#: Tiny, fast pretraining: cnn5 on a quarter-scale grid, 2 slices per scan.
PRETRAIN = {
    "encoder": "cnn5",
    "input_scale": 0.25,
    "slices_per_scan": 2,
    "batch_size": 4,
    "progress_bar": False,
    "cache_num_workers": 1,
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_pretrain"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A bundle copy whose encoder was pretrained for 2 epochs on the tiny training list."""
    bundle = copy_bundle(tmp_path_factory.mktemp("pretrained"))
    run_workflow(str(bundle / "configs" / "pretrain.json"), dataset_dir=str(tiny_data), epochs=2, **PRETRAIN)
    return bundle


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_then_train_with_the_encoder_and_a_label_budget(pretrained: Path, tiny_data: Path) -> None:
    encoder = pretrained / "models" / "encoder.pt"
    weights = torch.load(encoder, weights_only=True)
    record = json.loads(encoder.with_suffix(".json").read_text(encoding="utf-8"))
    assert (record["encoder"], record["epoch"], record["data"]["train_scans"]) == ("cnn5", 2, 8)
    rows = json.loads((pretrained / "eval" / "pretrain_metrics.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["pretrain_loss"] > 0 for r in rows)

    settings = {k: v for k, v in PRETRAIN.items() if k != "slices_per_scan"}
    run_workflow(
        str(pretrained / "configs" / "train.json"), dataset_dir=str(tiny_data), epochs=1,
        precise_bn_batches=1, pretrained=str(encoder), train_fraction=0.5, **settings,
    )  # fmt: skip
    model = json.loads((pretrained / "models" / "model.json").read_text(encoding="utf-8"))
    assert model["encoder_init"] == f"file:{encoder}"  # no "(partial ...)"
    budget = model["training_data"]["train_fraction"]
    assert (budget["fraction"], budget["subjects"], budget["of_subjects"]) == (0.5, 4, 8)
    assert model["training_data"]["sizes"]["train"] == 4 and model["training_data"]["train_labels"] == {
        "CN": 2,
        "AD": 2,
    }
    fresh = build_network(encoder="cnn5", pretrained=str(encoder), input_scale=0.25)
    assert _same(fresh.encoder.state_dict(), weights)  # every encoder tensor loaded


@pytest.mark.parametrize("encoder", ["cnn5", "resnet18"])
def test_the_encoder_file_loads_exactly(encoder: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = build_contrastive_network(encoder, input_scale=0.25)
    with torch.no_grad():  # make every tensor (BatchNorm statistics too) differ from a fresh init
        for t in net.encoder.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01)
    path = tmp_path / "encoder.pt"
    torch.save(net.encoder_weights(), path)
    model = build_network(encoder=encoder, pretrained=str(path), input_scale=0.25)
    backbone = getattr(model.encoder, "backbone", model.encoder)
    assert model.encoder_init == f"file:{path}"
    assert _same(backbone.state_dict(), torch.load(path, weights_only=True))


def test_resumed_pretraining_gives_the_same_weights(
    pretrained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    bundle = copy_bundle(tmp_path)
    settings = {"dataset_dir": str(tiny_data), "epochs": 2, "bundle_root": str(bundle), **PRETRAIN}
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "pretrain.json"), **settings)
    wf.initialize()

    def crash(engine) -> None:  # after the epoch's scheduler step, encoder and checkpoint
        raise RuntimeError("simulated crash")

    wf.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_COMPLETED(once=1), crash)
    with pytest.raises(RuntimeError):
        wf.run()
    run_workflow(str(bundle / "configs" / "pretrain.json"), resume=True, **settings)
    a = torch.load(pretrained / "models" / "encoder.pt", weights_only=True)
    b = torch.load(bundle / "models" / "encoder.pt", weights_only=True)
    assert _same(a, b)
    rows = json.loads((bundle / "eval" / "pretrain_metrics.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in rows] == [1, 2]
    fresh = ConfigWorkflow(config_file=str(bundle / "configs" / "pretrain.json"), **settings)
    fresh.initialize()
    with pytest.raises(RuntimeError) as info:  # train.json's guard; MONAI wraps the error
        fresh.run()
    assert isinstance(info.value.__cause__, ExistingRunError), info.value


def test_pretraining_refuses_scans_of_the_test_list(tiny_data: Path, tmp_path: Path) -> None:
    test = pd.read_csv(tiny_data / "test.csv")
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(tiny_data / test.loc[0, "image"], extra / "renamed_T1w.nii")  # same content, other name
    with pytest.raises(DataListError, match=r"identical image content.*test\.csv"):
        pretraining_data("adni_ad", dataset_dir=str(tiny_data), unlabeled=str(extra))
    listed = tmp_path / "unlabeled.csv"
    pd.DataFrame({"subject_id": [test.loc[1, "subject_id"]], "image": [test.loc[1, "image"]]}).to_csv(
        listed, index=False
    )
    with pytest.raises(DataListError, match=r"subject .* more than one split \(leakage"):
        pretraining_data("adni_ad", dataset_dir=str(tiny_data), unlabeled=str(listed))
    # scans of no evaluation subject are taken (without labels), a training scan once
    train = pd.read_csv(tiny_data / "train.csv")
    shutil.copy(tiny_data / train.loc[0, "image"], tmp_path / "sub-99_T1w.nii")
    pd.DataFrame(
        {"image": [str(tmp_path / "sub-99_T1w.nii"), str(tiny_data / train.loc[0, "image"])]}
    ).to_csv(listed, index=False)
    data = pretraining_data("adni_ad", dataset_dir=str(tiny_data), unlabeled=str(listed))
    records = data.records()
    assert len(records) == 9 and all("label" not in r for r in records)


def test_train_fraction_is_seeded_stratified_and_by_subject() -> None:
    frame = pd.DataFrame(
        {
            "subject_id": [f"s{i // 2}" for i in range(40)],  # 20 subjects, 2 scans each
            "dx": ["AD" if (i // 2) < 6 else "CN" for i in range(40)],  # 6 AD, 14 CN subjects
        }
    )
    part = subject_fraction(frame, "adni_ad", 0.5, seed=3)
    per_subject = part.groupby("subject_id").size()
    assert (per_subject == 2).all()  # all scans of a chosen subject
    assert part.drop_duplicates("subject_id")["dx"].value_counts().to_dict() == {"CN": 7, "AD": 3}
    assert part.equals(subject_fraction(frame, "adni_ad", 0.5, seed=3))
    assert not part.equals(subject_fraction(frame, "adni_ad", 0.5, seed=4))
    tiny = subject_fraction(frame, "adni_ad", 0.01, seed=0)  # every class keeps a subject
    assert set(tiny["dx"]) == {"AD", "CN"}
    ages = pd.DataFrame({"subject_id": [f"s{i}" for i in range(40)], "age": list(range(40, 80))})
    kept = subject_fraction(ages, "brain_age", 0.25, seed=0)["age"]
    assert (kept // 10).value_counts().to_dict() == {4: 2, 5: 2, 6: 2, 7: 2}  # 4 age bins, 2 of 10 each
    assert subject_fraction(frame, "adni_ad", 1.0) is frame
    with pytest.raises(ValueError, match=r"train_fraction must be a number in \(0, 1\], not 0"):
        subject_fraction(frame, "adni_ad", 0)


def test_train_fraction_one_keeps_the_whole_list(tiny_data: Path) -> None:
    data = resolve_data("adni_ad", dataset_dir=str(tiny_data))
    whole = data.frames["train"]
    assert with_train_fraction(data, "1.0").frames["train"] is whole and data.train_fraction is None
    with pytest.raises(ValueError, match="train_fraction must be a number in \\(0, 1\\], not 'all'"):
        with_train_fraction(data, "all")


def test_slice_views_repeat_per_step_and_keep_the_background() -> None:
    volumes = torch.zeros(2, 1, 12, 14, 10)
    volumes[:, :, 2:10, 3:11, 2:8] = torch.randn(2, 1, 8, 8, 6)
    views = SliceViews(axis="axial", slices_per_scan=3, seed=5)
    a = views(volumes, iteration=7)
    assert a.shape == (2 * 2 * 3, 1, 12, 14)
    assert torch.equal(a, views(volumes, iteration=7))
    assert not torch.equal(a, views(volumes, iteration=8))
    blank = views(torch.zeros(1, 1, 12, 14, 10), iteration=1)
    assert blank.shape == (2 * 3, 1, 12, 14) and not blank.any()  # no noise outside the brain
