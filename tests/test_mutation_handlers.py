"""Fast unit tests of the training handlers (engine/handlers.py) on tiny ignite engines.

The bundle runs of tests/test_bundles.py exercise the same handlers end to end but take minutes; these
tests run each handler on a one-parameter network in well under a second, so that mutation testing of
engine/handlers.py (scripts/mutation.sh) can select them (docs/testing.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from ignite.engine import Engine, Events

from mri_slice_transfer.engine.checkpoint import load_weights
from mri_slice_transfer.engine.handlers import (
    BestModelSaver,
    FullCheckpoint,
    MetricsWriter,
    NonFiniteLossError,
    StopOnNonFiniteLoss,
    TrainingLog,
)


def _evaluator(per_epoch: list[dict]) -> Engine:
    """An engine whose metrics at the end of epoch e are ``per_epoch[e - 1]`` (set before other handlers)."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set_metrics(e: Engine) -> None:
        e.state.metrics = dict(per_epoch[e.state.epoch - 1])

    return engine


# --- MetricsWriter: val_metrics.csv / .json ----------------------------------------------------


def test_metrics_files_hold_one_row_per_validated_epoch_with_its_scalar_metrics(tmp_path: Path) -> None:
    """Each epoch adds a row with its number and every scalar metric; vectors and text are left out."""
    per_epoch = [
        {"val_bacc": 0.5, "val_auc": torch.tensor(0.75), "val_vec": torch.tensor([1.0, 2.0]), "note": "x"},
        {"val_bacc": 0.625, "val_auc": torch.tensor(0.5), "val_vec": torch.tensor([1.0, 2.0]), "note": "x"},
    ]
    evaluator = _evaluator(per_epoch)
    MetricsWriter(str(tmp_path)).attach(evaluator)
    evaluator.run([0], max_epochs=2)
    expected = [
        {"epoch": 1, "val_bacc": 0.5, "val_auc": 0.75},
        {"epoch": 2, "val_bacc": 0.625, "val_auc": 0.5},
    ]
    assert json.loads((tmp_path / "val_metrics.json").read_text(encoding="utf-8")) == expected
    assert pd.read_csv(tmp_path / "val_metrics.csv").to_dict("records") == expected


def test_a_resumed_run_replaces_the_metrics_row_of_the_epoch_it_repeats(tmp_path: Path) -> None:
    """An epoch validated again (after a resume) appears once, with its newest values."""
    writer = MetricsWriter(str(tmp_path), stem="m")
    for epoch, value in [(1, 0.5), (2, 0.6), (2, 0.7)]:
        engine = Engine(lambda e, b: None)
        engine.state.epoch, engine.state.metrics = epoch, {"val_mae": value}
        writer(engine)
    rows = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert rows == [{"epoch": 1, "val_mae": 0.5}, {"epoch": 2, "val_mae": 0.7}]
    assert pd.read_csv(tmp_path / "m.csv").to_dict("records") == rows


# --- BestModelSaver: attach and resume ---------------------------------------------------------


def test_best_model_saver_attached_to_the_evaluator_saves_the_best_epoch(tmp_path: Path) -> None:
    """Attached to a running evaluator, the saver keeps the epoch with the best key metric."""
    net = torch.nn.Linear(1, 1, bias=False)
    evaluator = _evaluator([{"val_bacc": v} for v in (0.6, 0.9, 0.7)])

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _weights_are_the_epoch(e: Engine) -> None:
        with torch.no_grad():
            net.weight.fill_(float(e.state.epoch))

    saver = BestModelSaver(net, str(tmp_path / "model.pt"), "val_bacc", lower_is_better=False)
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=3)
    record = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    assert (
        record["epoch"] == 2 and torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 2.0
    )
    assert (
        record["sha256"] == hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    )  # this model's


def test_a_resumed_best_model_saver_only_replaces_the_model_for_a_better_epoch(tmp_path: Path) -> None:
    """After load_state_dict, a worse epoch leaves model.pt alone; a better one replaces it."""
    saver = BestModelSaver(torch.nn.Linear(1, 1), str(tmp_path / "model.pt"), "val_mae", lower_is_better=True)
    saver.load_state_dict({"best": 3.0, "best_epoch": 4})
    assert saver.state_dict() == {"best": 3.0, "best_epoch": 4}
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.metrics = 5, {"val_mae": 3.5}
    saver(engine)
    assert not (tmp_path / "model.pt").exists() and saver.state_dict() == {"best": 3.0, "best_epoch": 4}
    engine.state.epoch, engine.state.metrics = 6, {"val_mae": 2.5}
    saver(engine)
    assert saver.state_dict() == {"best": 2.5, "best_epoch": 6} and (tmp_path / "model.pt").is_file()


