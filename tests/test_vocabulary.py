"""The one vocabulary: names compare as strings, typos get "did you mean", modules share the rules."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from mri_slice_transfer.vocabulary import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    TASKS,
    Aggregation,
    Axis,
    Encoder,
    PositionEncoding,
    Task,
    canonical,
    look_up,
    names,
    task_spec,
)


def test_members_are_their_strings():
    # bundle configs write "task": "adni_ad"; both spellings must work as values and as dict keys
    assert Task.ADNI_AD == "adni_ad" and f"{Task.BRAIN_AGE}" == "brain_age" and str(Axis.AXIAL) == "axial"
    assert {"adni_ad": 1}[Task.ADNI_AD] == 1 and TASKS["brain_age"] is TASKS[Task.BRAIN_AGE]
    assert json.dumps({"task": Task.ADNI_AD}) == '{"task": "adni_ad"}'
    assert names(Aggregation) == ("mean", "max", "attention", "transformer")
    assert names(PositionEncoding) == ("none", "learned", "sinusoidal")


def test_vocabulary_imports_no_torch_or_monai():
    heavy = "{'torch', 'monai', 'numpy'}"
    code = f"import sys, mri_slice_transfer.vocabulary; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_look_up_is_case_insensitive_and_resolves_aliases():
    assert look_up("ResNet18", Encoder) is Encoder.RESNET18
    assert look_up("3D-CNN", Encoder) is Encoder.CONV3D and look_up("3dcnn", Encoder) is Encoder.CONV3D
    assert look_up(Axis.CORONAL, Axis) is Axis.CORONAL
    assert canonical("3D-CNN", Encoder) == "conv3d" and canonical("Foo", Encoder) == "foo"


@pytest.mark.parametrize(
    "value, enum, message",
    [
        ("adni", Task, "unknown task 'adni'; choose one of adni_ad, brain_age (did you mean 'adni_ad'?)"),
        (
            "resnt18",
            Encoder,
            "unknown encoder 'resnt18'; choose one of cnn5, resnet18, resnet34, resnet50, "
            "conv3d, 3dcnn, 3d-cnn (did you mean 'resnet18'?)",
        ),  # fmt: skip
        (
            "sagitall",
            Axis,
            "unknown axis 'sagitall'; choose one of sagittal, coronal, axial (did you mean 'sagittal'?)",
        ),
        ("xyz", PositionEncoding, "unknown position_encoding 'xyz'; choose one of none, learned, sinusoidal"),
        (3, Aggregation, "unknown aggregation 3; choose one of mean, max, attention, transformer"),
    ],
)
def test_look_up_names_the_bad_value_the_choices_and_the_closest(value, enum, message):
    with pytest.raises(ValueError) as err:
        look_up(value, enum)
    assert str(err.value) == message


def test_task_spec_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown task 'brain-age'.*did you mean 'brain_age'"):
        task_spec("brain-age")


@pytest.mark.parametrize("task", list(Task))
def test_one_better_rule_for_saver_evaluator_and_grid(task, tmp_path):
    """BestModelSaver, the evaluator's metric_cmp_fn and the grid's best-epoch choice all follow
    TaskSpec.better (NaN never improves; the first finite value always does)."""
    import torch

    from mri_slice_transfer.engine import lower_is_better, metric_cmp_fn
    from mri_slice_transfer.engine.handlers import BestModelSaver

    spec = task_spec(task)
    assert lower_is_better(task) is spec.lower_is_better
    saver = BestModelSaver(torch.nn.Linear(1, 1), str(tmp_path / "m.pt"), "k", spec.lower_is_better)
    cmp = metric_cmp_fn(task)
    values = [0.2, 0.7, math.nan, 0.5]
    for a in values:
        saver.best = None
        assert saver.improved(a) is spec.better(a, None)
        for b in (0.2, 0.5, 0.7):
            saver.best = b
            assert saver.improved(a) is spec.better(a, b) is cmp(a, b), (a, b)
    assert spec.better(0.2, 0.7) is spec.lower_is_better and not spec.better(math.nan, None)
    assert cmp(0.5, -1)  # ignite's "no best yet"


@pytest.mark.parametrize(
    "task, values", [("brain_age", [5.0, 4.0, 4.0, 6.0]), ("adni_ad", [0.5, 0.6, 0.6, 0.4])]
)
def test_grid_picks_the_first_best_epoch_by_the_same_rule(task, values, tmp_path):
    from mri_slice_transfer.experiments.bootstrap import headline_metric
    from mri_slice_transfer.experiments.runner import collect_run_result

    key = task_spec(task).key_metric
    (tmp_path / "eval").mkdir()
    epochs = [{"epoch": 1, f"val_{key}": math.nan}]
    epochs += [{"epoch": i + 2, f"val_{key}": v} for i, v in enumerate(values)]
    (tmp_path / "eval" / "val_metrics.json").write_text(json.dumps(epochs))
    (tmp_path / "eval" / "test_metrics.json").write_text(json.dumps({key: 0.5}))
    column = task_spec(task).prediction_columns[0]
    rows = "".join(f"s{i},{i % 2},{0.1 * i}\n" for i in range(6))
    (tmp_path / "eval" / "test_predictions.csv").write_text(f"subject_id,label,{column}\n" + rows)
    row = collect_run_result(task, None, tmp_path, n_bootstrap=5)  # type: ignore[arg-type]
    assert row["best_epoch"] == 3 and row[f"val_{key}"] == values[1]
    assert headline_metric(task, row)[0] == key


def test_build_model_accepts_every_encoder_name_the_grid_accepts():
    from mri_slice_transfer.experiments.presets import CONV3D, ModelConfig
    from mri_slice_transfer.networks import MODEL_NAMES, build_model
    from mri_slice_transfer.networks.conv3d import Conv3DNet

    for name in ("conv3d", "3dcnn", "3d-cnn", "3D-CNN"):
        assert ModelConfig(name).normalised().encoder == CONV3D
        assert isinstance(build_model(name), Conv3DNet)
    assert set(names(Encoder, aliases=True)) == set(MODEL_NAMES)


def test_scan_suffixes_are_defined_once():
    from mri_slice_transfer.engine.inputs import SCAN_SUFFIXES
    from mri_slice_transfer.prepare.io import IMAGE_SUFFIXES as PREPARE_SUFFIXES
    from mri_slice_transfer.transforms import SUPPORTED_SUFFIXES

    assert SCAN_SUFFIXES is IMAGE_SUFFIXES and PREPARE_SUFFIXES is IMAGE_SUFFIXES
    assert SUPPORTED_SUFFIXES is NIFTI_SUFFIXES and set(NIFTI_SUFFIXES) <= set(IMAGE_SUFFIXES)
