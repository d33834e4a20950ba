"""Inference on raw scans: prepare them (registration to the template) before predicting.

``inference.json --prepare true`` builds its data list with :func:`prepare_inputs`: the scans found by
:func:`~mri_slice_transfer.engine.inputs.resolve_inputs` are registered to the template by
:func:`~mri_slice_transfer.prepare.batch.prepare_scans` (progress bar, workers, resumable: a re-run reuses
scans prepared earlier with the same settings), and each data dict then points at the prepared image
and carries the preparation's outcome, which :class:`~mri_slice_transfer.engine.PredictionWriter` writes
beside the prediction. A scan whose preparation failed keeps its data dict, with the reason in
``prepare_error``, so that :class:`~mri_slice_transfer.engine.SafeTransform` turns it into a
``status=error`` row instead of predicting it.
"""

from __future__ import annotations

import logging
import math
import os
from os import PathLike
from pathlib import Path

from mri_slice_transfer.engine.distributed import shard_records
from mri_slice_transfer.engine.options import as_bool, as_optional

__all__ = ["PREPARE_KEYS", "prepare_inputs"]

logger = logging.getLogger(__name__)

#: Keys :func:`prepare_inputs` adds to each data dict (all always present, so batches collate):
#: ``input`` (the raw scan), ``prepare_status`` (``ok``, ``flagged`` or ``error``), ``flagged`` (bool),
#: ``prepare_correlation`` (correlation with the template T1 in the brain mask; NaN on error),
#: ``qc_png`` (QC image path, "" on error), ``prepare_note`` (why flagged / prepared earlier) and
#: ``prepare_error`` (why the preparation failed, "" otherwise).
PREPARE_KEYS = (
    "input",
    "prepare_status",
    "flagged",
    "prepare_correlation",
    "qc_png",
    "prepare_note",
    "prepare_error",
)


def _text(value: object) -> str:
    """A manifest cell as text (pandas gives NaN/None for empty cells)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _correlation(value: object) -> float:
    """The manifest's correlation, rounded as for a fresh preparation (a reused one is unrounded)."""
    try:
        return round(float(value), 4)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _not_one_scan(path: Path) -> str | None:
    """Why ``path`` cannot be prepared as a single scan (a plain folder or a CSV would be expanded)."""
    from mri_slice_transfer.prepare.io import is_dicom_folder

    if path.is_dir() and not is_dicom_folder(path):
        return f"{path}: is a folder without DICOM slices; give scan files or DICOM series folders"
    if path.suffix.lower() == ".csv":
        return f"{path}: is a CSV file, not a scan; give it as --input to read the scans it lists"
    return None


def prepare_inputs(
    records: list[dict],
    out_dir: str | PathLike,
    workers: int = 1,
    *,
    dof: int | None = None,
    n4: bool = False,
    threads: int | None = None,
    progress: bool = True,
    checkpoint: str | PathLike | None = None,
) -> list[dict]:
    """Prepare the raw scans of inference data dicts and point the dicts at the prepared images.

    Args:
        records: data dicts from :func:`~mri_slice_transfer.engine.inputs.resolve_inputs` (``image``
            or ``image_path`` is the raw scan: a file, or a DICOM series folder).
        out_dir: folder for the prepared scans, transforms, QC images, ``manifest.csv`` and ``qc.html``
            (created). Scans already prepared there with the same settings are reused.
        workers: parallel preparation processes (1 = in this process).
        dof: registration degrees of freedom, 6, 9 or 12 (default: that of ``prepare``, 9).
        n4: N4 bias-field correction before registration.
        threads: SimpleITK threads per worker (default: CPU cores / workers).
        progress: show a progress bar.
        checkpoint: the model checkpoint the inference will load (``models/model.pt``); if given, it
            must exist, which is checked before any scan is prepared, so that a missing model is not
            found only after a long preparation.

    Returns:
        one data dict per record, in order: the record's keys, ``image`` and ``image_path`` replaced by
        the prepared image ("" when the preparation failed), plus :data:`PREPARE_KEYS`.

    Raises:
        ValueError: no records, no ``out_dir`` or ``workers`` below 1.
        FileNotFoundError: ``checkpoint`` is given and is not a file.
    """
    out_dir, workers = _checked_arguments(records, out_dir, workers, checkpoint)
    raw = [str(r.get("image_path") or r.get("image") or "") for r in records]
    problems = _unpreparable(raw)
    todo = list(dict.fromkeys(p for p in raw if p not in problems))  # unique, in order
    rows = _prepare(todo, out_dir, workers, dof=dof, n4=n4, threads=threads, progress=progress)
    out = []
    for record, path in zip(records, raw, strict=True):
        row = rows.get(os.path.abspath(path)) if path and path not in problems else None
        out.append(_prepared_record(record, path, row, problems.get(path)))
    _log_outcome(out, out_dir)
    return out


