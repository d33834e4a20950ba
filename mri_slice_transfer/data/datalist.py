"""Data lists: one CSV per split (``train.csv``, ``val.csv``, ``test.csv``), checked up front.

The format is defined in ``docs/data_lists.md``. :func:`read_datalist` and :func:`read_split_datalists`
collect *every* problem (missing columns, bad labels, missing files, duplicates, subjects or images shared
between splits) and raise one :class:`~mri_slice_transfer.errors.DataListError` naming file and row, so a
researcher fixes all of them in one go instead of one per run.

Rows are reported as ``row N (line L)``: ``N`` is the 1-based data row (the header is not counted) and
``L`` the line number in the file (the header is line 1, so ``L = N + 1`` unless a quoted field spans
several lines).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.fileio import file_sha256
from mri_slice_transfer.vocabulary import TASKS, TaskSpec, task_spec

__all__ = [
    "TASKS",
    "TaskSpec",
    "SPLITS",
    "check_leakage",
    "image_leakage_problems",
    "leakage_problems",
    "read_datalist",
    "read_split_datalists",
    "subject_key",
    "subject_leakage_problems",
    "task_spec",
]

#: Split names, in order; each has its own ``<split>.csv``.
SPLITS: tuple[str, ...] = ("train", "val", "test")

REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "image")
OPTIONAL_COLUMNS: tuple[str, ...] = ("session_id", "sex", "site")
SEX_VALUES: tuple[str, ...] = ("M", "F")


def _row(i: int) -> str:
    """Human-readable location of the 0-based data row ``i``."""
    return f"row {i + 1} (line {i + 2})"


def _rows(idx: Sequence[int]) -> str:
    if len(idx) == 1:
        return _row(idx[0])
    return (
        "rows " + ", ".join(f"{i + 1}" for i in idx) + " (lines " + ", ".join(f"{i + 2}" for i in idx) + ")"
    )


def _read_csv(path: Path, name: str, problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        problems.append(f"{name}: file not found ({path})")
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        problems.append(f"{name}: the file is empty (expected a header line and one row per scan)")
        return None
    except Exception as exc:  # malformed CSV: report and go on with the other files
        problems.append(f"{name}: cannot be read as CSV ({exc})")
        return None
    frame.columns = [str(c).strip() for c in frame.columns]
    for col in frame.columns:
        frame[col] = frame[col].str.strip()
    return frame


def _check_columns(frame: pd.DataFrame, name: str, spec: TaskSpec, problems: list[str]) -> None:
    """Report missing required columns and an empty list."""
    required = (*REQUIRED_COLUMNS, spec.label_column)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        problems.append(
            f"{name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"(task {str(spec.name)!r} needs {', '.join(required)}; "
            f"found {', '.join(frame.columns) or 'none'})"
        )
    if len(frame) == 0:
        problems.append(f"{name}: no data rows")


def _check_subjects(frame: pd.DataFrame, name: str, problems: list[str]) -> None:
    """Report rows with an empty ``subject_id``."""
    if "subject_id" in frame.columns:
        for i in frame.index[frame["subject_id"] == ""]:
            problems.append(f"{name} {_row(i)}: empty subject_id")


def _resolve_images(
    frame: pd.DataFrame, name: str, root: Path, check_files: bool, problems: list[str]
) -> list[str]:
    """Absolute ``image`` paths (``""`` where empty); report empty paths and, if asked, missing files."""
    resolved = []
    for i, value in frame["image"].items():
        if value == "":
            problems.append(f"{name} {_row(i)}: empty image path")
            resolved.append("")
            continue
        p = Path(value).expanduser()
        p = p if p.is_absolute() else root / p
        resolved.append(str(p.resolve()))
        if check_files and not p.is_file():
            problems.append(f"{name} {_row(i)}: image {value!r} not found (looked for {p})")
    return resolved


def _check_duplicate_images(out: pd.DataFrame, name: str, problems: list[str]) -> None:
    """Report an image (resolved path) listed in more than one row."""
    nonempty = out[out["image"] != ""]
    for img, group in nonempty.groupby("image", sort=True):
        if len(group) > 1:
            problems.append(
                f"{name} {_rows(list(group.index))}: the same image is listed more than once ({img})"
            )


def _check_sessions(frame: pd.DataFrame, name: str, problems: list[str]) -> None:
    """Report a (subject, session) pair listed in more than one row."""
    if "session_id" in frame.columns and "subject_id" in frame.columns:
        keyed = frame[(frame["subject_id"] != "") & (frame["session_id"] != "")]
        for (sub, ses), group in keyed.groupby(["subject_id", "session_id"], sort=True):
            if len(group) > 1:
                problems.append(
                    f"{name} {_rows(list(group.index))}: subject {sub!r} session {ses!r} "
                    "is listed more than once"
                )


def _check_sex(frame: pd.DataFrame, name: str, problems: list[str]) -> None:
    """Report ``sex`` values other than M, F or empty."""
    if "sex" in frame.columns:
        for i, value in frame["sex"].items():
            if value not in (*SEX_VALUES, ""):
                problems.append(f"{name} {_row(i)}: sex {value!r} is not one of M, F (or empty)")


def _class_label(value: str, where: str, spec: TaskSpec, problems: list[str]) -> float:
    """A binary task's label as 0/1 (NaN, reported, when not one of the classes)."""
    assert spec.classes is not None
    if value not in spec.classes:
        allowed = "/".join(spec.classes)
        problems.append(f"{where}: {spec.label_column} {value!r} is not one of {allowed}")
        return math.nan
    return float(spec.classes[value])


