"""Ignite handlers of the bundles: per-epoch metrics files, best model, atomic full checkpoint/resume.

None of them runs a collective in its constructor, so every DDP rank can build them; only rank 0
writes files.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mri_slice_transfer.engine.distributed import is_main_process, unwrap
from mri_slice_transfer.engine.io import atomic_torch_save, write_csv, write_json
from mri_slice_transfer.engine.seeding import rng_state, set_rng_state

__all__ = ["MetricsWriter", "BestModelSaver", "FullCheckpoint"]

logger = logging.getLogger(__name__)


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
        write_json(rows, self.json)
        write_csv(rows, self.csv)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)


class BestModelSaver:
    """Save the network's state dict to ``path`` whenever the evaluator's key metric improves.

    Beside it, ``path`` with the suffix ``.json`` (``models/model.json``) records the epoch, the key
    metric and all validation metrics of that epoch, among them the AD decision threshold
    (``val_threshold``) that evaluation and inference use with ``decision_threshold: "validation"``.

    Args:
        network: the trained network (DDP wrapper is unwrapped).
        path: usually ``models/model.pt``.
        metric_name: name in ``engine.state.metrics``.
        lower_is_better: for brain-age MAE.
    """

    def __init__(self, network: torch.nn.Module, path: str, metric_name: str, lower_is_better: bool) -> None:
        self.network = network
        self.path = Path(path)
        self.metric_name = metric_name
        self.lower_is_better = bool(lower_is_better)
        self.best: float | None = None
        self.best_epoch = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.lower_is_better else value > self.best

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        if not self.improved(value):
            return
        self.best, self.best_epoch = value, int(engine.state.epoch)
        if is_main_process():
            atomic_torch_save(unwrap(self.network).state_dict(), self.path)
            metrics = {k: float(v) for k, v in engine.state.metrics.items() if _is_number(v)}
            record = {"epoch": self.best_epoch, "key_metric": self.metric_name, "metrics": metrics}
            write_json(record, self.path.with_suffix(".json"))
            logger.info(
                "new best %s=%.4f at epoch %d -> %s", self.metric_name, value, self.best_epoch, self.path
            )

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])


class FullCheckpoint:
    """Atomic full checkpoint (model, optimizer, trainer, RNG, extras) each epoch; optional resume.

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
        self.resume = bool(resume)

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
        atomic_torch_save(state, self.path)

    def load(self, engine: Engine) -> None:
        if not self.resume:
            return
        if not self.path.is_file():
            logger.warning("resume requested but %s does not exist: starting from scratch", self.path)
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        unwrap(self.network).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in self.extras.items():
            v.load_state_dict(state["extras"][k])
        trainer_state = dict(state["trainer"])
        trainer_state["max_epochs"] = engine.state.max_epochs
        engine.load_state_dict(trainer_state)
        set_rng_state(state["rng"])
        logger.info("resumed from %s at epoch %d", self.path, engine.state.epoch)