def _checked_arguments(
    records: list[dict],
    out_dir: str | PathLike | None,
    workers: int,
    checkpoint: str | PathLike | None,
) -> tuple[Path, int]:
    """``(out_dir, workers)`` of :func:`prepare_inputs`, checked before any scan is prepared."""
    if not records:
        raise ValueError("prepare_inputs: no scans to prepare (the inference input matched nothing)")
    if as_optional(out_dir) is None:
        raise ValueError("prepare_inputs: no output folder for prepared scans; set --prepare_dir")
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"prepare_inputs: prepare_workers must be at least 1, not {workers}")
    if as_optional(checkpoint) is not None and not Path(checkpoint).expanduser().is_file():
        raise FileNotFoundError(
            f"model checkpoint {checkpoint} not found (checked before preparing any scan); train the "
            "bundle first or set --ckpt_dir to the folder that holds model.pt"
        )
    return Path(out_dir).expanduser(), workers


def _unpreparable(raw: list[str]) -> dict[str, str]:
    """``{path: why}`` of the raw paths that are not one scan (or empty)."""
    problems: dict[str, str] = {}
    for p in raw:
        why = _not_one_scan(Path(p)) if p else "a data dict without an image path"
        if why is not None:
            problems[p] = why
    return problems


def _prepare(todo: list[str], out_dir: Path, workers: int, **options: object) -> dict[str, dict]:
    """Prepare the scans ``todo``: their manifest rows by absolute input path (none if nothing to do)."""
    from mri_slice_transfer.prepare.batch import prepare_scans  # SimpleITK: only when preparing

    if not todo:
        return {}
    table = prepare_scans(todo, out_dir, workers=workers, **options)
    return {os.path.abspath(r["input"]): r for r in table.to_dict("records")}


def _prepared_record(record: dict, path: str, row: dict | None, problem: str | None) -> dict:
    """``record`` pointed at its prepared image with :data:`PREPARE_KEYS` (or the reason it failed)."""
    status = _text(row["status"]) if row is not None else "error"
    if status == "skipped":  # prepared by an earlier run: report that run's verdict
        status = _text(row["quality"]) or "ok"
    item = dict(record)
    if status == "error":
        error = problem or (_text(row["error"]) if row is not None else "")
        item.update(
            image="",
            image_path="",
            input=path,
            prepare_status="error",
            flagged=False,
            prepare_correlation=float("nan"),
            qc_png="",
            prepare_note="",
            prepare_error=f"preparation failed: {error or f'{path}: no reason recorded'}",
        )
    else:
        item.update(
            image=_text(row["output"]),
            image_path=_text(row["output"]),
            input=path,
            prepare_status=status,
            flagged=status == "flagged",
            prepare_correlation=_correlation(row["correlation"]),
            qc_png=_text(row["qc"]),
            prepare_note=_text(row["note"]),
            prepare_error="",
        )
    return item


def _log_outcome(out: list[dict], out_dir: Path) -> None:
    """Log how many scans were prepared with each status, and where the QC overview is."""
    counts: dict[str, int] = {}
    for item in out:
        counts[item["prepare_status"]] = counts.get(item["prepare_status"], 0) + 1
    logger.info(
        "prepared %d scan(s) for inference in %s (%s); QC overview: %s",
        len(out),
        out_dir,
        ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        out_dir / "qc.html",
    )


def inference_datalist(
    records: list[dict],
    prepare: bool | str = False,
    out_dir: str | PathLike | None = None,
    workers: int | str = 1,
    checkpoint: str | PathLike | None = None,
    shard: str | None = None,
) -> list[dict]:
    """The inference data dicts: ``records`` as they are, or with ``prepare`` their prepared scans.

    Args:
        records: data dicts from :func:`~mri_slice_transfer.engine.inputs.resolve_inputs`.
        prepare: register the raw scans first (``inference.json --prepare true``; a bool or its string).
        out_dir, workers, checkpoint: see :func:`prepare_inputs`.
        shard: ``INDEX/COUNT`` (``--shard``, a SLURM array task): only this share of the scans; under a
            multi-process launcher each rank takes its own share
            (:func:`~mri_slice_transfer.engine.distributed.shard_records`).

    Returns:
        the data dicts to predict (of this shard, before any preparation).
    """
    records = shard_records(records, shard)
    if not as_bool(prepare):
        return records
    return prepare_inputs(records, out_dir, int(workers), checkpoint=checkpoint)
