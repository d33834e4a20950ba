"""Ignite handlers of the bundles: per-epoch metrics files, best model, atomic full checkpoint/resume,
the per-epoch training log and the stop on a non-finite loss.

None of them runs a collective in its constructor, so every DDP rank can build them; only rank 0
writes files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from mri_slice_transfer.engine.brain_age import AgeBias, fit_age_bias
from mri_slice_transfer.engine.checkpoint import DIGEST_KEY, load_weights, save_checkpoint
from mri_slice_transfer.engine.distributed import is_main_process, unwrap
from mri_slice_transfer.engine.io import atomic_torch_save, write_csv
from mri_slice_transfer.engine.metrics import flat_pred_label
from mri_slice_transfer.engine.model_record import training_data_summary, training_record
from mri_slice_transfer.engine.options import as_bool
from mri_slice_transfer.engine.seeding import rng_state, set_rng_state
from mri_slice_transfer.fileio import atomic_write_json, file_sha256
from mri_slice_transfer.vocabulary import is_better, task_spec

__all__ = [
    "handler",
    "MetricsWriter",
    "BestModelSaver",
    "FullCheckpoint",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "TrainingLog",
]

logger = logging.getLogger(__name__)


def handler(handler: Any) -> Any:
    """``handler`` itself: puts a handler defined under its own config id into ``train#handlers``.

    MONAI's ``ConfigWorkflow.check_properties`` reads every element of ``train#handlers`` as a
    ``{"_target_": ...}`` dict, so a plain ``"@training_guard"`` reference cannot be listed there; the
    bundles write ``{"_target_": "mri_slice_transfer.engine.handler", "handler": "@training_guard"}``
    for handlers that other items refer to by id.

    Args:
        handler: the handler object.

    Returns:
        ``handler``.
    """
    return handler


class MetricsWriter:
    """Append the evaluator's metrics of each validation to ``<dir>/<stem>.csv`` and ``.json``.

    A resumed run replaces rows of epochs it repeats, so each epoch appears once.
    """

    def __init__(self, output_dir: str, stem: str = "val_metrics") -> None:
        self.csv = Path(output_dir) / f"{stem}.csv"
        self.json = Path(output_dir) / f"{stem}.json"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        row = {"epoch": int(engine.state.epoch)}
        row.update({k: float(v) for k, v in engine.state.metrics.items() if _is_number(v)})
        rows = json.loads(self.json.read_text(encoding="utf-8")) if self.json.is_file() else []
        rows = [r for r in rows if r.get("epoch") != row["epoch"]] + [row]
        atomic_write_json(self.json, rows)
        write_csv(rows, self.csv)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)


class BestModelSaver:
    """Save the network's state dict to ``path`` whenever the evaluator's key metric improves.

    Beside it, ``path`` with the suffix ``.json`` (``models/model.json``, :attr:`record_path`) records
    the epoch, the key metric and all validation metrics of that epoch, among them the AD decision
    threshold (``val_threshold``) that evaluation and inference use with ``decision_threshold:
    "validation"``, and the ``sha256`` of ``model.pt``. The model is written first and the record last,
    so a kill between the two is detected when the model is loaded
    (:func:`~mri_slice_transfer.engine.checkpoint.load_model_weights`).

    With ``task`` given, the record is the full :class:`~mri_slice_transfer.engine.model_record.ModelRecord`
    (architecture, input scale, preprocessing, output meaning, versions; with :meth:`set_training` also
    the training data summary and the initial output bias), from which evaluation and inference build
    the network. For a regression task (brain age) it also keeps the epoch's validation predictions and
    ages and records, with each new best model, the age-bias correction fitted on them
    (``age_bias``: :func:`~mri_slice_transfer.engine.brain_age.fit_age_bias`), so the saved model always
    carries the correction of its own validation predictions, never one fitted on training data.

    Args:
        network: the trained network (DDP wrapper is unwrapped).
        path: usually ``models/model.pt``.
        metric_name: name in ``engine.state.metrics``; default the task's key metric (``val_<key>``).
        lower_is_better: for brain-age MAE; default the task's rule.
        task: the task (None: a record of the epoch, metrics and sha256 only, as 0.5.0 wrote).
        input_scale: the scale of the template grid the network is trained at.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        path: str,
        metric_name: str | None = None,
        lower_is_better: bool | None = None,
        task: str | None = None,
        input_scale: float | None = None,
    ) -> None:
        self.network = network
        self.path = Path(path)
        self.record_path = self.path.with_suffix(".json")
        spec = task_spec(task) if task is not None else None
        if metric_name is None or lower_is_better is None:
            if spec is None:
                raise ValueError("BestModelSaver needs a task, or both metric_name and lower_is_better")
        self.metric_name = metric_name if metric_name is not None else "val_" + spec.key_metric
        self.lower_is_better = bool(spec.lower_is_better if lower_is_better is None else lower_is_better)
        self.task = task
        self.input_scale = input_scale
        self.training: dict[str, Any] = {}
        self.best: float | None = None
        self.best_epoch = 0
        self.fits_age_bias = spec is not None and not spec.is_binary
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []  # (pred, age) batches of this validation

    def set_training(self, data: Any = None, output_bias: float | None = None) -> None:
        """Facts of the training run the record includes, known once the data is read.

        Args:
            data: the run's :class:`~mri_slice_transfer.engine.datasets.DataSource` (None: not recorded).
            output_bias: the value the output bias was initialised to (None: not initialised).
        """
        summary = training_data_summary(data) if data is not None else {}
        self.training = {"training_data": summary, "output_bias": output_bias}

    def attach(self, engine: Engine) -> None:
        if self.fits_age_bias:
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset_validation)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def reset_validation(self, engine: Engine | None = None) -> None:
        """Forget the previous validation's predictions (a validation starts)."""
        self._val.clear()

    def collect(self, engine: Engine) -> None:
        """Keep one validation batch's predicted and true ages (for :meth:`age_bias`)."""
        self._val.append(flat_pred_label(engine.state.output))

    def age_bias(self, epoch: int) -> AgeBias | None:
        """The age-bias correction fitted on this validation's predictions (all DDP ranks' scans).

        Called on every rank (it gathers); None when nothing was collected or too few scans.
        """
        if not self._val:
            return None
        pred, age = (torch.cat([b[i] for b in self._val]).double() for i in (0, 1))
        pred, age = idist.all_gather(pred), idist.all_gather(age)
        bias = fit_age_bias(pred.cpu().numpy(), age.cpu().numpy(), epoch=epoch)
        if idist.get_rank() != 0:
            return bias
        if bias is None:
            logger.warning("no age-bias correction at epoch %d: too few validation scans or ages", epoch)
        else:
            (logger.warning if bias.degenerate else logger.info)("epoch %d: %s", epoch, bias.describe())
        return bias

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (NaN never does)."""
        return is_better(value, self.best, self.lower_is_better)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        if not self.improved(value):
            return
        self.best, self.best_epoch = value, int(engine.state.epoch)
        age_bias = self.age_bias(self.best_epoch) if self.fits_age_bias else None
        if is_main_process():
            atomic_torch_save(unwrap(self.network).state_dict(), self.path)
            metrics = {k: float(v) for k, v in engine.state.metrics.items() if _is_number(v)}
            atomic_write_json(self.record_path, self.record(metrics, file_sha256(self.path), age_bias))
            logger.debug(
                "new best %s=%.4f at epoch %d -> %s", self.metric_name, value, self.best_epoch, self.path
            )

    def record(
        self, metrics: dict[str, float], sha256: str, age_bias: AgeBias | None = None
    ) -> dict[str, Any]:
        """The content of ``model.json`` for the current best epoch (``age_bias``: brain age only)."""
        if self.task is None:
            return {
                "epoch": self.best_epoch,
                "key_metric": self.metric_name,
                "metrics": metrics,
                DIGEST_KEY: sha256,
            }
        record = training_record(
            self.network, self.task, self.best_epoch, self.metric_name, metrics, sha256,
            input_scale=self.input_scale, age_bias=age_bias, **self.training,
        )  # fmt: skip
        return record.to_json()

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])


class FullCheckpoint:
    """Atomic full checkpoint (model, optimizer, trainer, RNG, extras) each epoch; optional resume.

    The file embeds the digest of its content
    (:func:`~mri_slice_transfer.engine.checkpoint.save_checkpoint`); a truncated or corrupt checkpoint
    is refused on resume with one error naming it.

    Attach it after the ``ValidationHandler`` so that the saved state follows validation and the
    best-model bookkeeping: a resumed CPU run with the same seed then ends with the same weights.

    Args:
        path: checkpoint file, e.g. ``models/checkpoint.pt``.
        network: the trained network.
        optimizer: its optimizer.
        extras: other objects with ``state_dict``/``load_state_dict`` (e.g. a ``BestModelSaver``).
        resume: load ``path`` when the trainer starts (a warning, not an error, if it is missing).
    """

    def __init__(
        self,
        path: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        extras: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.network = network
        self.optimizer = optimizer
        self.extras = dict(extras or {})
        self.resume = as_bool(resume)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        state = {
            "model": unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": dict(engine.state_dict()),
            "rng": rng_state(),
            "extras": {k: v.state_dict() for k, v in self.extras.items()},
        }
        save_checkpoint(state, self.path)

    def load(self, engine: Engine) -> None:
        if not self.resume:
            return
        if not self.path.is_file():
            logger.warning("resume requested but %s does not exist: starting from scratch", self.path)
            return
        hint = (
            f"Restore it from a backup, or start again without --resume (with --overwrite true); "
            f"the best model so far is {self.path.with_name('model.pt')}."
        )
        state = load_weights(self.path, map_location="cpu", hint=hint)
        unwrap(self.network).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in self.extras.items():
            v.load_state_dict(state["extras"][k])
        trainer_state = dict(state["trainer"])
        trainer_state["max_epochs"] = engine.state.max_epochs
        engine.load_state_dict(trainer_state)
        set_rng_state(state["rng"])
        logger.info("resumed from %s at epoch %d", self.path, engine.state.epoch)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says where and what to try."""