def _number_label(value: str, where: str, spec: TaskSpec, problems: list[str]) -> float:
    """A regression task's label as a float; not a number, not finite or implausible is reported."""
    col = spec.label_column
    lo, hi = spec.value_range or (-math.inf, math.inf)
    try:
        number = float(value)
    except ValueError:
        problems.append(f"{where}: {col} {value!r} is not a number")
        return math.nan
    if not math.isfinite(number):
        problems.append(f"{where}: {col} {value!r} is not finite")
        return math.nan
    if not lo <= number <= hi:
        problems.append(f"{where}: {col} {value!r} is outside the plausible {lo:g}-{hi:g}")
    return number


def _labels(frame: pd.DataFrame, name: str, spec: TaskSpec, problems: list[str]) -> pd.Series:
    """The float ``label`` column of the task's label column (bad values reported and NaN)."""
    parse = _class_label if spec.is_binary else _number_label
    labels = [
        parse(value, f"{name} {_row(i)}", spec, problems) for i, value in frame[spec.label_column].items()
    ]
    return pd.Series(labels, index=frame.index, dtype="float64")


def _check_frame(
    frame: pd.DataFrame,
    name: str,
    spec: TaskSpec,
    root: Path,
    check_files: bool,
    problems: list[str],
) -> pd.DataFrame:
    """Check one data list's rows, appending every problem to ``problems``, in file order per check.

    Returns:
        a copy with ``image`` resolved to absolute paths and a float ``label`` column.
    """
    _check_columns(frame, name, spec, problems)
    out = frame.copy()
    _check_subjects(frame, name, problems)
    if "image" in frame.columns:
        out["image"] = _resolve_images(frame, name, root, check_files, problems)
        _check_duplicate_images(out, name, problems)
    _check_sessions(frame, name, problems)
    _check_sex(frame, name, problems)
    col = spec.label_column
    if col in frame.columns:
        out["label"] = _labels(frame, name, spec, problems)
        if not spec.is_binary:
            out[col] = out["label"]
    if "age" in out.columns and spec.label_column != "age":
        out["age"] = pd.to_numeric(out["age"], errors="coerce")
    return out


