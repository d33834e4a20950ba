"""Preparing a batch as jobs of a task engine (submitit): local processes or a SLURM job array.

``mri-slice-transfer prepare --engine submitit --workers N`` deals the scans out to ``N`` jobs (scan ``i``
to job ``i % N``), each running :func:`~mri_slice_transfer.prepare.batch.prepare_scan` on its scans one
after another, so a job is exactly the single-machine preparation of a share of the batch. The engine is
`submitit <https://github.com/facebookincubator/submitit>`_, the one ``grid --launcher slurm`` uses:
``cluster="local"`` runs the jobs as processes of this machine, ``None`` on a machine with SLURM submits a
job array (docs/cluster.md says why submitit rather than Dask).

- **Resumable**: a scan whose record ``<name>.json`` matches its input and settings is skipped (the rule of
  :func:`~mri_slice_transfer.prepare.batch.prepare_scan`), so rerunning a killed batch prepares only what is
  missing.
- **One manifest**: each job writes every scan's manifest row to ``<out>/.jobs/rows/<i>.json`` as soon as
  the scan is done; the driver waits for the jobs, then writes ``manifest.csv`` and ``qc.html`` once, one
  row per input in input order. A scan whose job died before reaching it gets an error row naming the job.
- **Progress for the whole batch**: the driver counts those row files (one bar over all scans of all jobs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mri_slice_transfer.fileio import atomic_write_json
from mri_slice_transfer.prepare.batch import (
    _batch_inputs,
    _finish_batch,
    _init_worker,
    _row,
    prepare_scan,
)
from mri_slice_transfer.prepare.registration import template_images

__all__ = ["ENGINES", "JOBS", "prepare_chunk", "prepare_scans_as_jobs"]

log = logging.getLogger(__name__)

#: ``prepare --engine`` choices: ``processes`` (a process pool on this machine, the default) or ``submitit``.
ENGINES = ("processes", "submitit")
#: The driver's folder under the output folder: submitit's job files and the finished rows.
JOBS = ".jobs"
#: A job's time limit when none is given (submitit's own default is a few minutes).
DEFAULT_TIMEOUT_MIN = 24 * 60


def prepare_chunk(
    paths: list[str], names: list[str], indices: list[int], out_dir: str, threads: int, options: dict
) -> int:
    """One job: prepare ``paths`` into ``out_dir``, each manifest row to ``<out>/.jobs/rows/<i>.json``.

    Args:
        paths, names: the scans of this job and the base names of their outputs.
        indices: the scans' positions in the batch (the row files' names).
        out_dir: the batch's output folder.
        threads: SimpleITK threads.
        options: ``dof``, ``n4``, ``skip_existing`` of :func:`prepare_scan`.

    Returns:
        the number of scans done.
    """
    _init_worker(threads)
    rows = Path(out_dir) / JOBS / "rows"
    for path, name, index in zip(paths, names, indices, strict=True):
        atomic_write_json(rows / f"{index}.json", prepare_scan(path, out_dir, name=name, **options))
    return len(paths)


def _wait(jobs: list[Any], rows: Path, total: int, progress: bool, poll: float) -> None:
    """Wait for every job, with one progress bar over the batch's scans (the row files written)."""
    bar = tqdm(total=total, desc="prepare", unit="scan", disable=not progress)
    try:
        while True:
            finished = all(job.done() for job in jobs)
            done = sum(1 for _ in rows.glob("*.json"))
            bar.update(done - bar.n)
            if finished:
                return
            time.sleep(poll)
    finally:
        bar.close()


