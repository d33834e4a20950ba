"""Progress of an evaluation or inference run in scans: a bar when interactive, else log lines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from tqdm.auto import tqdm

from mri_slice_transfer.engine.distributed import is_main_process
from mri_slice_transfer.engine.options import as_bool

__all__ = ["ScanProgress"]

logger = logging.getLogger(__name__)


def _batch_size(batch: Any) -> int:
    """Scans in an engine batch (a decollated list, a collated dict of tensors, or a tensor)."""
    if isinstance(batch, dict):
        batch = batch.get("image")
    if isinstance(batch, (list, tuple)):
        return len(batch)
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 1


class ScanProgress:
    """Show how many scans an evaluator has done, and how fast.

    Interactive (standard error is a terminal): a tqdm bar in scans with scans/s and the time left.
    Otherwise (logs, batch jobs): an INFO line ``"<desc>: 40/200 scans (3.1 scans/s, about 52 s left)"``
    every ``every`` scans or ``interval`` seconds, whichever comes first, and one at the end.

    Args:
        desc: what is being done (``"inference"``, ``"evaluation"``).
        enabled: False shows nothing.
        every: scans between log lines (non-interactive).
        interval: seconds between log lines (non-interactive).
        interactive: bar (True) or log lines (False); None: a bar when standard error is a terminal.
    """

    def __init__(
        self,
        desc: str = "inference",
        enabled: bool = True,
        every: int = 50,
        interval: float = 30.0,
        interactive: bool | None = None,
    ) -> None:
        if int(every) < 1 or float(interval) <= 0:
            raise ValueError(f"ScanProgress: every must be >= 1 and interval > 0, not {every} and {interval}")
        self.desc, self.enabled = desc, as_bool(enabled)
        self.every, self.interval = int(every), float(interval)
        self.interactive = sys.stderr.isatty() if interactive is None else bool(interactive)
        self._bar: Any = None
        self.done = self.total = self._logged_at = 0
        self._start = self._logged_time = 0.0

    def attach(self, engine: Engine) -> None:
        if not (self.enabled and is_main_process()):
            return
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def start(self, engine: Engine) -> None:
        try:
            self.total = len(engine.state.dataloader.dataset)  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError):
            self.total = 0
        self.done = self._logged_at = 0
        self._start = self._logged_time = time.perf_counter()
        if self.interactive:
            self._bar = tqdm(total=self.total or None, desc=self.desc, unit="scan")

    def update(self, engine: Engine) -> None:
        n = _batch_size(engine.state.batch)
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.done - self._logged_at >= self.every or now - self._logged_time >= self.interval:
            self._log(now)

    def finish(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._log(time.perf_counter())

    def _log(self, now: float) -> None:
        self._logged_at, self._logged_time = self.done, now
        rate = self.done / max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        todo = self.total - self.done
        left = f", about {todo / rate:.0f} s left" if todo > 0 and rate > 0 else ""
        logger.info("%s: %d%s scans (%.2f scans/s%s)", self.desc, self.done, of, rate, left)


def training_progress_bar(enabled: bool | str = True) -> Any:
    """Ignite's per-iteration ``ProgressBar`` for training (not kept after each epoch).

    Args:
        enabled: the ``progress_bar`` option (a bool or its command-line string); False hides it.

    Returns:
        the ``ignite.handlers.ProgressBar``.
    """
    return ProgressBar(persist=False, disable=not as_bool(enabled))
