"""Inference inputs: a folder, a glob or a CSV of scans (template space, or raw with ``--prepare``)."""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

__all__ = ["SCAN_SUFFIXES", "resolve_inputs"]

#: File endings of scan files a folder input contributes (lower case); the raw formats are those that
#: :data:`mri_slice_transfer.prepare.io.IMAGE_SUFFIXES` reads (``.nhdr``/``.mhd``: detached headers).
SCAN_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd")


def _is_scan(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SCAN_SUFFIXES)


def _dicom_series(folder: Path) -> list[str]:
    """``folder`` itself if it is a DICOM series, else the DICOM series folders directly inside it."""
    from mri_slice_transfer.prepare.io import is_dicom_folder  # SimpleITK: only for raw inputs

    if is_dicom_folder(folder):
        return [str(folder.resolve())]
    return [str(p.resolve()) for p in folder.iterdir() if p.is_dir() and is_dicom_folder(p)]


def resolve_inputs(source: str, dataset_dir: str | None = None, raw: bool = False) -> list[dict]:
    """Data dicts (``image``, ``image_path``, ``subject_id``, ``session_id``) for inference.

    Args:
        source: a folder (scans directly inside it, sorted), a glob (``"scans/*.nii.gz"``) or a CSV
            with an ``image`` column (optional ``subject_id``/``session_id``; relative paths are
            taken from ``dataset_dir`` or else the CSV's folder). Files that do not exist are kept
            so that they get an error row.
        raw: the scans are raw (``inference.json --prepare true``): a folder then also contributes
            the DICOM series folders directly inside it (or is itself one DICOM series).
    """
    if not source:
        raise ValueError(
            "no inference input: set --input (or --input_dir) to a folder, a glob pattern or a CSV file"
        )
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "image" not in frame.columns:
            raise ValueError(f"{path}: the CSV needs an 'image' column (found {list(frame.columns)})")
        base = Path(dataset_dir).expanduser() if dataset_dir else path.parent
        images = [str(p if Path(p).is_absolute() else (base / p).resolve()) for p in frame["image"]]
        subjects = frame["subject_id"].tolist() if "subject_id" in frame else [""] * len(frame)
        sessions = frame["session_id"].tolist() if "session_id" in frame else [""] * len(frame)
    else:
        if path.is_dir():
            found = [str(p.resolve()) for p in path.iterdir() if _is_scan(p)]
            found = sorted(found + _dicom_series(path)) if raw else sorted(found)
        else:
            found = sorted(str(Path(p).resolve()) for p in glob.glob(str(path), recursive=True))
        if not found:
            looked = ", ".join(SCAN_SUFFIXES) + (", DICOM series folders" if raw else "")
            raise ValueError(f"no scans found for input {source!r} (looked for {looked})")
        images, subjects, sessions = found, [""] * len(found), [""] * len(found)
    return [
        {"image": img, "image_path": img, "subject_id": str(sub), "session_id": str(ses)}
        for img, sub, ses in zip(images, subjects, sessions, strict=True)
    ]