# --- FullCheckpoint: save each epoch, resume == uninterrupted -----------------------------------


def _trainer(net: torch.nn.Linear, opt: torch.optim.Optimizer) -> Engine:
    """Each iteration: a random target (the torch RNG matters), one SGD-with-momentum step."""

    def step(engine: Engine, batch: float) -> float:
        opt.zero_grad()
        loss = (net(torch.full((1, 1), batch)) - torch.rand(1)).pow(2).sum()
        loss.backward()
        opt.step()
        return loss.item()

    return Engine(step)


def _training(tmp_path: Path, max_epochs: int, resume: bool, seed: int | None = 0):
    if seed is not None:
        torch.manual_seed(seed)
    net = torch.nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(0.5), net.bias.fill_(0.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    saver = BestModelSaver(net, str(tmp_path / "model.pt"), "val_mae", lower_is_better=True)
    saver.best, saver.best_epoch = 1.0 + max_epochs, max_epochs  # something to carry across the resume
    trainer = _trainer(net, opt)
    ckpt = FullCheckpoint(str(tmp_path / "checkpoint.pt"), net, opt, extras={"best": saver}, resume=resume)
    ckpt.attach(trainer)
    trainer.run([1.0, 2.0, 3.0], max_epochs=max_epochs)
    return net, opt, saver, trainer


def test_resume_from_the_full_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """2 epochs + resume for a third == 3 epochs: weights, optimizer momentum, RNG, epoch, extras."""
    whole, whole_opt, _, _ = _training(tmp_path / "whole", 3, resume=False)
    _training(tmp_path / "split", 2, resume=False)
    state = load_weights(tmp_path / "split" / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "trainer", "rng", "extras"}
    assert state["trainer"]["iteration"] == 6 and state["extras"] == {"best": {"best": 3.0, "best_epoch": 2}}
    torch.manual_seed(123)  # a different RNG state: the checkpoint's must be restored
    net, opt, saver, trainer = _training(tmp_path / "split", 3, resume=True, seed=None)
    assert trainer.state.epoch == 3 and trainer.state.iteration == 9
    assert saver.state_dict() == {"best": 3.0, "best_epoch": 2}  # restored, then the run's own 4.0/3 replaced
    for a, b in zip(net.parameters(), whole.parameters(), strict=True):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in opt.state_dict()["state"].values()]
    expected = [s["momentum_buffer"] for s in whole_opt.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected, strict=True))
    assert load_weights(tmp_path / "split" / "checkpoint.pt")["trainer"]["iteration"] == 9


def test_checkpoint_is_not_loaded_without_resume_and_a_missing_one_starts_from_scratch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """resume false ignores a checkpoint; resume true without a file warns and trains from epoch 1."""
    _training(tmp_path, 2, resume=False)
    _, _, _, trainer = _training(tmp_path, 1, resume=False)
    assert trainer.state.epoch == 1  # not 2 + ...: the old checkpoint was not loaded
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.handlers"):
        _, _, _, trainer = _training(tmp_path / "empty", 1, resume=True)
    assert trainer.state.epoch == 1 and trainer.state.iteration == 3
    path = tmp_path / "empty" / "checkpoint.pt"
    assert (
        caplog.records[-1].getMessage()
        == f"resume requested but {path} does not exist: starting from scratch"
    )
    assert FullCheckpoint(str(path), torch.nn.Linear(1, 1), None).resume is False  # resume only when asked


def test_a_broken_checkpoint_on_resume_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    """The error names the file and points to the backup, a fresh start and the best model so far."""
    _training(tmp_path, 1, resume=False)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="checkpoint.pt") as info:
        _training(tmp_path, 2, resume=True)
    error = info.value
    while error.__cause__ is not None and "Restore it" not in str(error):
        error = error.__cause__
    assert str(error).endswith(
        "Restore it from a backup, or start again without --resume (with --overwrite true); "
        f"the best model so far is {tmp_path / 'model.pt'}."
    )


# --- StopOnNonFiniteLoss -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), torch.tensor([1.0, float("nan")])])
def test_a_non_finite_loss_stops_training_naming_epoch_and_iteration(bad) -> None:
    """Iteration 5 (epoch 2, 2nd of 3) has a NaN / inf loss: an error saying where; nothing later runs."""
    seen = []

    def step(engine: Engine, batch: int) -> dict:
        seen.append(engine.state.iteration)
        return {"loss": bad if engine.state.iteration == 5 else torch.tensor([0.5, 1.5])}

    trainer = Engine(step)
    StopOnNonFiniteLoss(lambda out: out["loss"]).attach(trainer)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, iteration 2 of the epoch \(5 overall\)"):
        trainer.run([0, 1, 2], max_epochs=3)
    assert seen == [1, 2, 3, 4, 5]