def _job_reason(job: Any) -> str:
    """Why a job ended: the last line of its exception (submitit's, for a killed job)."""
    err = job.exception()
    if err is None:
        return "it finished without writing the row"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def _collect(paths: list[Path], chunks: list[list[int]], jobs: list[Any], rows: Path) -> list[dict]:
    """Every scan's row: from its row file, or an error row naming the job that never reached it."""
    out: list[dict | None] = [None] * len(paths)
    for chunk, job in zip(chunks, jobs, strict=True):
        reason = ""
        for i in chunk:
            try:
                out[i] = json.loads((rows / f"{i}.json").read_text(encoding="utf-8"))
                continue
            except (OSError, ValueError):
                pass
            if not reason:
                err = job.exception()
                reason = (
                    f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
                )
            out[i] = _row(
                paths[i],
                {},
                status="error",
                error=f"{paths[i]}: job {job.job_id} ended before preparing it ({reason}); rerun the same "
                "command to prepare the missing scans",
            )
    return [r for r in out if r is not None]


def prepare_scans_as_jobs(
    inputs: Iterable[str | PathLike] | str | PathLike,
    out_dir: str | PathLike,
    workers: int = 2,
    cluster: str | None = "local",
    parameters: Mapping[str, Any] | None = None,
    n4: bool = False,
    dof: int | None = None,
    skip_existing: bool = True,
    progress: bool = True,
    threads: int | None = None,
    poll: float = 0.5,
) -> pd.DataFrame:
    """Prepare a batch of raw scans as ``workers`` submitit jobs (see the module docstring).

    Args:
        inputs: as in :func:`~mri_slice_transfer.prepare.batch.prepare_scans`.
        out_dir: output folder; ``manifest.csv`` and ``qc.html`` are written there, job files in ``.jobs/``.
        workers: jobs (each prepares every ``workers``-th scan).
        cluster: submitit's executor: ``"local"`` (processes here), ``"slurm"``, or None (SLURM when
            ``sbatch`` is on the PATH, else local).
        parameters: ``executor.update_parameters`` (e.g. ``slurm_partition``, ``timeout_min``,
            ``cpus_per_task``, ``mem_gb``); ``timeout_min`` defaults to 24 h.
        n4, dof, skip_existing, progress: as in :func:`~mri_slice_transfer.prepare.batch.prepare_scans`.
        threads: SimpleITK threads per job (default: ``cpus_per_task``, else CPU cores / workers).
        poll: seconds between two looks at the jobs.

    Returns:
        the manifest (one row per scan, input order).
    """
    try:
        import submitit  # the cluster extra: only this engine needs it
    except ImportError as err:
        raise ImportError(
            "prepare --engine submitit needs submitit, the 'cluster' extra: pip install -e '.[cluster]'"
        ) from err

    paths, names, out_dir, dof = _batch_inputs(inputs, out_dir, dof)
    parameters = {"name": "mst-prepare", "timeout_min": DEFAULT_TIMEOUT_MIN, **dict(parameters or {})}
    workers = max(1, min(int(workers), len(paths) or 1))
    if threads is None:
        threads = int(parameters.get("cpus_per_task") or max(1, (os.cpu_count() or 1) // workers))
    template_images()  # derive and cache the template files once, before any job needs them
    rows = out_dir / JOBS / "rows"
    shutil.rmtree(rows, ignore_errors=True)  # rows of an earlier, killed run: its scans are skipped now
    rows.mkdir(parents=True)
    executor = submitit.AutoExecutor(folder=str(out_dir / JOBS / "submitit"), cluster=cluster)
    executor.update_parameters(**parameters)
    chunks = [list(range(k, len(paths), workers)) for k in range(workers)] if paths else []
    options = {"dof": dof, "n4": n4, "skip_existing": skip_existing}
    jobs = executor.map_array(
        prepare_chunk,
        [[str(paths[i]) for i in c] for c in chunks],
        [[names[i] for i in c] for c in chunks],
        chunks,
        [str(out_dir)] * len(chunks),
        [threads] * len(chunks),
        [options] * len(chunks),
    )
    log.info(
        "prepare: %d scan(s) in %d job(s) (%s), job files in %s",
        len(paths),
        len(jobs),
        cluster,
        out_dir / JOBS,
    )
    _wait(jobs, rows, len(paths), progress, poll)
    done = _collect(paths, chunks, jobs, rows)
    return _finish_batch(done, out_dir)
