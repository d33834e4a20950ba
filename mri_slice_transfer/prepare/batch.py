"""Preparing raw scans for the models: one scan (:func:`prepare_scan`) or a batch (:func:`prepare_scans`).

For each scan, in ``out_dir`` (``<name>`` is BIDS-derivative style when the scan's path names its subject,
e.g. ``sub-01/ses-bl/anat/sub-01_ses-bl_space-MNI152NLin2009aSym_res-2_T1w``; see :func:`output_name`)::

    <name>.nii.gz    the scan on the 91x109x91 2 mm template grid, template brain mask applied (float32)
    <name>.tfm       ITK transform file: template physical point (LPS mm) -> scan physical point (LPS mm)
    <name>_qc.png    three orthogonal views with the template brain outline
    <name>.json      record of the preparation (input, settings, metric, flags, RAS 4x4 matrix, size and
                     sha256 of each output); written last, so its presence (with matching input, settings
                     and output checksums) marks the scan as done

and for a batch ``manifest.csv`` (one row per input) and ``qc.html`` (all QC images, problems first).
Every file is written to a temporary name and renamed, so an interrupted run leaves no half-written output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from mri_slice_transfer.data.bids import derivative_name, scan_entities
from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.fileio import atomic_path, atomic_write_json, file_sha256
from mri_slice_transfer.prepare.io import IMAGE_SUFFIXES, find_inputs, read_scan
from mri_slice_transfer.prepare.qc import qc_png, write_overview
from mri_slice_transfer.prepare.registration import (
    DEFAULT_DOF,
    DOF_CHOICES,
    n4_correct,
    register_to_template,
    resample_to_template_grid,
    template_images,
    transform_to_ras_matrix,
)
from mri_slice_transfer.template import TEMPLATE_AFFINE

__all__ = ["MANIFEST_COLUMNS", "RECORD_VERSION", "prepare_scan", "prepare_scans", "output_name"]

log = logging.getLogger(__name__)

#: Columns of ``manifest.csv`` (``quality`` is the registration verdict, ok or flagged, also for skipped
#: rows; ``note`` says why a scan was flagged or skipped).
MANIFEST_COLUMNS = (
    "input", "subject_id", "session_id", "output", "transform", "qc", "status", "metric", "correlation",
    "seconds", "error", "quality", "note", "output_bytes", "output_sha256",
)  # fmt: skip
#: Outputs of one scan whose size and sha256 the record keeps (a re-run checks them).
_CHECKED = ("output", "transform", "qc")
#: Bump when the preparation changes, so that a re-run redoes scans prepared by an older version.
RECORD_VERSION = 1


def output_name(path: str | PathLike) -> str:
    """Base name of a scan's outputs, relative to the output folder, without extension.

    When the path names the scan's subject (BIDS entities, a UK Biobank ``<eid>_20252_2_0`` folder or
    an ADNI ``002_S_0295`` folder: :func:`~mri_slice_transfer.data.bids.scan_entities`), the name is
    BIDS-derivative style (:func:`~mri_slice_transfer.data.bids.derivative_name`), so it depends on
    the scan alone, not on the other files of a batch. Otherwise it is the file name without the image
    extension (the folder name for DICOM).

    Args:
        path: the raw scan (file or DICOM folder).

    Returns:
        e.g. ``"sub-01/ses-bl/anat/sub-01_ses-bl_space-MNI152NLin2009aSym_res-2_T1w"`` or ``"scan07"``.
    """
    p = Path(path)
    derived = derivative_name(scan_entities(os.path.abspath(p)))
    if derived is not None:
        return derived
    name = p.name
    for s in IMAGE_SUFFIXES + (".dcm",):
        if name.lower().endswith(s):
            return name[: -len(s)] or "scan"
    return name or "scan"


def _unique_names(paths: list[Path]) -> list[str]:
    names = [output_name(p) for p in paths]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out = []
    for p, n in zip(paths, names, strict=True):
        if counts[n] > 1:  # e.g. sub-01 of two sites: a hash of the path, before a BIDS suffix
            digest = hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]
            n = f"{n[:-4]}_hash-{digest}_T1w" if n.endswith("_T1w") else f"{n}_{digest}"
        out.append(n)
    return out


def _fingerprint(path: Path) -> dict:
    try:
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.is_file())
            return {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
        st = path.stat()
        return {"bytes": st.st_size, "mtime": round(st.st_mtime, 3)}
    except OSError:
        return {}


def _settings(dof: int, n4: bool) -> dict:
    return {"version": RECORD_VERSION, "dof": int(dof), "n4": bool(n4)}


def _paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {
        "output": out_dir / f"{name}.nii.gz",
        "transform": out_dir / f"{name}.tfm",
        "qc": out_dir / f"{name}_qc.png",
        "record": out_dir / f"{name}.json",
    }


def _digest(path: Path) -> dict:
    """Size and sha256 of a file, as the record keeps them."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _changed_outputs(files: dict[str, Path], record: dict) -> list[str]:
    """Outputs whose size or sha256 differ from the record (or are missing, or were never recorded)."""
    recorded = record.get("files") or {}
    changed = []
    for key in _CHECKED:
        try:
            same = key in recorded and _digest(files[key]) == recorded[key]
        except OSError:
            same = False
        if not same:
            changed.append(files[key].name)
    return changed