def read_datalist(
    csv_path: str | PathLike,
    task: str,
    dataset_dir: str | PathLike | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    """Read and check one data list CSV.

    Args:
        csv_path: the CSV (one row per scan).
        task: ``"adni_ad"`` or ``"brain_age"`` (see :data:`TASKS`); decides the label column.
        dataset_dir: folder that relative ``image`` paths are relative to (default: the CSV's folder).
        check_files: check that every image exists.

    Returns:
        the rows as a DataFrame (all original columns, ``image`` resolved to an absolute path, and a
        float ``label`` column: AD = 1, CN = 0 for ``adni_ad``; age in years for ``brain_age``).

    Raises:
        DataListError: listing every problem found, each naming the file and the row.
    """
    spec = task_spec(task)
    path = Path(csv_path)
    problems: list[str] = []
    frame = _read_csv(path, str(path), problems)
    if frame is not None:
        root = Path(dataset_dir) if dataset_dir is not None else path.parent
        frame = _check_frame(frame, str(path), spec, root.expanduser().resolve(), check_files, problems)
    if problems or frame is None:
        raise DataListError(problems)
    return frame


def read_split_datalists(
    datalist_dir: str | PathLike,
    task: str,
    dataset_dir: str | PathLike | None = None,
    splits: Sequence[str] = SPLITS,
    check_files: bool = True,
) -> dict[str, pd.DataFrame]:
    """Read ``<datalist_dir>/<split>.csv`` for every split and check them together.

    Besides the per-file checks of :func:`read_datalist`, a missing split file is a problem, and so is
    a subject, an image file or an image's content that appears in more than one split (leakage
    between training and evaluation; see :func:`leakage_problems`).

    Args:
        datalist_dir: folder holding ``train.csv``, ``val.csv``, ``test.csv``.
        task: ``"adni_ad"`` or ``"brain_age"``.
        dataset_dir: folder that relative ``image`` paths are relative to (default: ``datalist_dir``).
        splits: which splits to read.
        check_files: check that every image exists.

    Returns:
        ``{split: DataFrame}`` as returned by :func:`read_datalist`.

    Raises:
        DataListError: every problem in every file, raised once.
    """
    spec = task_spec(task)
    folder = Path(datalist_dir)
    root = (Path(dataset_dir) if dataset_dir is not None else folder).expanduser().resolve()
    problems: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    for split in splits:
        path = folder / f"{split}.csv"
        frame = _read_csv(path, str(path), problems)
        if frame is not None:
            frames[split] = _check_frame(frame, str(path), spec, root, check_files, problems)

    # Leakage: a subject may have several scans, but all in one split; an image file (or its content) too.
    problems.extend(leakage_problems(frames, {s: str(folder / f"{s}.csv") for s in frames}))

    if problems:
        raise DataListError(problems)
    return frames


def subject_key(subject_id: object) -> str:
    """How subject ids are compared across splits: ``sub-0003`` and ``SUB-0003`` are one subject.

    Args:
        subject_id: a subject id as written in a data list.

    Returns:
        the id stripped of surrounding white space and case-folded.
    """
    return str(subject_id).strip().casefold()


def _located(frames: Mapping[str, pd.DataFrame], column: str) -> dict[str, list[tuple[int, str]]]:
    """``{split: [(0-based data row, value), ...]}`` of the non-empty cells of ``column``."""
    out: dict[str, list[tuple[int, str]]] = {}
    for split, frame in frames.items():
        if column not in frame.columns:
            continue
        for pos, (i, value) in enumerate(frame[column].items()):
            if str(value) != "":
                row = i if isinstance(i, (int, np.integer)) else pos
                out.setdefault(split, []).append((int(row), str(value)))
    return out


def _places(by_split: Mapping[str, Sequence[int]], names: Mapping[str, str]) -> str:
    return " and ".join(f"{names.get(s, s)} {_rows(sorted(idx))}" for s, idx in by_split.items())


def subject_leakage_problems(
    frames: Mapping[str, pd.DataFrame], sources: Mapping[str, str] | None = None
) -> list[str]:
    """One problem line per subject that appears in more than one split.

    Subject ids are compared with :func:`subject_key` (ignoring case), and the message spells out the
    differing spellings. Frames without a ``subject_id`` column are skipped; empty subject ids are
    ignored (they are reported by the per-file checks).

    Args:
        frames: ``{split: DataFrame}`` with a ``subject_id`` column; the index is the 0-based data row.
        sources: ``{split: file name}`` used in the messages (default: the split name).

    Returns:
        e.g. ``["subject 's1' appears in more than one split (leakage): train.csv row 1 (line 2) and
        test.csv row 1 (line 2)"]``; empty when no subject is shared.
    """
    where: dict[str, dict[str, list[int]]] = {}
    spellings: dict[str, dict[str, None]] = {}
    for split, cells in _located(frames, "subject_id").items():
        for row, sub in cells:
            key = subject_key(sub)
            where.setdefault(key, {}).setdefault(split, []).append(row)
            spellings.setdefault(key, {})[sub] = None
    names = dict(sources or {})
    problems = []
    for key, by_split in where.items():
        if len(by_split) > 1:
            spelled = list(spellings[key])
            note = ""
            if len(spelled) > 1:
                note = (
                    f"; ids are compared ignoring case, so {' and '.join(map(repr, spelled))} are one subject"
                )
            problems.append(
                f"subject {spelled[0]!r} appears in more than one split (leakage{note}): "
                f"{_places(by_split, names)}"
            )
    return problems


#: The quick content digest reads this many blocks of :data:`_QUICK_BLOCK` bytes, evenly spread over
#: the file (header, brain and background alike); a full sha256 follows only where quick digests match.
_QUICK_BLOCKS = 16
_QUICK_BLOCK = 4096


def _digest(path: str, quick: bool) -> str:
    """sha256 of the whole file, or (``quick``) of its size and :data:`_QUICK_BLOCKS` sampled blocks."""
    if not quick:
        return file_sha256(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        last = max(size - _QUICK_BLOCK, 0)
        for k in range(_QUICK_BLOCKS):
            f.seek(last * k // (_QUICK_BLOCKS - 1))
            h.update(f.read(_QUICK_BLOCK))
    return h.hexdigest()


def _by_digest(paths: Sequence[str], quick: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in paths:
        out.setdefault(_digest(p, quick), []).append(p)
    return out


def _same_content(paths: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Groups of >= 2 of ``paths`` (distinct, existing files) with identical, non-empty bytes.

    Cheap: files are grouped by size first; only equal sizes are read (a quick digest of 16 sampled
    4 KiB blocks, then a full sha256 where that matches).

    Returns:
        ``[(sha256, [path, ...]), ...]``.
    """
    by_size: dict[int, list[str]] = {}
    for p in paths:
        by_size.setdefault(os.path.getsize(p), []).append(p)
    sized = [g for size, g in by_size.items() if size > 0 and len(g) > 1]
    quick = [g for group in sized for g in _by_digest(group, quick=True).values() if len(g) > 1]
    return [(h, g) for group in quick for h, g in _by_digest(group, quick=False).items() if len(g) > 1]


def image_leakage_problems(
    frames: Mapping[str, pd.DataFrame], sources: Mapping[str, str] | None = None
) -> list[str]:
    """One problem line per image file, or per identical file content, in more than one split.

    Paths are compared as the loader opens them (:func:`os.path.realpath` of the ``image`` cell, which
    :func:`read_split_datalists` has already made absolute): ``./images/x.nii.gz``, ``images/x.nii.gz``
    and a symlink to it are one file. Files with identical bytes under different names are found by
    size, then hash (see :func:`_same_content`); missing and empty files are skipped (the per-file
    checks and the loader report them).

    Args:
        frames: ``{split: DataFrame}`` with an ``image`` column; the index is the 0-based data row.
        sources: ``{split: file name}`` used in the messages (default: the split name).

    Returns:
        one line per shared file, naming every row in every file; empty when nothing is shared.
    """
    where: dict[str, dict[str, list[int]]] = {}
    for split, cells in _located(frames, "image").items():
        for row, image in cells:
            path = os.path.realpath(image) if os.path.isabs(image) else os.path.normpath(image)
            where.setdefault(path, {}).setdefault(split, []).append(row)
    names = dict(sources or {})
    problems = [
        f"image {path} is listed in more than one split (leakage): {_places(by_split, names)}"
        for path, by_split in where.items()
        if len(by_split) > 1
    ]
    files = [p for p in where if os.path.isfile(p)]
    for digest, same in _same_content(files):
        if len({s for p in same for s in where[p]}) > 1:
            places = " and ".join(
                f"{names.get(s, s)} {_rows(sorted(idx))} ({p})" for p in same for s, idx in where[p].items()
            )
            problems.append(
                "identical image content under different file names in more than one split "
                f"(leakage; same size and sha256 {digest[:12]}...): {places}"
            )
    return problems


def leakage_problems(
    frames: Mapping[str, pd.DataFrame], sources: Mapping[str, str] | None = None
) -> list[str]:
    """The leakage guard: :func:`subject_leakage_problems` and :func:`image_leakage_problems`.

    Used by :func:`read_split_datalists` (so by every bundle) and by ``mri-slice-transfer split``
    before it writes anything.

    Args:
        frames: ``{split: DataFrame}`` with ``subject_id`` and ``image`` columns.
        sources: ``{split: file name}`` used in the messages (default: the split name).

    Returns:
        every shared subject, image file and image content, each naming its rows in every file.
    """
    return subject_leakage_problems(frames, sources) + image_leakage_problems(frames, sources)


def check_leakage(frames: Mapping[str, pd.DataFrame], sources: Mapping[str, str] | None = None) -> None:
    """Raise if a subject, an image file or an image's content is in more than one split.

    Args:
        frames: ``{split: DataFrame}`` with ``subject_id`` and ``image`` columns.
        sources: ``{split: file name}`` used in the messages (default: the split name).

    Raises:
        DataListError: naming every shared subject or image and where it appears
            (see :func:`leakage_problems`).
    """
    problems = leakage_problems(frames, sources)
    if problems:
        raise DataListError(problems)
