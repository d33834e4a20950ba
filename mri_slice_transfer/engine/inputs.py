"""Inference inputs: a folder, a glob pattern or a CSV of scans already in template (MNI) space."""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

__all__ = ["SCAN_SUFFIXES", "resolve_inputs"]

SCAN_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".mha", ".mhd")


def _is_scan(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SCAN_SUFFIXES)


def resolve_inputs(source: str, dataset_dir: str | None = None) -> list[dict]:
    """Data dicts (``image``, ``image_path``, ``subject_id``, ``session_id``) for inference.

    Args:
        source: a folder (scans directly inside it, sorted), a glob (``"scans/*.nii.gz"``) or a CSV
            with an ``image`` column (optional ``subject_id``/``session_id``; relative paths are
            taken from ``dataset_dir`` or else the CSV's folder). Files that do not exist are kept
            so that they get an error row.
    """
    if not source:
        raise ValueError("no inference input: set --input to a folder, a glob pattern or a CSV file")
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
            found = sorted(str(p.resolve()) for p in path.iterdir() if _is_scan(p))
        else:
            found = sorted(str(Path(p).resolve()) for p in glob.glob(str(path), recursive=True))
        if not found:
            raise ValueError(f"no scans found for input {source!r} (looked for {', '.join(SCAN_SUFFIXES)})")
        images, subjects, sessions = found, [""] * len(found), [""] * len(found)
    return [
        {"image": img, "image_path": img, "subject_id": str(sub), "session_id": str(ses)}
        for img, sub, ses in zip(images, subjects, sessions, strict=True)
    ]