def _done(path: Path, files: dict[str, Path], settings: dict) -> dict | None:
    """The record of an earlier preparation of ``path`` with these settings, if its outputs are intact.

    Intact: each output has the size and sha256 recorded when it was written; a mismatch (e.g. an output
    truncated after the run) is logged and the scan is prepared again.
    """
    try:
        record = json.loads(files["record"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        record.get("input") != os.path.abspath(path)
        or record.get("settings") != settings
        or record.get("fingerprint") != _fingerprint(path)
    ):
        return None
    changed = _changed_outputs(files, record)
    if changed:
        log.warning(
            "%s: prepared earlier, but %s no longer match(es) the size/sha256 recorded in %s; preparing "
            "it again",
            path,
            ", ".join(changed),
            files["record"].name,
        )
        return None
    return record


def _write_outputs(data: np.ndarray, transform, files: dict[str, Path]) -> None:
    img = nib.Nifti1Image(data.astype(np.float32), TEMPLATE_AFFINE)
    img.header.set_xyzt_units("mm")
    img.set_qform(TEMPLATE_AFFINE, code=4)
    img.set_sform(TEMPLATE_AFFINE, code=4)
    with atomic_path(files["output"]) as tmp:
        nib.save(img, tmp)
    with atomic_path(files["transform"]) as tmp:
        sitk.WriteTransform(transform, str(tmp))


def _row(path: Path, files: dict[str, Path], **kw) -> dict:
    row = {c: None for c in MANIFEST_COLUMNS}
    entities = scan_entities(os.path.abspath(path))
    row.update(subject_id=entities.subject_id, session_id=entities.session_id)
    row.update(input=str(path), output=None, transform=None, qc=None, error="", note="", quality="")
    row.update(kw)
    return row


def prepare_scan(
    path: str | PathLike,
    out_dir: str | PathLike,
    *,
    dof: int | None = None,
    n4: bool = False,
    skip_existing: bool = True,
    name: str | None = None,
) -> dict:
    """Prepare one raw scan: register it to the template, resample, mask, write outputs and QC.

    Args:
        path: image file (NIfTI, MGZ, NRRD, MHA) or DICOM series folder.
        out_dir: output folder (created).
        dof: 6, 9 or 12 degrees of freedom (default :data:`~.registration.DEFAULT_DOF`).
        n4: N4 bias-field correction before registration (the output keeps the corrected intensities).
        skip_existing: return at once (status ``skipped``) if ``out_dir`` holds a valid preparation of the
            same file with the same settings.
        name: base name of the outputs (default: the file name without its extension).

    Returns:
        a manifest row (dict with :data:`MANIFEST_COLUMNS`): ``status`` is ``ok``, ``flagged`` (prepared
        but the registration looks poor: see ``note`` and the QC image), ``skipped`` or ``error`` (with
        the reason in ``error``). Never raises for a problem with the scan.
    """
    start = time.perf_counter()
    path = Path(path)
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))  # absolute paths in the manifest
    out_dir.mkdir(parents=True, exist_ok=True)
    dof = DEFAULT_DOF if dof is None else int(dof)
    settings = _settings(dof, n4)
    files = _paths(out_dir, name or output_name(path))
    files["record"].parent.mkdir(parents=True, exist_ok=True)
    done_files = {k: str(v) for k, v in files.items() if k != "record"}
    if skip_existing:
        record = _done(path, files, settings)
        if record is not None:
            return _row(
                path,
                files,
                status="skipped",
                metric=record.get("metric"),
                correlation=record.get("correlation"),
                seconds=round(time.perf_counter() - start, 3),
                quality=record.get("status", ""),
                note=f"prepared earlier ({record.get('status')})"
                + (": " + "; ".join(record["flags"]) if record.get("flags") else ""),
                output_bytes=record["files"]["output"]["bytes"],
                output_sha256=record["files"]["output"]["sha256"],
                **done_files,
            )
    try:
        row = _prepare(path, files, settings, dof, n4, start, time.process_time())
    except Exception as exc:
        msg = str(exc) if isinstance(exc, ScanError) else f"{path}: {type(exc).__name__}: {exc}"
        log.warning("could not prepare %s", msg)
        files["record"].unlink(missing_ok=True)  # an old record must not make a re-run skip this scan
        return _row(path, files, status="error", error=msg, seconds=round(time.perf_counter() - start, 3))
    return row


