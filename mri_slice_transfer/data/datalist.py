"""Data lists: one CSV per split (``train.csv``, ``val.csv``, ``test.csv``), checked up front.

The format is defined in ``docs/data_lists.md``. :func:`read_datalist` and :func:`read_split_datalists`
collect *every* problem (missing columns, bad labels, missing files, duplicates, subjects shared between
splits) and raise one :class:`~mri_slice_transfer.errors.DataListError` naming file and row, so a
researcher fixes all of them in one go instead of one per run.

Rows are reported as ``row N (line L)``: ``N`` is the 1-based data row (the header is not counted) and
``L`` the line number in the file (the header is line 1, so ``L = N + 1`` unless a quoted field spans
several lines).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from mri_slice_transfer.errors import DataListError

__all__ = [
    "TASKS",
    "TaskSpec",
    "SPLITS",
    "check_subject_leakage",
    "read_datalist",
    "read_split_datalists",
    "subject_leakage_problems",
    "task_spec",
]

#: Split names, in order; each has its own ``<split>.csv``.
SPLITS: tuple[str, ...] = ("train", "val", "test")

REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "image")
OPTIONAL_COLUMNS: tuple[str, ...] = ("session_id", "sex", "site")
SEX_VALUES: tuple[str, ...] = ("M", "F")


@dataclass(frozen=True)
class TaskSpec:
    """What a task's data list must hold.

    Attributes:
        name: task name (``"adni_ad"`` or ``"brain_age"``).
        label_column: column with the label (``dx`` or ``age``).
        kind: ``"binary"`` (categorical label mapped to 0/1) or ``"regression"``.
        classes: for binary tasks, allowed values mapped to the numeric label (``{"CN": 0, "AD": 1}``).
        value_range: for regression tasks, inclusive plausible range of the label.
        description: one line for help texts.
    """

    name: str
    label_column: str
    kind: str
    classes: dict[str, int] | None = None
    value_range: tuple[float, float] | None = None
    description: str = ""


#: The tasks this project knows, by name.
TASKS: dict[str, TaskSpec] = {
    "adni_ad": TaskSpec(
        name="adni_ad",
        label_column="dx",
        kind="binary",
        classes={"CN": 0, "AD": 1},
        description="Alzheimer's disease (AD, label 1) vs cognitively normal (CN, label 0)",
    ),
    "brain_age": TaskSpec(
        name="brain_age",
        label_column="age",
        kind="regression",
        value_range=(0.0, 120.0),
        description="chronological age in years (regression) of healthy subjects",
    ),
}


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``; raises ``ValueError`` naming the known tasks."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}") from None


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


def _check_frame(
    frame: pd.DataFrame,
    name: str,
    spec: TaskSpec,
    root: Path,
    check_files: bool,
    problems: list[str],
) -> pd.DataFrame:
    required = (*REQUIRED_COLUMNS, spec.label_column)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        problems.append(
            f"{name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"(task {spec.name!r} needs {', '.join(required)}; found {', '.join(frame.columns) or 'none'})"
        )
    if len(frame) == 0:
        problems.append(f"{name}: no data rows")
    out = frame.copy()

    if "subject_id" in frame.columns:
        for i in frame.index[frame["subject_id"] == ""]:
            problems.append(f"{name} {_row(i)}: empty subject_id")

    if "image" in frame.columns:
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
        out["image"] = resolved
        nonempty = out[out["image"] != ""]
        for img, group in nonempty.groupby("image", sort=True):
            if len(group) > 1:
                problems.append(
                    f"{name} {_rows(list(group.index))}: the same image is listed more than once ({img})"
                )

    if "session_id" in frame.columns and "subject_id" in frame.columns:
        keyed = frame[(frame["subject_id"] != "") & (frame["session_id"] != "")]
        for (sub, ses), group in keyed.groupby(["subject_id", "session_id"], sort=True):
            if len(group) > 1:
                problems.append(
                    f"{name} {_rows(list(group.index))}: subject {sub!r} session {ses!r} "
                    "is listed more than once"
                )

    if "sex" in frame.columns:
        for i, value in frame["sex"].items():
            if value not in (*SEX_VALUES, ""):
                problems.append(f"{name} {_row(i)}: sex {value!r} is not one of M, F (or empty)")

    col = spec.label_column
    if col in frame.columns:
        labels = []
        for i, value in frame[col].items():
            if spec.kind == "binary":
                assert spec.classes is not None
                if value not in spec.classes:
                    allowed = "/".join(spec.classes)
                    problems.append(f"{name} {_row(i)}: {col} {value!r} is not one of {allowed}")
                    labels.append(math.nan)
                else:
                    labels.append(float(spec.classes[value]))
            else:
                lo, hi = spec.value_range or (-math.inf, math.inf)
                try:
                    number = float(value)
                except ValueError:
                    number = math.nan
                    problems.append(f"{name} {_row(i)}: {col} {value!r} is not a number")
                else:
                    if not math.isfinite(number):
                        problems.append(f"{name} {_row(i)}: {col} {value!r} is not finite")
                        number = math.nan
                    elif not lo <= number <= hi:
                        problems.append(
                            f"{name} {_row(i)}: {col} {value!r} is outside the plausible {lo:g}-{hi:g}"
                        )
                labels.append(number)
        out["label"] = pd.Series(labels, index=frame.index, dtype="float64")
        if spec.kind == "regression":
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
    a subject that appears in more than one split (leakage between training and evaluation).

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

    # Subject-level leakage: a subject may have several scans, but all in one split.
    problems.extend(subject_leakage_problems(frames, {s: str(folder / f"{s}.csv") for s in frames}))

    if problems:
        raise DataListError(problems)
    return frames


def subject_leakage_problems(
    frames: Mapping[str, pd.DataFrame], sources: Mapping[str, str] | None = None
) -> list[str]:
    """The leakage guard: one problem line per subject that appears in more than one split.

    Used by :func:`read_split_datalists` (so by every bundle) and by ``mri-slice-transfer split``
    before it writes anything. Frames without a ``subject_id`` column are skipped; empty subject ids
    are ignored (they are reported by the per-file checks).

    Args:
        frames: ``{split: DataFrame}`` with a ``subject_id`` column; the index is the 0-based data row.
        sources: ``{split: file name}`` used in the messages (default: the split name).

    Returns:
        e.g. ``["subject 's1' appears in more than one split (leakage): train.csv row 1 (line 2) and
        test.csv row 1 (line 2)"]``; empty when no subject is shared.
    """
    where: dict[str, dict[str, list[int]]] = {}
    for split, frame in frames.items():
        if "subject_id" not in frame.columns:
            continue
        for pos, (i, sub) in enumerate(frame["subject_id"].items()):
            if sub != "":
                row = i if isinstance(i, (int, np.integer)) else pos
                where.setdefault(str(sub), {}).setdefault(split, []).append(int(row))
    names = dict(sources or {})
    problems = []
    for sub, by_split in where.items():
        if len(by_split) > 1:
            places = " and ".join(f"{names.get(s, s)} {_rows(idx)}" for s, idx in by_split.items())
            problems.append(f"subject {sub!r} appears in more than one split (leakage): {places}")
    return problems


def check_subject_leakage(
    frames: Mapping[str, pd.DataFrame], sources: Mapping[str, str] | None = None
) -> None:
    """Raise if any subject appears in more than one split (see :func:`subject_leakage_problems`).

    Args:
        frames: ``{split: DataFrame}`` with a ``subject_id`` column.
        sources: ``{split: file name}`` used in the messages (default: the split name).

    Raises:
        DataListError: naming every shared subject and where it appears.
    """
    problems = subject_leakage_problems(frames, sources)
    if problems:
        raise DataListError(problems)
