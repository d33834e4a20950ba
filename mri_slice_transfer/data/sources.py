"""Data lists from real folders: scans + clinical tables -> one CSV of all scans for ``split``.

Three sources of scans, one row each with ``subject_id``, ``session_id`` and ``image``:

- :func:`scans_from_bids`: a BIDS dataset (``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``), with the columns of
  its ``participants.tsv`` and of each ``sub-*/sub-*_sessions.tsv`` (per-session values such as age
  win over per-subject ones);
- :func:`scans_from_manifest`: ``prepare``'s ``manifest.csv`` (the prepared images; failed
  preparations are dropped with their error);
- :func:`scans_from_pattern`: any folder, with a path template such as
  ``{subject}_20252_{session}/T1/T1_brain_to_MNI.nii.gz`` (``{subject}``, ``{session}``, ``*`` within one
  folder name, ``**`` across folders).

:func:`build_datalist` then joins a clinical table (ids matched with
:func:`~mri_slice_transfer.data.bids.join_key`), maps its labels (``Dementia=AD``) onto the task's
classes (:class:`~mri_slice_transfer.vocabulary.TaskSpec`), and drops every scan it cannot label,
with the reason, into a second CSV. The data list is checked with
:func:`~mri_slice_transfer.data.datalist.read_datalist` before it is written (atomically).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import pandas as pd

from mri_slice_transfer.data.bids import bids_t1w_files, join_key, scan_entities
from mri_slice_transfer.data.datalist import SEX_VALUES, read_datalist
from mri_slice_transfer.fileio import atomic_path
from mri_slice_transfer.vocabulary import TaskSpec, task_spec

__all__ = [
    "DROPPED_COLUMNS",
    "Clinical",
    "DatalistResult",
    "build_datalist",
    "clinical_table",
    "format_datalist_summary",
    "parse_mapping",
    "read_table",
    "scans_from_bids",
    "scans_from_manifest",
    "scans_from_pattern",
]

#: Columns of the dropped-rows CSV: the scan, a short ``problem`` (grouped in the summary) and the
#: full ``reason``.
DROPPED_COLUMNS: tuple[str, ...] = ("subject_id", "session_id", "image", "problem", "reason")
#: Columns the clinical table's subject id is looked for in, in order, when none is named.
SUBJECT_COLUMNS: tuple[str, ...] = ("participant_id", "subject_id", "PTID", "eid", "RID")
#: ``prepare`` manifest statuses whose ``output`` is a usable scan.
_PREPARED = ("ok", "flagged", "skipped")
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


def read_table(path: str | PathLike) -> pd.DataFrame:
    """A CSV or TSV (``.tsv``, BIDS) as text cells; BIDS ``n/a`` and empty cells become ``""``.

    Args:
        path: the table.

    Returns:
        the table, every cell a stripped string.

    Raises:
        ValueError: the file is missing or cannot be read, naming it.
    """
    p = Path(path)
    sep = "\t" if p.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{p}: cannot be read as a {'TSV' if sep == chr(9) else 'CSV'} table ({exc})"
        ) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.strip().replace("n/a", ""))


def _scan_rows(images: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for image in images:
        e = scan_entities(os.path.abspath(image))
        rows.append({"subject_id": e.subject_id, "session_id": e.session_id, "image": os.path.abspath(image)})
    return pd.DataFrame(rows, columns=["subject_id", "session_id", "image"])


def _merge(scans: pd.DataFrame, table: pd.DataFrame, keys: Mapping[str, str]) -> pd.DataFrame:
    """``scans`` with ``table``'s other columns, joined on ``{scan column: table column}`` by join key.

    A column ``scans`` already has keeps its non-empty values; ``table`` fills the empty ones.
    """
    on = [f"_k{i}" for i in range(len(keys))]
    left = scans.assign(**{k: scans[c].map(join_key) for k, c in zip(on, keys, strict=True)})
    right = table.assign(**{k: table[c].map(join_key) for k, c in zip(on, keys.values(), strict=True)})
    right = right.drop(columns=[c for c in keys.values() if c not in on]).drop_duplicates(on)
    right = right.drop(columns=[c for c in keys if c in right.columns])
    merged = left.merge(right, how="left", on=on, suffixes=("", "_table")).fillna("")
    for col in [c for c in right.columns if c in scans.columns]:
        merged[col] = merged[col].where(merged[col] != "", merged[f"{col}_table"])
        merged = merged.drop(columns=f"{col}_table")
    return merged.drop(columns=on)


def scans_from_bids(root: str | PathLike) -> pd.DataFrame:
    """The T1w scans of a BIDS dataset with its ``participants.tsv`` and ``sub-*_sessions.tsv`` columns.

    Args:
        root: the dataset's folder.

    Returns:
        ``subject_id`` (``sub-01``), ``session_id`` (``ses-bl`` or ``""``), ``image`` (absolute), then
        the tables' columns (a sessions file's value wins over participants.tsv's of the same name).

    Raises:
        ValueError: no ``*_T1w`` scans under ``root``.
    """
    folder = Path(root)
    images = bids_t1w_files(folder)
    if not images:
        raise ValueError(f"{folder}: no BIDS T1w scans (sub-*/[ses-*/]anat/*_T1w.nii[.gz]) found")
    scans = _scan_rows(images)
    sessions = [
        read_table(p).assign(_sub=p.parent.name) for p in sorted(folder.glob("sub-*/sub-*_sessions.tsv"))
    ]
    sessions = [t for t in sessions if "session_id" in t.columns]
    if sessions:
        table = pd.concat(sessions, ignore_index=True)
        scans = _merge(scans, table, {"subject_id": "_sub", "session_id": "session_id"})
    participants = folder / "participants.tsv"
    if participants.is_file():
        table = read_table(participants)
        if "participant_id" not in table.columns:
            raise ValueError(f"{participants}: no 'participant_id' column (found {', '.join(table.columns)})")
        scans = _merge(scans, table, {"subject_id": "participant_id"})
    return scans


def scans_from_manifest(manifest: str | PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The prepared scans of ``prepare``'s ``manifest.csv``, and the inputs whose preparation failed.

    Args:
        manifest: the manifest (its ``output`` paths are used; subject and session from its
            ``subject_id`` / ``session_id`` columns, or from the input's path for older manifests,
            whose relative ``output`` paths are taken from the current folder, where ``prepare`` ran).

    Returns:
        ``(scans, dropped)``: scans as :func:`scans_from_bids` (without table columns) plus
        ``prepare_status``; dropped rows with :data:`DROPPED_COLUMNS`.
    """
    table = read_table(manifest)
    missing = [c for c in ("input", "output", "status") if c not in table.columns]
    if missing:
        raise ValueError(f"{manifest}: not a prepare manifest (missing column(s) {', '.join(missing)})")
    rows, dropped = [], []
    for _, r in table.iterrows():
        e = scan_entities(r["input"])
        sub = r.get("subject_id", "") or e.subject_id
        ses = r.get("session_id", "") or e.session_id
        if r["status"] in _PREPARED and r["output"]:
            image = os.path.abspath(r["output"])  # older manifests: relative to where prepare ran
            rows.append({"subject_id": sub, "session_id": ses, "image": image, "prepare_status": r["status"]})
        else:
            reason = f"preparation of {r['input']} failed: {r.get('error', '') or r['status']}"
            dropped.append(
                {
                    "subject_id": sub,
                    "session_id": ses,
                    "image": r["input"],
                    "problem": "preparation failed",
                    "reason": reason,
                }
            )
    return pd.DataFrame(rows, columns=["subject_id", "session_id", "image", "prepare_status"]), pd.DataFrame(
        dropped, columns=list(DROPPED_COLUMNS)
    )