def _loss_of(engine: Engine, output_transform: Callable[[Any], Any]) -> float:
    loss = output_transform(engine.state.output)
    return float(loss.detach().float().mean()) if torch.is_tensor(loss) else float(loss)


class StopOnNonFiniteLoss:
    """Stop training with :class:`NonFiniteLossError` as soon as the loss is NaN or infinite.

    Like ignite's ``TerminateOnNan``, but an error (the run exits non-zero) with the epoch and
    iteration in the message, before a checkpoint of NaN weights is written.

    Args:
        output_transform: ``engine.state.output`` -> loss (bundles: ``from_engine(["loss"], first=True)``).
    """

    def __init__(self, output_transform: Callable[[Any], Any] = lambda out: out) -> None:
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = _loss_of(engine, self.output_transform)
        if math.isfinite(loss):
            return
        per_epoch = engine.state.epoch_length or 0
        in_epoch = (engine.state.iteration - 1) % per_epoch + 1 if per_epoch else engine.state.iteration
        raise NonFiniteLossError(
            f"training loss is {loss} at epoch {engine.state.epoch}, iteration {in_epoch} of the epoch "
            f"({engine.state.iteration} overall): training stopped. Lower the learning rate (--lr), check "
            "the inputs for NaN / inf values, or turn off mixed precision (--amp false); resume from the "
            "last good epoch with --resume true."
        )