def _prepare(
    path: Path, files: dict[str, Path], settings: dict, dof: int, n4: bool, start: float, cpu_start: float
) -> dict:

    img = read_scan(path)
    if n4:
        img = n4_correct(img)
    reg = register_to_template(img, dof=dof)
    resampled = resample_to_template_grid(img, reg.transform)
    _, mask_img, _ = template_images()
    mask = sitk.GetArrayFromImage(mask_img).transpose(2, 1, 0) > 0
    unmasked = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    data = unmasked * mask
    if not np.any(data):
        raise ScanError(
            path, "is empty inside the template brain mask after registration (registration failed)"
        )
    status = "flagged" if reg.flagged else "ok"
    files["record"].unlink(missing_ok=True)
    _write_outputs(data, reg.transform, files)
    title = f"{path.name}  dof={dof}  MI={reg.metric:.3f}  corr={reg.correlation:.2f}  {status.upper()}"
    # QC shows the scan *before* masking, so one can see whether the brain's edge follows the outline.
    qc_png(unmasked, mask, files["qc"], title=title, flagged=reg.flagged)
    seconds = round(time.perf_counter() - start, 3)
    digests = {key: _digest(files[key]) for key in _CHECKED}
    record = {
        "input": os.path.abspath(path),
        "files": digests,
        "fingerprint": _fingerprint(path),
        "settings": settings,
        "status": status,
        "flags": reg.flags,
        "metric": reg.metric,
        "correlation": reg.correlation,
        "scales": list(reg.scales),
        "seconds": seconds,
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "template_to_scan_ras": transform_to_ras_matrix(reg.transform).tolist(),
        "convention": "template_to_scan_ras maps template world mm (MNI152 RAS+) to scan world mm (RAS+); "
        "the .tfm holds the same map in ITK's LPS convention",
    }
    atomic_write_json(files["record"], record)
    return _row(
        path,
        files,
        status=status,
        metric=round(reg.metric, 5),
        correlation=round(reg.correlation, 4),
        seconds=seconds,
        quality=status,
        note="; ".join(reg.flags),
        output_bytes=digests["output"]["bytes"],
        output_sha256=digests["output"]["sha256"],
        **{k: str(v) for k, v in files.items() if k != "record"},
    )


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))