def _pattern_regex(pattern: str) -> re.Pattern:
    """``{subject}``/``{session}`` -> named groups, ``**`` -> any folders, ``*`` -> within one name."""
    if "{subject}" not in pattern:
        raise ValueError(f"pattern {pattern!r} must contain {{subject}} (and may contain {{session}})")
    out = []
    for token in re.split(r"(\{subject\}|\{session\}|\*\*/?|\*)", pattern.strip("/")):
        if token in ("{subject}", "{session}"):
            name = token[1:-1]
            out.append(f"(?P<{name}>[^/]+?)" if f"(?P<{name}>" not in "".join(out) else f"(?P={name})")
        elif token.startswith("**"):
            out.append("(?:.*/)?" if token.endswith("/") else ".*")
        elif token == "*":
            out.append("[^/]*")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


def scans_from_pattern(folder: str | PathLike, pattern: str) -> pd.DataFrame:
    """The files under ``folder`` whose relative path matches ``pattern``, with its subject and session.

    Args:
        folder: the data folder.
        pattern: a path template relative to ``folder``, e.g. ``"{subject}/{session}/t1_mni.nii.gz"`` or
            ``"{subject}_20252_{session}/T1/T1_brain_to_MNI.nii.gz"``: ``{subject}`` (required) and
            ``{session}`` match one folder or file name part, ``*`` any characters within a name,
            ``**/`` any number of folders. Hidden files and folders are skipped.

    Returns:
        ``subject_id``, ``session_id``, ``image`` (absolute), sorted by path; ids as they appear in the
        path.

    Raises:
        ValueError: no ``{subject}`` in the pattern, or no file matches.
    """
    regex = _pattern_regex(pattern)
    root = Path(folder)
    rows = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            rel = Path(dirpath, name).relative_to(root).as_posix()
            m = regex.fullmatch(rel)
            if m:
                session = m.groupdict().get("session") or ""
                rows.append(
                    {"subject_id": m["subject"], "session_id": session, "image": os.path.abspath(root / rel)}
                )
    if not rows:
        raise ValueError(f"no file under {root} matches the pattern {pattern!r}")
    return pd.DataFrame(rows, columns=["subject_id", "session_id", "image"])