class _DemoteToDebug(logging.Filter):
    """Turn a logger's records into DEBUG records (ignite's per-epoch lines under :class:`TrainingLog`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class TrainingLog:
    """One INFO line per epoch: mean train loss, learning rate, validation metrics, time.

    Per-iteration losses and ignite's own per-epoch lines go to DEBUG, so the log does not interleave
    with the progress bar.

    Args:
        optimizer: for the epoch's learning rate (read when the epoch starts).
        evaluator: the validation engine whose metrics the line shows (None: none shown).
        output_transform: ``engine.state.output`` -> loss.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        evaluator: Engine | None = None,
        output_transform: Callable[[Any], Any] = lambda out: out,
    ) -> None:
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.output_transform = output_transform
        self.losses: list[float] = []
        self.lr = math.nan
        self.t0 = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        for eng in (engine, self.evaluator):
            if eng is not None and not any(isinstance(f, _DemoteToDebug) for f in eng.logger.filters):
                eng.logger.addFilter(_DemoteToDebug())
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self.losses, self.t0 = [], time.perf_counter()
        self.lr = float(self.optimizer.param_groups[0]["lr"])

    def iteration_completed(self, engine: Engine) -> None:
        self.losses.append(_loss_of(engine, self.output_transform))
        logger.debug(
            "epoch %d iteration %d: train_loss %.4f",
            engine.state.epoch,
            engine.state.iteration,
            self.losses[-1],
        )

    def validation_text(self, epoch: int) -> str:
        """The evaluator's metrics of ``epoch`` and the best so far ("" if it did not validate then)."""
        ev = self.evaluator
        if ev is None or ev.state.epoch != epoch or not ev.state.metrics:
            return ""
        text = ", " + " ".join(f"{k} {float(v):.4f}" for k, v in ev.state.metrics.items() if _is_number(v))
        best, best_epoch = getattr(ev.state, "best_metric", None), getattr(ev.state, "best_metric_epoch", -1)
        if best is not None and best_epoch > 0:
            text += f" (best {ev.state.key_metric_name} {float(best):.4f} at epoch {best_epoch})"
        return text

    def epoch_completed(self, engine: Engine) -> None:
        mean = sum(self.losses) / len(self.losses) if self.losses else math.nan
        logger.info(
            "epoch %d/%d: train_loss %.4f, lr %.3g%s, %.1f s",
            engine.state.epoch, engine.state.max_epochs, mean, self.lr,
            self.validation_text(engine.state.epoch), time.perf_counter() - self.t0,
        )  # fmt: skip