def _manifest(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    table["output_bytes"] = table["output_bytes"].astype("Int64")  # empty for errors, not a float
    return table


def _write_manifest(rows: list[dict], out_dir: Path) -> None:
    table = _manifest(rows)
    path = out_dir / "manifest.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _batch_inputs(
    inputs: Iterable[str | PathLike] | str | PathLike, out_dir: str | PathLike, dof: int | None
) -> tuple[list[Path], list[str], Path, int]:
    """The scans ``inputs`` name, their unique output names, the absolute output folder and the checked
    ``dof`` (both engines: :func:`prepare_scans` and :func:`~.jobs.prepare_scans_as_jobs`)."""
    dof = DEFAULT_DOF if dof is None else int(dof)
    if dof not in DOF_CHOICES:
        raise ValueError(f"dof must be one of {DOF_CHOICES}, not {dof!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = find_inputs(inputs)
    return paths, _unique_names(paths), Path(os.path.abspath(Path(out_dir).expanduser())), dof


def prepare_scans(
    inputs: Iterable[str | PathLike] | str | PathLike,
    out_dir: str | PathLike,
    workers: int = 1,
    n4: bool = False,
    dof: int | None = None,
    skip_existing: bool = True,
    progress: bool = True,
    threads: int | None = None,
) -> pd.DataFrame:
    """Prepare a batch of raw scans (see the module docstring for the files written).

    Args:
        inputs: files, folders (recursive; BIDS ``*_T1w`` files; DICOM folders) and/or CSVs with ``image``.
        out_dir: output folder (created); ``manifest.csv`` and ``qc.html`` are written there.
        workers: parallel processes (1 = in this process).
        n4: N4 bias-field correction before registration.
        dof: 6, 9 or 12 (default :data:`~.registration.DEFAULT_DOF`).
        skip_existing: skip scans already prepared (valid outputs, same input file and settings).
        progress: tqdm progress bar.
        threads: SimpleITK threads per worker (default: CPU cores / workers).

    Returns:
        the manifest (one row per scan, input order) as a DataFrame with :data:`MANIFEST_COLUMNS`.
    """
    paths, names, out_dir, dof = _batch_inputs(inputs, out_dir, dof)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(int(workers), len(paths) or 1))
    threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // workers)
    template_images()  # derive and cache the template files once, before any worker needs them
    rows: list[dict | None] = [None] * len(paths)
    kwargs = {"dof": dof, "n4": n4, "skip_existing": skip_existing}
    bar = tqdm(total=len(paths), desc="prepare", unit="scan", disable=not progress)
    try:
        if workers == 1:
            old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            _init_worker(threads)
            try:
                for i, (p, n) in enumerate(zip(paths, names, strict=True)):
                    rows[i] = prepare_scan(p, out_dir, name=n, **kwargs)
                    bar.update()
            finally:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
        else:
            with ProcessPoolExecutor(
                max_workers=workers, initializer=_init_worker, initargs=(threads,)
            ) as ex:
                futures = {
                    ex.submit(prepare_scan, p, out_dir, name=n, **kwargs): i
                    for i, (p, n) in enumerate(zip(paths, names, strict=True))
                }
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        rows[i] = fut.result()
                    except Exception as exc:  # a crashed worker process
                        rows[i] = _row(
                            paths[i],
                            {},
                            status="error",
                            error=f"{paths[i]}: worker failed: {type(exc).__name__}: {exc}",
                        )
                    bar.update()
    finally:
        bar.close()
    return _finish_batch([r for r in rows if r is not None], out_dir)


def _finish_batch(done: list[dict], out_dir: Path) -> pd.DataFrame:
    """Write a batch's ``manifest.csv`` and ``qc.html`` (both engines); the manifest as a DataFrame."""
    _write_manifest(done, out_dir)
    write_overview(done, out_dir / "qc.html")
    table = _manifest(done)
    counts = table["status"].value_counts().to_dict()
    log.info("prepared %d scan(s) into %s: %s", len(table), out_dir, counts)
    return table
