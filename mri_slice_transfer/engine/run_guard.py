"""One training per bundle folder, and no silent mixing with an earlier run.

:class:`TrainingGuard` is the first handler of the bundles' trainer. Its :meth:`TrainingGuard.check`
runs first in the bundles' ``run`` list and refuses (points 1 and 3 below) before any data are
loaded; when the trainer starts it

1. takes ``models/train.lock`` (:class:`~mri_slice_transfer.engine.lock.RunLock`): a second training
   into the same ``bundle_root`` refuses; a lock left by a killed run is taken over with a warning;
2. deletes temporary files a killed run left while writing the model, checkpoint or metrics files
   (:func:`~mri_slice_transfer.fileio.sweep_temp_files`; safe: no other training holds the lock);
3. refuses a fresh run (``--resume false``) into a folder that already holds a model, checkpoint or
   validation metrics unless ``--overwrite true``, which deletes them first, so a new run never keeps
   an old run's epochs or replaces its model silently;

and releases the lock when the run ends, also on an error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ignite.engine import Engine, Events

from mri_slice_transfer.engine.distributed import is_main_process
from mri_slice_transfer.engine.handlers import BestModelSaver, FullCheckpoint, MetricsWriter
from mri_slice_transfer.engine.lock import RunLock
from mri_slice_transfer.engine.options import as_bool
from mri_slice_transfer.fileio import sweep_temp_files

__all__ = ["ExistingRunError", "TrainingGuard", "LOCK_NAME"]

logger = logging.getLogger(__name__)

#: The lock file, in the checkpoint's folder (``models/``).
LOCK_NAME = "train.lock"


class ExistingRunError(RuntimeError):
    """A fresh training into a folder that holds another run's outputs, without ``--overwrite true``."""


class TrainingGuard:
    """Lock the bundle folder, sweep stale temporary files, protect an earlier run (module docstring).

    Args:
        checkpoint: the run's :class:`FullCheckpoint` (its path and ``resume`` flag).
        best_model: the :class:`BestModelSaver` (``model.pt`` and ``model.json``).
        metrics: the :class:`MetricsWriter` (``val_metrics.csv`` / ``.json``).
        overwrite: allow a fresh run to delete an earlier run's files.

    Raises:
        ValueError: both ``resume`` and ``overwrite``.
    """

    def __init__(
        self,
        checkpoint: FullCheckpoint,
        best_model: BestModelSaver,
        metrics: MetricsWriter,
        overwrite: bool = False,
    ) -> None:
        self.resume = checkpoint.resume
        self.overwrite = as_bool(overwrite)
        if self.resume and self.overwrite:
            raise ValueError("--resume true and --overwrite true contradict each other: choose one")
        self.outputs = [checkpoint.path, best_model.path, best_model.record_path, metrics.csv, metrics.json]
        self.lock = RunLock(checkpoint.path.parent / LOCK_NAME)
        self.started = time.time()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.COMPLETED, self.release)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.release_and_raise)

    def check(self) -> TrainingGuard:
        """Refuse early, before the data are loaded: a live lock or an earlier run (rank 0 only).

        Read-only (the lock is taken, and ``--overwrite`` deletes, when the trainer starts); the
        bundles call it first in their ``run`` list, so a refusal does not wait for the data cache.

        Returns:
            ``self``.

        Raises:
            RunLockedError: another live training holds the lock.
            ExistingRunError: an earlier run's outputs, without ``--resume`` or ``--overwrite``.
        """
        if is_main_process():
            self.lock.check_free()
            self._earlier_run()
        return self

    def _earlier_run(self) -> list[Path]:
        """The earlier run's outputs a fresh run replaces ([] if resuming); refused without ``overwrite``."""
        existing = [p for p in self.outputs if p.exists()]
        if not existing or self.resume:
            return []
        if not self.overwrite:
            names = ", ".join(str(p) for p in existing)
            raise ExistingRunError(
                f"this bundle folder already holds a training run ({names}); a fresh run would replace "
                "its model and mix its metrics with the new ones. Continue it with --resume true, replace "
                "it with --overwrite true, or train into another --bundle_root."
            )
        return existing

    def start(self, engine: Engine | None = None) -> None:
        """Lock, sweep, check for an earlier run and delete it under ``overwrite`` (rank 0 only)."""
        if not is_main_process():
            return
        self.started = time.time()
        self.lock.acquire()
        for tmp in sweep_temp_files(self.outputs, older_than=self.started):
            logger.warning("deleted %s, a temporary file left by an interrupted write", tmp)
        existing = self._earlier_run()
        if existing:
            logger.warning("--overwrite true: deleting the earlier run's %s", ", ".join(map(str, existing)))
        for p in existing:
            Path(p).unlink(missing_ok=True)

    def release(self, engine: Engine | None = None) -> None:
        """Release the lock (no-op if not held)."""
        self.lock.release()

    def release_and_raise(self, engine: Engine, err: BaseException) -> None:
        """On an error: release the lock, then let the error go on (ignite stops at the first handler)."""
        self.release(engine)
        raise err
