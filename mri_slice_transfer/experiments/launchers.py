"""Where the runs of a grid run: here, one after another (``local``), or as cluster jobs (``slurm``).

``grid --launcher slurm`` submits every unfinished run of the grid as one job through
`submitit <https://github.com/facebookincubator/submitit>`_ (a SLURM job array; submitit's local
executor runs the same jobs as processes of this machine, which is how the tests run it). A job is
:func:`run_one`: :func:`~mri_slice_transfer.experiments.runner.run_grid` on a one-run grid, so a job
writes exactly the run folder the in-process loop writes (``config.json``, logs, ``train.done``,
``done.json`` / ``failed.json``) and resumes the same way. A job that dies without a word (killed,
out of memory, past its time limit) becomes a failed row with submitit's reason; rerunning the same
command submits only the runs without ``done.json``. The driver then assembles ``results.csv``,
``table.md`` and the figure from the rows as before.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mri_slice_transfer.experiments.run_folder import RUNS, RunFiles, read_marker, write_marker
from mri_slice_transfer.experiments.runner import GridError, PlannedRun, Runner, _base_row, run_grid

__all__ = ["LAUNCHERS", "SubmititLauncher", "make_launcher", "run_one"]

#: ``grid --launcher`` choices: ``local`` is the in-process loop of :func:`run_grid` (the default).
LAUNCHERS = ("local", "slurm")

#: A job's time limit when ``--slurm-option timeout_min=...`` is not given: submitit's own default (minutes)
#: would end a training run early.
DEFAULT_TIMEOUT_MIN = 24 * 60

#: The folder of submitit's job files (pickled jobs, stdout / stderr of each job) under the grid folder.
JOBS = "jobs"


def run_one(
    run: PlannedRun, out_dir: str, runner: Runner, task: str, redo: bool, n_bootstrap: int
) -> dict[str, Any]:
    """One job: train, evaluate and collect ``run`` into ``<out_dir>/runs/<run_id>`` (the row).

    Args:
        run, runner, task, redo, n_bootstrap: as in :func:`run_grid`.
        out_dir: the grid folder.

    Returns:
        the run's result row (``done.json``, or the failed row also written to ``failed.json``).
    """
    return run_grid([run], out_dir, runner, task, redo=redo, n_bootstrap=n_bootstrap, progress=print)[0]


def _died(run: PlannedRun, runs_dir: Path, task: str, job: Any, err: BaseException) -> dict[str, Any]:
    """The row of a job that ended without a result: its run folder's marker, else a failed row."""
    files = RunFiles.of(runs_dir / run.run_id)
    marker = read_marker(files.done) or read_marker(files.failed)
    if marker is not None:
        return marker
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    row = _base_row(task, run, files.run_dir)
    row.update(
        status="failed",
        stage="job",
        error=f"job {job.job_id} ended without a result ({type(err).__name__}: {reason}); "
        f"see {job.paths.stderr} and rerun the grid to redo the run",
        log_tail="",
    )
    files.run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(files.failed, row)
    return row


@dataclass
class SubmititLauncher:
    """Runs each unfinished run of a grid as a submitit job and waits for them.

    Attributes:
        folder: submitit's job folder (one sub-folder per job: pickles, stdout, stderr).
        cluster: ``None`` (SLURM when ``sbatch`` is on the PATH, else local processes), ``"slurm"``,
            ``"local"`` (processes of this machine) or ``"debug"`` (in this process).
        parameters: ``executor.update_parameters(**parameters)``, e.g. ``slurm_partition``,
            ``timeout_min`` (default 24 h), ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``,
            ``slurm_array_parallelism``.
    """

    folder: Path
    cluster: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def executor(self) -> Any:
        """The submitit executor with :attr:`parameters`."""
        try:
            import submitit  # the cluster extra: only a cluster launch needs it
        except ImportError as err:
            raise GridError(
                "grid --launcher slurm needs submitit, the 'cluster' extra: pip install -e '.[cluster]'"
            ) from err

        executor = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        executor.update_parameters(
            **{"name": "mst-grid", "timeout_min": DEFAULT_TIMEOUT_MIN, **self.parameters}
        )
        return executor

    def __call__(
        self,
        runs: Sequence[PlannedRun],
        out_dir: str | os.PathLike,
        runner: Runner,
        task: str,
        redo: bool,
        n_bootstrap: int,
        say: Callable[[str], None],
    ) -> list[dict[str, Any]]:
        """Submit the runs without ``done.json`` (all with ``redo``), wait, return every run's row."""
        runs_dir = Path(out_dir) / RUNS
        rows: dict[str, dict[str, Any]] = {}
        todo = []
        for run in runs:
            marker = None if redo else read_marker(RunFiles.of(runs_dir / run.run_id).done)
            if marker is not None:
                rows[run.run_id] = marker
            else:
                todo.append(run)
        say(f"grid: {len(runs)} runs, {len(rows)} already finished, {len(todo)} to submit -> {runs_dir}")
        if todo:
            executor = self.executor()
            n = len(todo)
            jobs = executor.map_array(
                run_one, todo, [str(out_dir)] * n, [runner] * n, [task] * n, [redo] * n, [n_bootstrap] * n
            )
            say(f"submitted {n} job(s) (first id {jobs[0].job_id}); job files in {self.folder}")
            for i, (run, job) in enumerate(zip(todo, jobs, strict=True), 1):
                try:
                    rows[run.run_id] = job.result()
                except Exception as err:  # noqa: BLE001 - a dead job is a failed row; the grid goes on
                    rows[run.run_id] = _died(run, runs_dir, task, job, err)
                row = rows[run.run_id]
                say(f"[{i}/{n}] {run.run_id} (job {job.job_id}): {row.get('status')} {row.get('error', '')}")
        return [rows[run.run_id] for run in runs]


def make_launcher(
    name: str, out_dir: str | os.PathLike, options: Mapping[str, Any] | None = None
) -> SubmititLauncher | None:
    """The launcher ``grid --launcher NAME`` asks for (None: the in-process loop).

    Args:
        name: one of :data:`LAUNCHERS`.
        out_dir: the grid folder (job files go to ``<out_dir>/jobs``).
        options: ``--slurm-option KEY=VALUE`` pairs: ``cluster`` picks submitit's executor (``local``
            runs the jobs as processes here), the others go to ``executor.update_parameters``.

    Returns:
        the launcher for :func:`run_grid`'s ``launcher`` argument.

    Raises:
        GridError: an unknown launcher, or slurm options with ``local``.
    """
    options = dict(options or {})
    if name not in LAUNCHERS:
        raise GridError(f"--launcher must be one of {', '.join(LAUNCHERS)}, not {name!r}")
    if name == "local":
        if options:
            given = " ".join(shlex.quote(f"{k}={v}") for k, v in options.items())
            raise GridError(f"--slurm-option {given} needs --launcher slurm")
        return None
    cluster = options.pop("cluster", None)
    return SubmititLauncher(Path(out_dir) / JOBS, None if cluster is None else str(cluster), options)
