"""Inference inputs: a folder, a glob or a CSV of scans (template space, or raw with ``--prepare``)."""

from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path

import pandas as pd

from mri_slice_transfer.data.bids import bids_t1w_files, scan_entities
from mri_slice_transfer.engine.options import as_bool, as_optional
from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.vocabulary import IMAGE_SUFFIXES, Task, task_spec

__all__ = ["SCAN_SUFFIXES", "resolve_inputs", "run_name"]

#: File endings of scan files a folder input contributes (lower case): every format ``prepare`` reads
#: (:data:`mri_slice_transfer.vocabulary.IMAGE_SUFFIXES`).
SCAN_SUFFIXES = IMAGE_SUFFIXES


def run_name(source: str) -> str:
    """A stable short name of an inference input, for its output names: ``<stem>-<hash8>``.

    ``stem`` is the input folder's name (a glob: the folder of its pattern; a CSV: its file name without
    ``.csv``), ``hash8`` the first 8 hex digits of the sha256 of the input's absolute path, so two sites
    whose folders or files share names still get different outputs, and a re-run of one input the same.

    Args:
        source: the inference input as given (folder, glob or CSV).

    Returns:
        e.g. ``"site1-3f2a9c1b"`` for ``/data/site1``.

    Raises:
        ValueError: no source.
    """
    if not source:
        raise ValueError("no inference input: set --input to a folder, a glob pattern or a CSV file")
    path = os.path.abspath(Path(str(source)).expanduser())
    plain = Path(path)
    while glob.has_magic(plain.name) and plain.parent != plain:
        plain = plain.parent
    stem = plain.stem if plain.suffix.lower() == ".csv" else plain.name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "input"
    return f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def _is_scan_name(name: str) -> bool:
    """A scan file name: a scan ending, and not hidden (``.`` names include our atomic temp files)."""
    return not name.startswith(".") and name.lower().endswith(SCAN_SUFFIXES)


def _folder_scans(folder: Path, raw: bool) -> list[str]:
    """Scans in ``folder`` and its sub-folders (hidden ones skipped), as absolute paths, sorted.

    Entries with a scan name are kept even when they cannot be read (a dangling symbolic link, a link
    loop), so that they get an error row; symbolic links to folders are not followed. With ``raw``, a
    DICOM series folder (``folder`` itself or any sub-folder) is one scan.
    """
    if raw:
        from mri_slice_transfer.prepare.io import is_dicom_folder  # SimpleITK: only for raw inputs
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        if raw and is_dicom_folder(Path(root)):
            found.append(os.path.abspath(root))
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.abspath(os.path.join(root, f)) for f in files if _is_scan_name(f)]
    return sorted(found)


def _with_entities(image: str, subject: str, session: str) -> dict:
    """A data dict; an empty subject or session is read from the path (:func:`scan_entities`)."""
    if not subject or not session:
        entities = scan_entities(image)
        subject = subject or entities.subject_id
        session = session or (entities.session_id if entities.subject else "")
    return {"image": image, "image_path": image, "subject_id": str(subject), "session_id": str(session)}


def resolve_inputs(source: str, dataset_dir: str | None = None, raw: bool | str = False) -> list[dict]:
    """Data dicts (``image``, ``image_path``, ``subject_id``, ``session_id``) for inference.

    ``subject_id`` / ``session_id`` come from a CSV's columns or else from the scan's path (BIDS
    ``sub-``/``ses-`` entities, UK Biobank and ADNI folders:
    :func:`~mri_slice_transfer.data.bids.scan_entities`).

    Args:
        source: a folder (a BIDS dataset: its ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` files; else the
            scans in it and in its sub-folders, sorted; names starting with ``.``, such
            as temporary files, are skipped), a glob (``"scans/*.nii.gz"``) or a CSV with an ``image``
            column (optional ``subject_id``/``session_id``, and ``age``, which the brain-age
            correction needs and the rows carry as ``age``; relative paths are taken from
            ``dataset_dir`` or else the CSV's folder). Paths are absolute but symbolic links are not
            resolved; files that do not exist or cannot be read (dangling links, link loops) are
            kept so that they get an error row.
        dataset_dir: base folder of a CSV's relative paths (``"null"``: none).
        raw: the scans are raw (``inference.json --prepare true``; a bool or its command-line
            string): a folder then also contributes the DICOM series folders in it (or is itself one
            DICOM series).

    Returns:
        one data dict per scan.

    Raises:
        DataListError: no source, a CSV without an ``image`` column, or nothing found (a
            ``ValueError``; the bundles print it as one line).
    """
    dataset_dir, raw = as_optional(dataset_dir), as_bool(raw)
    if not source:
        raise DataListError(
            ["no inference input: set --input (or --input_dir) to a folder, a glob pattern or a CSV file"]
        )
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "image" not in frame.columns:
            raise DataListError([f"{path}: the CSV needs an 'image' column (found {list(frame.columns)})"])
        base = Path(dataset_dir).expanduser() if dataset_dir else path.parent
        images = [str(p if Path(p).is_absolute() else os.path.abspath(base / p)) for p in frame["image"]]
        subjects = frame["subject_id"].tolist() if "subject_id" in frame else [""] * len(frame)
        sessions = frame["session_id"].tolist() if "session_id" in frame else [""] * len(frame)
        age = task_spec(Task.BRAIN_AGE).label_column
        if age in frame:  # chronological age: the brain-age gap's correction needs it
            rows = [_with_entities(*v) for v in zip(images, subjects, sessions, strict=True)]
            return [{**row, age: value} for row, value in zip(rows, frame[age], strict=True)]
    else:
        if path.is_dir():
            found = [os.path.abspath(p) for p in bids_t1w_files(path)] or _folder_scans(path, raw)
        else:
            found = sorted(os.path.abspath(p) for p in glob.glob(str(path), recursive=True))
        if not found:
            looked = ", ".join(SCAN_SUFFIXES) + (", DICOM series folders" if raw else "")
            raise DataListError([f"no scans found for input {source!r} (looked for {looked})"])
        images, subjects, sessions = found, [""] * len(found), [""] * len(found)
    return [_with_entities(img, sub, ses) for img, sub, ses in zip(images, subjects, sessions, strict=True)]
