"""The trained model's record (``models/model.json``): written with the architecture, read back (also
as 0.5.0 wrote it), the exact network rebuilt from it, explicit options checked against it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mri_slice_transfer.engine.model_record import (
    FALLBACK_ARCHITECTURE,
    ModelRecordError,
    build_network_from_record,
    read,
    resolve_record,
    training_record,
)
from mri_slice_transfer.engine.network import build_network
from mri_slice_transfer.vocabulary import Aggregation, Axis, Encoder, PositionEncoding, Task

REPO = Path(__file__).resolve().parents[1]

#: A ``model.json`` as bundle 0.5.0 wrote it: no task, no architecture.
RECORD_050 = {
    "epoch": 2,
    "key_metric": "val_balanced_accuracy",
    "metrics": {"val_balanced_accuracy": 0.85, "val_threshold": 0.555, "val_threshold_logit": 0.221},
    "sha256": "ab" * 32,
}


def _tiny_net() -> torch.nn.Module:
    return build_network(
        encoder="cnn5", axis="coronal", aggregation="max", position_encoding="sinusoidal",
        pretrained="false", num_outputs=1, spatial_size=(12, 14, 12),
    )  # fmt: skip


def _write(record: dict, path: Path) -> Path:
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_a_trained_network_records_itself_and_is_rebuilt_exactly(tmp_path: Path) -> None:
    net = _tiny_net()
    metrics = {"val_balanced_accuracy": 0.75, "val_threshold": 0.6, "val_threshold_logit": 0.405}
    rec = training_record(net, "adni_ad", 3, "val_balanced_accuracy", metrics, "cd" * 32, input_scale=0.5)
    assert rec.complete and rec.spatial_size == (46, 54, 46) and rec.num_slices == 54  # coronal = y
    path = _write(rec.to_json(), tmp_path / "model.json")
    back = read(tmp_path / "model.pt")  # the weights' path finds the record beside them
    assert back == rec and back.path == path
    assert (back.encoder, back.axis, back.aggregation, back.position_encoding) == (
        Encoder.CNN5, Axis.CORONAL, Aggregation.MAX, PositionEncoding.SINUSOIDAL,
    )  # fmt: skip
    assert (
        back.threshold_logit == pytest.approx(0.405)
        and back.output == "AD logit (sigmoid: probability of AD)"
    )
    assert set(back.versions) == {"mri_slice_transfer", "torch", "monai"}
    rebuilt = build_network_from_record(path)
    assert rebuilt.architecture["spatial_size"] == [46, 54, 46]
    trained = build_network(**{**rebuilt.architecture, "pretrained": False})
    rebuilt.load_state_dict(trained.state_dict())  # same tensors, same shapes
    x = torch.randn(1, 1, 46, 54, 46)
    rebuilt.eval(), trained.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))


def test_network_options_are_recorded_only_when_set(tmp_path: Path) -> None:
    """Issue 22: transformer settings / slice_keep travel in the record; the default model's has no key."""
    metrics = {"val_balanced_accuracy": 0.75, "val_threshold_logit": 0.1}
    plain = training_record(_tiny_net(), "adni_ad", 1, "val_balanced_accuracy", metrics, input_scale=0.15)
    assert "network_options" not in plain.to_json() and plain.network_kwargs()["aggregation"] == "max"
    net = build_network(
        encoder="cnn5", axis="axial", aggregation="transformer", transformer_heads="2",
        transformer_readout="Mean", slice_keep=0.5, pretrained=False, spatial_size=(12, 14, 12),
    )  # fmt: skip
    rec = training_record(net, "adni_ad", 1, "val_balanced_accuracy", metrics, input_scale=0.15)
    options = {"transformer_heads": 2, "transformer_readout": "mean", "slice_keep": 0.5}
    assert rec.to_json()["network_options"] == options
    path = _write(rec.to_json(), tmp_path / "model.json")
    rebuilt = build_network_from_record(path)
    assert rebuilt.aggregate.layers[0].heads == 2 and rebuilt.aggregate.readout == "mean"
    assert rebuilt.slice_keep == 0.5 and rebuilt.network_options == options
    _write({**rec.to_json(), "network_options": {"transformer_depth": 3}}, path)
    with pytest.raises(
        ModelRecordError, match=r"model\.json: unknown network_options \['transformer_depth'\]"
    ):
        read(path)
    with pytest.raises(ValueError, match=r"--transformer_layers must be a whole number, not 'two'"):
        build_network(encoder="cnn5", aggregation="transformer", transformer_layers="two")