def test_non_finite_loss_message_without_an_epoch_length_counts_overall_and_says_what_to_try() -> None:
    """Data without a length (epoch_length None): the iteration is the overall one; the advice is complete."""
    state = SimpleNamespace(output=float("nan"), epoch=1, iteration=7, epoch_length=None)
    with pytest.raises(NonFiniteLossError) as info:
        StopOnNonFiniteLoss()(SimpleNamespace(state=state))
    assert str(info.value) == (
        "training loss is nan at epoch 1, iteration 7 of the epoch (7 overall): training stopped. Lower the "
        "learning rate (--lr), check the inputs for NaN / inf values, or turn off mixed precision "
        "(--amp false); resume from the last good epoch with --resume true."
    )


# --- TrainingLog: one INFO line per epoch ------------------------------------------------------


def test_training_log_line_has_mean_loss_lr_and_the_validation_of_that_epoch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """epoch e/E: mean train loss of the epoch, its learning rate, the evaluator's metrics and best."""
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.25)
    evaluator = Engine(lambda e, b: None)
    losses = iter([1.0, 2.0, 4.0, 8.0])
    trainer = Engine(lambda e, b: torch.tensor([next(losses)]))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(e: Engine) -> None:  # as the bundles' ValidationHandler: the evaluator runs first
        if e.state.epoch == 2:
            evaluator.state.epoch = 2
            evaluator.state.metrics = {"val_bacc": 0.75, "val_vec": torch.tensor([1.0, 2.0])}
            evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.75, 2
            evaluator.state.key_metric_name = "val_bacc"

    log = TrainingLog(opt, evaluator)
    log.attach(trainer)
    with caplog.at_level(logging.DEBUG):
        trainer.run([0, 1], max_epochs=2)
    lines = [
        r.getMessage() for r in caplog.records if r.name.endswith("handlers") and r.levelno == logging.INFO
    ]
    assert lines[0].startswith("epoch 1/2: train_loss 1.5000, lr 0.25, ")  # no validation in epoch 1
    assert lines[1].startswith(
        "epoch 2/2: train_loss 6.0000, lr 0.25, val_bacc 0.7500 (best val_bacc 0.7500 at epoch 2), "
    )
    assert lines[1].endswith(" s") and len(lines) == 2
    # ignite's own per-epoch INFO lines are demoted to DEBUG (they would interleave with the progress bar)
    ignite = [r for r in caplog.records if r.name.startswith("ignite")]
    assert ignite and all(r.levelno == logging.DEBUG and r.levelname == "DEBUG" for r in ignite)
    assert sum(isinstance(f, type(trainer.logger.filters[0])) for f in trainer.logger.filters) == 1
    log.attach(Engine(lambda e, b: None))  # attaching again does not add a second filter to the evaluator
    assert len(evaluator.logger.filters) == 1