def parse_mapping(text: str | None) -> dict[str, str]:
    """``"Dementia=AD,CN=CN"`` -> ``{"Dementia": "AD", "CN": "CN"}`` (the ``--map`` option).

    Args:
        text: comma-separated ``value=label`` pairs, or None / ``""``.

    Returns:
        the mapping (empty for no text).

    Raises:
        ValueError: a pair without ``=``, naming it.
    """
    mapping: dict[str, str] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        if "=" not in pair:
            raise ValueError(f"--map must be value=label pairs separated by commas, not {pair.strip()!r}")
        value, label = pair.split("=", 1)
        mapping[value.strip()] = label.strip()
    return mapping


def _column(frame: pd.DataFrame, name: str | None) -> str | None:
    """The column of ``frame`` named ``name``, ignoring case (None when absent or no name)."""
    if not name:
        return None
    by_fold = {str(c).casefold(): c for c in frame.columns}
    return by_fold.get(name.casefold())


@dataclass(frozen=True)
class Clinical:
    """A clinical table and how to join it: ``subject`` (and ``session``) id columns of ``table``.

    With ``max_days``, ``session`` holds dates (e.g. ADNIMERGE's ``EXAMDATE``) and a scan whose session
    label is its acquisition date (``ses-20060418``) takes the row of its subject with the nearest date
    at most ``max_days`` away.
    """

    table: pd.DataFrame
    name: str
    subject: str
    session: str | None = None
    max_days: int | None = None


def clinical_table(
    path: str | PathLike,
    subject_column: str | None = None,
    session_column: str | None = None,
    max_days: int | None = None,
) -> Clinical:
    """Read a clinical table (CSV or TSV) and find its id columns.

    Args:
        path: the table (e.g. ADNIMERGE.csv, participants.tsv, a UK Biobank export).
        subject_column: its subject id column (default: the first of :data:`SUBJECT_COLUMNS` present).
        session_column: its session / visit column, to join per session (default: per subject).
        max_days: join each scan to the row with the nearest date in ``session_column`` (at most this
            many days from the scan's session date); see :class:`Clinical`.

    Returns:
        the table with its join columns.

    Raises:
        ValueError: a named column is missing, or no subject column is found.
    """
    table = read_table(path)
    found = [c for c in ((subject_column,) if subject_column else SUBJECT_COLUMNS) if _column(table, c)]
    if not found:
        wanted = subject_column or " / ".join(SUBJECT_COLUMNS)
        raise ValueError(
            f"{path}: no subject column {wanted} (found {', '.join(table.columns)}); set --subject-column"
        )
    session = _column(table, session_column)
    if session_column and session is None:
        raise ValueError(f"{path}: no session column {session_column!r} (found {', '.join(table.columns)})")
    if max_days is not None and session is None:
        raise ValueError(f"max_days needs a session column of dates (e.g. EXAMDATE), not {session_column!r}")
    return Clinical(table, str(path), str(_column(table, found[0])), session, max_days)


