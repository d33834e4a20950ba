"""Test doubles that the jobs of ``tests/test_cluster.py`` unpickle in other processes (so they live in a
module of their own, importable with ``tests/`` on ``PYTHONPATH``)."""

from __future__ import annotations

import os
from pathlib import Path

from test_grid import FakeRunner

from mri_slice_transfer.experiments.runner import PlannedRun


class DyingRunner(FakeRunner):
    """:class:`test_grid.FakeRunner` whose runs with ``die`` in their id end their job without a word
    (``os._exit``, as a job killed by the scheduler) on their first attempt."""

    def __init__(self, die: str = "") -> None:
        super().__init__()
        self.die = die

    def train(self, run: PlannedRun, run_dir: Path, resume: bool) -> None:
        flag = run_dir / "died_once"
        if self.die and self.die in run.run_id and not flag.exists():
            flag.touch()
            os._exit(137)
        super().train(run, run_dir, resume)