def test_a_custom_network_gives_an_incomplete_record_with_the_input_scale() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(1))
    rec = training_record(net, "brain_age", 1, "val_mae", {"val_mae": 5.0}, input_scale=0.5, output_bias=60.0)
    assert not rec.complete and rec.missing == ("encoder", "axis", "aggregation", "position_encoding")
    assert rec.input_scale == 0.5 and rec.output_bias == 60.0 and rec.threshold_logit is None
    with pytest.raises(ModelRecordError, match="records no encoder, axis"):
        rec.network()


def test_a_050_record_is_read_as_incomplete(tmp_path: Path) -> None:
    rec = read(_write(RECORD_050, tmp_path / "model.json"))
    assert rec.task is Task.ADNI_AD and rec.format_version == 0 and not rec.complete
    assert rec.missing == ("encoder", "axis", "aggregation", "position_encoding", "input_scale")
    assert rec.sha256 == "ab" * 32 and rec.threshold_logit == pytest.approx(0.221) and rec.epoch == 2


def test_options_fill_a_050_record_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(RECORD_050, tmp_path / "model.json")
    with caplog.at_level(logging.WARNING):
        rec = resolve_record(path, "adni_ad", encoder="cnn5", input_scale="0.5", axis="null")
    assert rec.complete and rec.encoder is Encoder.CNN5 and rec.input_scale == 0.5
    assert rec.axis is FALLBACK_ARCHITECTURE[Task.ADNI_AD]["axis"] and rec.spatial_size == (46, 54, 46)
    assert (
        "records no encoder" in caplog.text and "assumed: axis, aggregation, position_encoding" in caplog.text
    )


def test_an_option_contradicting_the_record_names_both_values(tmp_path: Path) -> None:
    rec = training_record(_tiny_net(), "adni_ad", 1, "val_balanced_accuracy", {}, input_scale=0.5)
    path = _write(rec.to_json(), tmp_path / "model.json")
    assert (
        resolve_record(path, "adni_ad", encoder="CNN5", input_scale=0.5) == rec
    )  # agreeing options are fine
    with pytest.raises(ModelRecordError, match=r"--input_scale 1\.0 contradicts .* records input_scale 0\.5"):
        resolve_record(path, "adni_ad", input_scale="1")
    with pytest.raises(ModelRecordError, match="--axis axial contradicts .* records axis coronal"):
        resolve_record(path, "adni_ad", axis="axial")
    with pytest.raises(ModelRecordError, match="trained for task adni_ad, not brain_age"):
        resolve_record(path, "brain_age")


def test_bad_records_are_errors_naming_the_file_and_value(tmp_path: Path) -> None:
    with pytest.raises(ModelRecordError, match="model.json: axis must be .*'axail' .did you mean 'axial'"):
        read(_write({**RECORD_050, "axis": "axail"}, tmp_path / "model.json"))
    with pytest.raises(ModelRecordError, match="input_scale must be > 0, not -1"):
        read(_write({**RECORD_050, "input_scale": -1}, tmp_path / "model.json"))
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ModelRecordError, match="broken.json: unreadable model record"):
        read(tmp_path / "broken.json")
    with pytest.raises(ModelRecordError, match="absent.json: model record not found"):
        read(tmp_path / "absent.json")


@pytest.mark.parametrize("bundle, task", [("adni_ad", Task.ADNI_AD), ("ukbb_brain_age", Task.BRAIN_AGE)])
def test_the_fallback_architecture_is_the_bundles_training_default(bundle: str, task: Task) -> None:
    config = json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text(encoding="utf-8"))
    assert config["task"] == task
    assert {k: config[k] for k in FALLBACK_ARCHITECTURE[task]} == FALLBACK_ARCHITECTURE[task]