def _nearest_sessions(scans: pd.DataFrame, clinical: Clinical) -> pd.Series:
    """Per scan, the clinical ``session`` cell of its subject's row with the nearest date (or ``""``)."""
    assert clinical.session is not None and clinical.max_days is not None
    table = clinical.table
    dates = pd.to_datetime(table[clinical.session], errors="coerce", format="mixed")
    by_subject = pd.DataFrame(
        {"k": table[clinical.subject].map(join_key), "d": dates, "s": table[clinical.session]}
    )
    by_subject = by_subject.dropna(subset=["d"]).groupby("k")
    scan_dates = pd.to_datetime(scans["session_id"].map(join_key), errors="coerce", format="%Y%m%d")
    out = []
    for sub, when in zip(scans["subject_id"].map(join_key), scan_dates, strict=True):
        if pd.isna(when) or sub not in by_subject.groups:
            out.append("")
            continue
        rows = by_subject.get_group(sub)
        gap = (rows["d"] - when).abs()
        out.append(rows["s"].loc[gap.idxmin()] if gap.min().days <= clinical.max_days else "")
    return pd.Series(out, index=scans.index)


def _join_clinical(scans: pd.DataFrame, clinical: Clinical, columns: Sequence[str]) -> pd.DataFrame:
    """Add ``columns`` of the clinical table to ``scans``; ``_problem``/``_reason`` for unjoined scans."""
    keys = {"subject_id": clinical.subject} | ({"session_id": clinical.session} if clinical.session else {})
    if clinical.max_days is not None:
        scans = scans.assign(_visit=_nearest_sessions(scans, clinical))
        keys = {"subject_id": clinical.subject, "_visit": str(clinical.session)}
    used = [c for c in dict.fromkeys(columns) if c in clinical.table.columns]
    table = clinical.table[list(dict.fromkeys([*keys.values(), *used]))].copy()
    table["_key"] = list(zip(*(table[c].map(join_key) for c in keys.values()), strict=True))
    table = table.drop_duplicates(["_key", *used])
    counts = table["_key"].value_counts()
    out = scans.drop(columns=[c for c in used if c in scans.columns])
    out_key = list(zip(*(out[c].map(join_key) for c in keys), strict=True))
    values = table.drop_duplicates("_key").set_index("_key")[used]
    unique = {k for k, n in counts.items() if n == 1}
    for col in used:
        out[col] = [values.at[k, col] if k in unique else "" for k in out_key]
    ids = " ".join(keys).replace("_visit", "session_id")
    for i, k in zip(out.index, out_key, strict=True):
        n = int(counts.get(k, 0))
        if n != 1:
            out.at[i, "_problem"] = "no clinical row" if n == 0 else "ambiguous clinical rows"
            out.at[i, "_reason"] = (
                f"no row of {clinical.name} for {ids} {'/'.join(k)}"
                + (f" (dated within {clinical.max_days} days)" if clinical.max_days is not None else "")
                if n == 0
                else f"{n} rows of {clinical.name} for {ids} {'/'.join(k)} differ in {', '.join(used)}"
                + ("" if clinical.session else "; join per session with --session-column")
            )
    return out.drop(columns=["_visit"], errors="ignore")