def test_training_log_without_iterations_or_validation_shows_nan_and_no_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No losses: a NaN mean; an evaluator of another epoch or without metrics adds nothing."""
    log = TrainingLog(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), Engine(lambda e, b: None))
    assert log.validation_text(1) == ""
    log.evaluator.state.epoch, log.evaluator.state.metrics = 1, {"val_mae": 4.0}
    assert log.validation_text(2) == "" and log.validation_text(1) == ", val_mae 4.0000"
    log.evaluator.state.metrics = {"val_mae": 4.0, "val_r": 0.5}
    log.evaluator.state.best_metric = 3.5  # without best_metric_epoch: no "best" part
    assert log.validation_text(1) == ", val_mae 4.0000 val_r 0.5000"
    assert TrainingLog(log.optimizer).validation_text(1) == ""
    trainer = Engine(lambda e, b: None)
    trainer.state.epoch, trainer.state.max_epochs = 3, 4
    log.epoch_started(trainer)
    with caplog.at_level(logging.INFO, logger="mri_slice_transfer.engine.handlers"):
        log.epoch_completed(trainer)
    assert caplog.records[-1].getMessage().startswith("epoch 3/4: train_loss nan, lr 0.1, ")


# --- BestModelSaver: the model record, the age-bias log, FullCheckpoint's resume line -------------


@pytest.mark.parametrize("given", [{"metric_name": "val_x"}, {"lower_is_better": True}])
def test_best_model_saver_without_a_task_needs_both_metric_name_and_rule(tmp_path: Path, given: dict) -> None:
    """Without a task, a metric name alone or a rule alone is refused with one clear error."""
    message = r"^BestModelSaver needs a task, or both metric_name and lower_is_better$"
    with pytest.raises(ValueError, match=message):
        BestModelSaver(torch.nn.Linear(1, 1), str(tmp_path / "model.pt"), **given)


def test_model_record_of_a_task_holds_the_network_scale_training_facts_and_digest(tmp_path: Path) -> None:
    """model.json of a task's run: the network's encoder init, the input scale, the output bias, the
    training data summary, the key metric and the sha256 of the model.pt beside it."""
    net = torch.nn.Linear(1, 1)
    net.encoder_init = "imagenet"
    saver = BestModelSaver(net, str(tmp_path / "model.pt"), task="adni_ad", input_scale=0.5)
    frames = {"train": pd.DataFrame({"label": [0, 1, 1]}), "val": pd.DataFrame({"label": [0, 1]})}
    data = SimpleNamespace(task="adni_ad", frames=frames, is_demo=False, datalist_dir="lists", info={})
    saver.set_training(data, output_bias=-0.25)
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.metrics = 2, {"val_balanced_accuracy": 0.75, "val_threshold_logit": 0.1}
    saver(engine)
    record = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    assert record["encoder_init"] == "imagenet" and record["input_scale"] == 0.5
    assert record["output_bias"] == -0.25 and record["key_metric"] == "val_balanced_accuracy"
    assert record["training_data"] == {
        "source": "user data lists", "datalist_dir": "lists", "sizes": {"train": 3, "val": 2},
        "train_labels": {"CN": 1, "AD": 2},
    }  # fmt: skip
    assert record["sha256"] == hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    saver.set_training()  # nothing known: an empty summary, no output bias
    engine.state.epoch, engine.state.metrics["val_balanced_accuracy"] = 3, 0.875
    saver(engine)
    record = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    assert record["training_data"] == {} and record["output_bias"] is None and record["epoch"] == 3


def test_age_bias_fit_is_logged_at_info_and_a_missing_one_warns_with_its_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sound fit is an INFO line; too few validation scans give a WARNING naming the epoch."""
    saver = BestModelSaver(torch.nn.Linear(1, 1), str(tmp_path / "model.pt"), task="brain_age")
    ages = torch.tensor([50.0, 60.0, 70.0, 80.0])
    saver._val.append((0.5 * ages + 30.0, ages))
    with caplog.at_level(logging.INFO, logger="mri_slice_transfer.engine.handlers"):
        bias = saver.age_bias(4)
        saver.reset_validation()
        saver._val.append((ages[:2], ages[:2]))
        assert saver.age_bias(5) is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"epoch 4: {bias.describe()}"),
        ("WARNING", "no age-bias correction at epoch 5: too few validation scans or ages"),
    ]
    assert bias.slope == pytest.approx(0.5) and not bias.degenerate


def test_resume_logs_the_checkpoint_and_the_epoch_it_continues_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _training(tmp_path, 2, resume=False)
    with caplog.at_level(logging.INFO, logger="mri_slice_transfer.engine.handlers"):
        _training(tmp_path, 3, resume=True)
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed")]
    assert resumed == [f"resumed from {tmp_path / 'checkpoint.pt'} at epoch 2"]


def test_training_log_shows_a_best_epoch_1_and_the_epoch_s_duration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The best metric of epoch 1 is shown; the time is that since the epoch started."""
    clock = iter([0.0, 100.0, 102.5])  # TrainingLog(), epoch_started, epoch_completed
    monkeypatch.setattr("mri_slice_transfer.engine.handlers.time.perf_counter", lambda: next(clock))
    evaluator = Engine(lambda e, b: None)
    evaluator.state.epoch, evaluator.state.metrics = 1, {"val_mae": 4.0}
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 4.0, 1
    evaluator.state.key_metric_name = "val_mae"
    log = TrainingLog(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), evaluator)
    trainer = Engine(lambda e, b: None)
    trainer.state.epoch, trainer.state.max_epochs = 1, 2
    log.epoch_started(trainer)
    with caplog.at_level(logging.INFO, logger="mri_slice_transfer.engine.handlers"):
        log.epoch_completed(trainer)
    assert caplog.records[-1].getMessage() == (
        "epoch 1/2: train_loss nan, lr 0.1, val_mae 4.0000 (best val_mae 4.0000 at epoch 1), 2.5 s"
    )