def _label(value: str, spec: TaskSpec, column: str, mapping: Mapping[str, str]) -> tuple[str, str, str]:
    """``(label, problem, reason)`` of one scan's label cell (label ``""`` when it cannot be used)."""
    if value == "":
        return "", "unlabeled", f"no {column} value"
    if spec.is_binary:
        assert spec.classes is not None
        label = mapping.get(value, value)
        if label not in spec.classes:
            mapped = f" (mapped to {label!r} by --map)" if value in mapping else ""
            allowed = "/".join(spec.classes)
            return "", f"{column} not {allowed}", f"{column} {value!r}{mapped} is not one of {allowed}"
        return label, "", ""
    lo, hi = spec.value_range or (-math.inf, math.inf)
    try:
        number = float(value)
    except ValueError:
        return "", f"{column} not a number", f"{column} {value!r} is not a number"
    if not (math.isfinite(number) and lo <= number <= hi):
        return "", f"{column} implausible", f"{column} {value!r} is outside the plausible {lo:g}-{hi:g}"
    return value, "", ""


@dataclass(frozen=True)
class DatalistResult:
    """What :func:`build_datalist` wrote.

    Attributes:
        rows: the data list (one row per labelled scan).
        dropped: the scans left out, with :data:`DROPPED_COLUMNS`.
        task: the task's spec.
        out: the data-list CSV.
        dropped_csv: the CSV of dropped scans.
    """

    rows: pd.DataFrame
    dropped: pd.DataFrame
    task: TaskSpec
    out: Path
    dropped_csv: Path


def _sex(value: str) -> str:
    return value if value in SEX_VALUES else _SEX.get(value.casefold(), "")


def _duplicates(frame: pd.DataFrame) -> None:
    """Mark every T1w of a (subject, session) after the first (e.g. ``run-2``) as dropped."""
    keyed = frame[(frame["_problem"] == "") & (frame["session_id"] != "")]
    first = keyed.groupby(["subject_id", "session_id"], sort=False)["image"].transform("first")
    later = first.index[keyed.duplicated(["subject_id", "session_id"])]
    frame.loc[later, "_problem"] = "another scan of the session"
    frame.loc[later, "_reason"] = [
        f"{frame.at[i, 'subject_id']} {frame.at[i, 'session_id']} has another scan, {first[i]}, which is kept"
        for i in later
    ]


def _labelled(
    scans: pd.DataFrame,
    spec: TaskSpec,
    label_column: str,
    mapping: Mapping[str, str],
    extra: Mapping[str, str | None],
) -> pd.DataFrame:
    """The data-list frame (task columns + ``_problem``/``_reason``) of scans with their clinical columns."""
    out = scans[["subject_id", "session_id", "image", "_problem", "_reason"]].copy()
    source = _column(scans, label_column)
    cells = scans[source].astype(str) if source else pd.Series("", index=scans.index)
    checked = pd.DataFrame(
        [_label(v, spec, label_column, mapping) for v in cells], index=scans.index, columns=["l", "p", "r"]
    )
    out[spec.label_column] = checked["l"]
    fresh = (out["_problem"] == "") & (checked["p"] != "")
    out.loc[fresh, "_problem"] = checked.loc[fresh, "p"]
    out.loc[fresh, "_reason"] = checked.loc[fresh, "r"]
    for name, column in extra.items():
        found = _column(scans, column)
        if found and name != spec.label_column:
            out[name] = scans[found].map(_sex) if name == "sex" else scans[found]
    _duplicates(out)
    return out


def build_datalist(
    scans: pd.DataFrame,
    out: str | PathLike,
    task: str,
    *,
    clinical: Clinical | None = None,
    label_column: str | None = None,
    mapping: Mapping[str, str] | None = None,
    age_column: str | None = None,
    sex_column: str | None = "sex",
    dropped: pd.DataFrame | None = None,
    dropped_csv: str | PathLike | None = None,
    overwrite: bool = False,
) -> DatalistResult:
    """Label ``scans`` for ``task`` and write the data list (input of ``split``) and the dropped scans.

    Args:
        scans: ``subject_id``, ``session_id``, ``image`` and any clinical columns (from
            :func:`scans_from_bids`, :func:`scans_from_manifest` or :func:`scans_from_pattern`).
        out: the data-list CSV to write.
        task: ``"adni_ad"`` or ``"brain_age"``.
        clinical: a table to join (:func:`clinical_table`); its values win over ``scans``' columns.
        label_column: the column holding the label (default: the task's, ``dx`` or ``age``; for
            ``brain_age`` also ``age_column``), matched ignoring case.
        mapping: label values -> task classes (``{"Dementia": "AD"}``); other values are kept as they are.
        age_column: the age column (the label for ``brain_age``; an extra ``age`` column for ``adni_ad``).
        sex_column: a sex column (M/F, Male/Female) copied as ``sex``; None for none.
        dropped: rows already dropped by the source (e.g. failed preparations), reported too.
        dropped_csv: where the dropped scans go (default: ``<out stem>_dropped.csv``).
        overwrite: replace an existing ``out``.

    Returns:
        the written rows and the dropped ones.

    Raises:
        FileExistsError: ``out`` exists and not ``overwrite``.
        ValueError: no scan could be labelled (the reasons are in the message).
    """
    spec = task_spec(task)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; use --force to replace it")
    label_column = label_column or (age_column if not spec.is_binary else None) or spec.label_column
    age_column = age_column or ("age" if spec.is_binary else None)
    frame = scans.assign(_problem="", _reason="")
    if clinical is not None:
        wanted = [c for c in (label_column, age_column, sex_column) if c]
        frame = _join_clinical(
            frame, clinical, [str(_column(clinical.table, c)) for c in wanted if _column(clinical.table, c)]
        )
    if _column(frame, label_column) is None:
        found = ", ".join(c for c in frame.columns if not c.startswith("_")) or "none"
        where = f" or {clinical.name}" if clinical is not None else ""
        raise ValueError(
            f"no {label_column!r} column in the scans' tables{where} (found {found}); set --label-column"
        )
    rows = _labelled(frame, spec, label_column, mapping or {}, {"age": age_column, "sex": sex_column})
    bad = rows["_problem"] != ""
    lost = rows.loc[bad, ["subject_id", "session_id", "image", "_problem", "_reason"]]
    lost.columns = list(DROPPED_COLUMNS)
    if dropped is not None and len(dropped):
        lost = pd.concat([dropped[list(DROPPED_COLUMNS)], lost], ignore_index=True)
    lost = lost.reset_index(drop=True)
    kept = rows.loc[~bad].drop(columns=["_problem", "_reason"]).reset_index(drop=True)
    if kept.empty:
        reasons = "; ".join(sorted(set(lost["reason"]))[:5])
        raise ValueError(f"no scan could be labelled for {spec.name} ({len(lost)} dropped: {reasons})")
    dropped_path = Path(dropped_csv) if dropped_csv else out.with_name(f"{out.stem}_dropped.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        kept.to_csv(tmp, index=False)
        read_datalist(tmp, spec.name)  # the bundles' own check: fails here rather than in split
    with atomic_path(dropped_path) as tmp:
        lost.to_csv(tmp, index=False)
    return DatalistResult(kept, lost, spec, out, dropped_path)


def format_datalist_summary(result: DatalistResult) -> str:
    """The report of :func:`build_datalist`: kept scans and subjects, dropped scans by problem.

    Args:
        result: from :func:`build_datalist`.

    Returns:
        a few lines of text.
    """
    spec, rows, lost = result.task, result.rows, result.dropped
    col = spec.label_column
    what = (
        ", ".join(f"{c} {int((rows[col] == c).sum())}" for c in spec.classes or {})
        if spec.is_binary
        else f"{col} {pd.to_numeric(rows[col]).min():g}-{pd.to_numeric(rows[col]).max():g}"
    )
    lines = [
        f"kept {len(rows)} scan(s) of {rows['subject_id'].nunique()} subject(s) ({what}) in {result.out}",
        f"dropped {len(lost)} scan(s)" + (f", listed in {result.dropped_csv}:" if len(lost) else ""),
    ]
    for problem, group in lost.groupby("problem", sort=True):
        lines.append(f"  {len(group)} x {problem}: e.g. {group.iloc[0]['reason']}")
    return "\n".join(lines)
