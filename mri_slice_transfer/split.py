"""Train / val / test data lists from one CSV of all scans, by subject.

Every scan of a subject lands in the same split (repeated scans are allowed in the input), subjects
are stratified by diagnosis (``dx``) and / or age bins, and the split sizes follow chosen proportions.
The default proportions are the paper's (Gupta et al., *Transferring models trained on natural images
to 3D MRI via position encoded slice models*, section 3.1), in scans:

- ``adni_ad``: 2,372 / 873 / 916 train / val / test (57.0 / 21.0 / 22.0 %);
- ``brain_age``: 7,312 / 2,194 / 940 (70.0 / 21.0 / 9.0 %).

How subjects are dealt out (deterministic for a given ``seed``):

1. each subject gets a stratum: its diagnoses (``AD``, ``CN`` or ``AD+CN`` for a converter),
   its age bin (quantiles of the subjects' mean ages), both, or none;
2. subjects are sorted by id, shuffled with the seed within each stratum, and the strata are
   concatenated;
3. walking along that order, each subject goes to the split that is least filled relative to its
   target share (in scans by default, or in subjects), so every stratum, and the whole cohort, is
   split in the target proportions up to about one subject per split. The choice does not depend on
   the subject's own number of scans, so subjects with repeat scans are spread like the others.

Before anything is written the leakage guard
(:func:`~mri_slice_transfer.data.datalist.check_leakage`: subjects ignoring case, image files and
image contents) runs on the new splits, and the
written lists are read back with :func:`~mri_slice_transfer.data.datalist.read_split_datalists`, the
same check every bundle runs before training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mri_slice_transfer.fileio import atomic_write_json, atomic_write_text
from mri_slice_transfer.vocabulary import TASKS, Task

if TYPE_CHECKING:  # pandas is imported inside the functions: the CLI parser stays light
    import pandas as pd

__all__ = [
    "PAPER_SPLIT_SCANS",
    "FALLBACK_FRACTIONS",
    "STRATIFY_CHOICES",
    "SplitResult",
    "default_fractions",
    "parse_fractions",
    "split_by_subject",
    "split_datalist",
    "subject_fraction",
    "format_split_report",
]

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")

#: Scans per split in the paper (train, val, test), section 3.1.
PAPER_SPLIT_SCANS: dict[str, tuple[int, int, int]] = {
    Task.ADNI_AD: (2372, 873, 916),
    Task.BRAIN_AGE: (7312, 2194, 940),
}
#: Used for a task the paper does not cover.
FALLBACK_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
#: ``--stratify`` values; ``auto`` is ``dx`` for ``adni_ad`` and ``age`` for ``brain_age``.
STRATIFY_CHOICES: tuple[str, ...] = ("auto", "dx", "age", "dx+age", "none")
#: ``--unit`` values: what the fractions count.
UNITS: tuple[str, ...] = ("scans", "subjects")


@dataclass
class SplitResult:
    """A subject-level split.

    Attributes:
        frames: ``{split: rows}`` of the input frame (same columns, input order kept).
        assignment: subject id -> split name.
        strata: subject id -> stratum label (``""`` when not stratified).
        fractions: the normalised target fractions (train, val, test).
        fractions_source: where the fractions come from (for the report).
        stratify: the stratification actually used (``auto`` resolved).
        unit: ``"scans"`` or ``"subjects"``.
        seed: the random seed.
        report: counts, class balance and age distribution per split (see :func:`split_report`).
    """

    frames: dict[str, pd.DataFrame]
    assignment: dict[str, str]
    strata: dict[str, str]
    fractions: tuple[float, float, float]
    fractions_source: str
    stratify: str
    unit: str
    seed: int
    report: dict[str, Any] = field(default_factory=dict)


def default_fractions(task: str) -> tuple[tuple[float, float, float], str]:
    """The paper's split proportions for ``task`` (or 70/15/15) and a note saying where they come from."""
    if task in PAPER_SPLIT_SCANS:
        counts = PAPER_SPLIT_SCANS[task]
        total = sum(counts)
        fr = tuple(c / total for c in counts)
        dataset = TASKS[task].dataset
        note = (
            f"the paper's {dataset} split, {counts[0]:,}/{counts[1]:,}/{counts[2]:,} scans "
            f"({100 * fr[0]:.1f}/{100 * fr[1]:.1f}/{100 * fr[2]:.1f} %)"
        )
        return (fr[0], fr[1], fr[2]), note
    return FALLBACK_FRACTIONS, "70/15/15 (the paper gives no split for this task)"


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative numbers -> fractions that sum to 1.

    Accepts ``"0.7,0.15,0.15"``, ``"70,15,15"`` or counts such as ``"2372,873,916"`` (only the ratios
    matter), as a string or a sequence.

    Raises:
        ValueError: not three numbers, a negative or zero entry.
    """
    parts = [p for p in text.replace(";", ",").split(",")] if isinstance(text, str) else list(text)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(
            f"fractions must be three numbers train,val,test (e.g. 70,15,15), got {text!r}"
        ) from None
    if len(values) != 3:
        raise ValueError(f"fractions must be three numbers train,val,test (e.g. 70,15,15), got {text!r}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"every split needs a positive fraction (train,val,test), got {text!r}")
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


def _resolve_stratify(stratify: str, task: str) -> str:
    if stratify not in STRATIFY_CHOICES:
        raise ValueError(f"unknown stratify {stratify!r}; choose one of {', '.join(STRATIFY_CHOICES)}")
    if stratify == "auto":
        return TASKS[task].label_column if task in TASKS else "age"
    return stratify


def _subject_strata(frame: pd.DataFrame, stratify: str, age_bins: int, source: str) -> dict[str, str]:
    """Stratum label of every subject."""
    import numpy as np

    subjects = sorted(frame["subject_id"].unique())
    parts: dict[str, list[str]] = {s: [] for s in subjects}
    if "dx" in stratify:
        if "dx" not in frame.columns:
            raise ValueError(f"{source}: stratify {stratify!r} needs a 'dx' column")
        for sub, dx in frame.groupby("subject_id")["dx"]:
            parts[sub].append("+".join(sorted(set(map(str, dx)))))
    if "age" in stratify:
        if "age" not in frame.columns:
            raise ValueError(f"{source}: stratify {stratify!r} needs an 'age' column")
        import pandas as pd

        ages = pd.to_numeric(frame["age"], errors="coerce").groupby(frame["subject_id"]).mean()
        known = ages.dropna()
        n_bins = max(1, min(int(age_bins), len(known)))
        edges = np.quantile(known.to_numpy(), np.linspace(0, 1, n_bins + 1)[1:-1]) if n_bins > 1 else []
        bins = {s: int(np.searchsorted(edges, a, side="right")) for s, a in known.items()}
        ranges = {}
        for b in sorted(set(bins.values())):
            members = known[[s for s in known.index if bins[s] == b]]
            ranges[b] = f"age {members.min():.1f}-{members.max():.1f}"
        for sub in subjects:
            parts[sub].append(ranges[bins[sub]] if sub in bins else "age unknown")
    return {s: " / ".join(p) for s, p in parts.items()}


def _deal(order: Sequence[str], weights: dict[str, int], fractions: Sequence[float]) -> dict[str, str]:
    """Give each subject, in order, to the split that is least filled relative to its target share.

    The choice looks only at what each split holds so far (``assigned / fraction``), never at the
    subject's own weight, so subjects with many scans are not drawn to the largest split.
    """
    assigned = [0.0] * len(SPLIT_NAMES)
    out = {}
    for sub in order:
        k = min(range(len(assigned)), key=lambda j: (assigned[j] / fractions[j], j))
        assigned[k] += float(weights[sub])
        out[sub] = SPLIT_NAMES[k]
    return out


def _refuse_case_variants(frame: pd.DataFrame, source: str) -> None:
    """Raise ``ValueError`` if two subject ids differ only in case (one subject for the leakage guard)."""
    from mri_slice_transfer.data.datalist import subject_key

    ids = frame["subject_id"].astype(str)
    variants = [sorted(set(g)) for _, g in ids.groupby(ids.map(subject_key), sort=True) if g.nunique() > 1]
    if variants:
        listed = "; ".join(" / ".join(map(repr, v)) for v in variants)
        raise ValueError(
            f"{source}: subject ids that differ only in case: {listed}; the leakage guard compares ids "
            "ignoring case, so write each subject's id the same way in every row"
        )


def split_by_subject(
    frame: pd.DataFrame,
    task: str,
    fractions: Sequence[float] | str | None = None,
    seed: int = 0,
    stratify: str = "auto",
    age_bins: int = 4,
    unit: str = "scans",
    source: str = "data list",
) -> SplitResult:
    """Split the scans of ``frame`` into train / val / test by subject, stratified.

    Args:
        frame: one row per scan with ``subject_id`` and the task's columns (``dx`` / ``age``), as read
            by :func:`~mri_slice_transfer.data.datalist.read_datalist` or as plain strings.
        task: ``"adni_ad"`` or ``"brain_age"``.
        fractions: train, val, test proportions (any scale, see :func:`parse_fractions`); default: the
            paper's (:func:`default_fractions`).
        seed: random seed of the shuffle within strata.
        stratify: ``"auto"`` (``dx`` for AD, ``age`` for brain age), ``"dx"``, ``"age"``, ``"dx+age"`` or
            ``"none"``.
        age_bins: number of age bins (quantiles of the subjects' mean ages).
        unit: whether the fractions count ``"scans"`` (the paper's counts are scans) or ``"subjects"``.
        source: name of the input for messages.

    Returns:
        the :class:`SplitResult` (its ``report`` filled by :func:`split_report`).

    Raises:
        ValueError: bad arguments, a missing column, subject ids that differ only in case, fewer than
            three subjects, or an empty split.
        DataListError: a subject in two splits (cannot happen by construction; the guard is run anyway),
            or one image file or content listed under two subjects that landed in different splits.
    """
    import numpy as np

    from mri_slice_transfer.data.datalist import check_leakage, task_spec

    task_spec(task)
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(UNITS)}")
    if int(age_bins) < 1:
        raise ValueError(f"age_bins must be at least 1, got {age_bins}")
    if "subject_id" not in frame.columns:
        raise ValueError(f"{source}: missing column 'subject_id'")
    _refuse_case_variants(frame, source)
    if fractions is None:
        fr, note = default_fractions(task)
    else:
        fr, note = parse_fractions(fractions), "chosen"
    strat = _resolve_stratify(stratify, task)

    subjects = sorted(map(str, frame["subject_id"].unique()))
    if len(subjects) < len(SPLIT_NAMES):
        raise ValueError(f"{source}: {len(subjects)} subject(s); a train/val/test split needs at least 3")
    strata = (
        _subject_strata(frame, strat, age_bins, source) if strat != "none" else dict.fromkeys(subjects, "")
    )
    counts = frame["subject_id"].astype(str).value_counts()
    weights = {s: int(counts[s]) if unit == "scans" else 1 for s in subjects}

    rng = np.random.default_rng(int(seed))
    order: list[str] = []
    for stratum in sorted(set(strata.values())):
        members = [s for s in subjects if strata[s] == stratum]
        order.extend(members[i] for i in rng.permutation(len(members)))
    assignment = _deal(order, weights, fr)

    empty = [s for s in SPLIT_NAMES if s not in assignment.values()]
    if empty:
        raise ValueError(
            f"{source}: split(s) {', '.join(empty)} got no subject ({len(subjects)} subjects, fractions "
            f"{', '.join(f'{f:.3f}' for f in fr)}); use more subjects or larger fractions"
        )
    split_of = frame["subject_id"].astype(str).map(assignment)
    frames = {s: frame[split_of == s] for s in SPLIT_NAMES}
    check_leakage(frames, {s: f"{source} ({s} split)" for s in SPLIT_NAMES})
    result = SplitResult(frames, assignment, strata, fr, note, strat, unit, int(seed))
    result.report = split_report(result, task)
    return result


def subject_fraction(
    frame: pd.DataFrame,
    task: str,
    fraction: float,
    seed: int = 0,
    stratify: str = "auto",
    age_bins: int = 4,
    source: str = "data list",
) -> pd.DataFrame:
    """A seeded, stratified fraction of the subjects of ``frame``, with all their scans (a label budget).

    Subjects get the strata of :func:`split_by_subject` (``auto``: diagnosis for AD, age bins for brain
    age), are shuffled with ``seed`` within each stratum in the same way, and the first
    ``round(fraction * n)`` (at least one) of each stratum's ``n`` subjects are kept.

    Args:
        frame: one row per scan with ``subject_id`` and the stratification columns (``dx`` / ``age``).
        task: ``"adni_ad"`` or ``"brain_age"``.
        fraction: the share of subjects to keep, in (0, 1]; 1 returns ``frame`` itself.
        seed, stratify, age_bins, source: see :func:`split_by_subject`.

    Returns:
        the rows of the kept subjects, in input order.

    Raises:
        ValueError: ``fraction`` outside (0, 1], or what :func:`split_by_subject` refuses.
    """
    import numpy as np

    if not (isinstance(fraction, (int, float)) and 0 < float(fraction) <= 1):
        raise ValueError(f"{source}: train_fraction must be a number in (0, 1], not {fraction!r}")
    if float(fraction) == 1:
        return frame
    _refuse_case_variants(frame, source)
    strat = _resolve_stratify(stratify, task)
    subjects = sorted(map(str, frame["subject_id"].unique()))
    strata = (
        _subject_strata(frame, strat, age_bins, source) if strat != "none" else dict.fromkeys(subjects, "")
    )
    rng = np.random.default_rng(int(seed))
    kept: set[str] = set()
    for stratum in sorted(set(strata.values())):
        members = [s for s in subjects if strata[s] == stratum]
        order = [members[i] for i in rng.permutation(len(members))]
        kept.update(order[: max(1, round(float(fraction) * len(members)))])
    return frame[frame["subject_id"].astype(str).isin(kept)]


def _age_summary(values: pd.Series) -> dict[str, float] | None:
    import pandas as pd

    ages = pd.to_numeric(values, errors="coerce").dropna()
    if ages.empty:
        return None
    return {
        "mean": round(float(ages.mean()), 2),
        "std": round(float(ages.std(ddof=1)), 2) if len(ages) > 1 else 0.0,
        "min": round(float(ages.min()), 2),
        "median": round(float(ages.median()), 2),
        "max": round(float(ages.max()), 2),
    }


def split_report(result: SplitResult, task: str) -> dict[str, Any]:
    """Counts, class balance, age distribution and strata per split (JSON-friendly)."""
    total_scans = sum(len(f) for f in result.frames.values())
    total_subjects = len(result.assignment)
    splits: dict[str, Any] = {}
    for name, frame in result.frames.items():
        subs = sorted(set(map(str, frame["subject_id"])))
        entry: dict[str, Any] = {
            "subjects": len(subs),
            "scans": len(frame),
            "share_of_scans": round(len(frame) / total_scans, 4) if total_scans else 0.0,
            "share_of_subjects": round(len(subs) / total_subjects, 4) if total_subjects else 0.0,
            "repeated_scan_subjects": int((frame["subject_id"].astype(str).value_counts() > 1).sum()),
        }
        if "dx" in frame.columns:
            dx = frame["dx"].astype(str).value_counts()
            entry["dx_scans"] = {k: int(v) for k, v in sorted(dx.items())}
            if task in TASKS and TASKS[task].is_binary:
                entry["ad_share_of_scans"] = (
                    round(int(dx.get("AD", 0)) / len(frame), 4) if len(frame) else 0.0
                )
        if "age" in frame.columns:
            entry["age"] = _age_summary(frame["age"])
        strata: dict[str, int] = {}
        for s in subs:
            strata[result.strata.get(s, "")] = strata.get(result.strata.get(s, ""), 0) + 1
        entry["subjects_per_stratum"] = dict(sorted(strata.items()))
        splits[name] = entry
    return {
        "task": task,
        "seed": result.seed,
        "stratify": result.stratify,
        "unit": result.unit,
        "target_fractions": {n: round(f, 4) for n, f in zip(SPLIT_NAMES, result.fractions, strict=True)},
        "fractions_source": result.fractions_source,
        "total": {"subjects": total_subjects, "scans": total_scans},
        "splits": splits,
    }


def format_split_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table (what the command prints and writes to ``split_report.md``)."""
    tf = report["target_fractions"]
    lines = [
        f"Split of {report['total']['scans']} scans of {report['total']['subjects']} subjects "
        f"(task {report['task']}, seed {report['seed']}, stratified by {report['stratify']}, "
        f"fractions of {report['unit']}: "
        f"{100 * tf['train']:.1f}/{100 * tf['val']:.1f}/{100 * tf['test']:.1f} % "
        f"= {report['fractions_source']})",
        "",
        "| split | subjects | scans | % of scans | subjects with repeat scans | dx (scans) | % AD "
        "| age mean ± sd | age median [min-max] |",
        "|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for name, e in report["splits"].items():
        dx = ", ".join(f"{k} {v}" for k, v in e.get("dx_scans", {}).items()) or "-"
        ad = f"{100 * e['ad_share_of_scans']:.1f}" if "ad_share_of_scans" in e else "-"
        age = e.get("age")
        age_ms = f"{age['mean']:.1f} ± {age['std']:.1f}" if age else "-"
        age_rng = f"{age['median']:.1f} [{age['min']:.1f}-{age['max']:.1f}]" if age else "-"
        lines.append(
            f"| {name} | {e['subjects']} | {e['scans']} | {100 * e['share_of_scans']:.1f} | "
            f"{e['repeated_scan_subjects']} | {dx} | {ad} | {age_ms} | {age_rng} |"
        )
    strata = sorted({k for e in report["splits"].values() for k in e["subjects_per_stratum"]})
    if strata != [""]:
        lines += ["", "Subjects per stratum:", "", "| stratum | " + " | ".join(report["splits"]) + " |"]
        lines.append("|---|" + "---:|" * len(report["splits"]))
        for st in strata:
            cells = [str(e["subjects_per_stratum"].get(st, 0)) for e in report["splits"].values()]
            lines.append(f"| {st} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def split_datalist(
    csv_path: str | PathLike,
    out_dir: str | PathLike,
    task: str,
    fractions: Sequence[float] | str | None = None,
    seed: int = 0,
    stratify: str = "auto",
    age_bins: int = 4,
    unit: str = "scans",
    dataset_dir: str | PathLike | None = None,
    check_files: bool = True,
    overwrite: bool = False,
) -> SplitResult:
    """Read one CSV of all scans, split it by subject and write ``train/val/test.csv`` and a report.

    The input is checked like any data list (:func:`~mri_slice_transfer.data.datalist.read_datalist`:
    every problem at once). The output lists keep the input's columns and cell text (``image`` paths
    are not rewritten; a ``split`` column is dropped), so relative ``image`` paths stay relative to the
    dataset root: pass ``--dataset_dir`` to the bundles when ``out_dir`` is not that folder. The written
    lists are then read back with :func:`~mri_slice_transfer.data.datalist.read_split_datalists` (the
    bundles' own check, including the leakage guard).

    Args:
        csv_path: the CSV of all scans (data-list format, ``docs/data_lists.md``).
        out_dir: where ``train.csv``, ``val.csv``, ``test.csv``, ``split_report.json`` and
            ``split_report.md`` go.
        task, fractions, seed, stratify, age_bins, unit: see :func:`split_by_subject`.
        dataset_dir: folder relative ``image`` paths start from (default: the CSV's folder).
        check_files: check that every image exists.
        overwrite: replace existing lists in ``out_dir``.

    Returns:
        the :class:`SplitResult`.

    Raises:
        DataListError: problems in the input (or, after writing, in the lists).
        FileExistsError: ``out_dir`` already holds data lists and ``overwrite`` is False.
        ValueError: see :func:`split_by_subject`.
    """
    import pandas as pd

    from mri_slice_transfer.data.datalist import read_datalist, read_split_datalists

    src = Path(csv_path)
    out = Path(out_dir)
    targets = [out / f"{s}.csv" for s in SPLIT_NAMES]
    if any(t.resolve() == src.resolve() for t in targets):
        raise ValueError(f"{src}: the input would be overwritten by the split; choose another --out")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"data lists already exist: {', '.join(existing)}; use --force to replace them or another --out"
        )
    root = Path(dataset_dir) if dataset_dir is not None else src.parent
    checked = read_datalist(src, task, dataset_dir=root, check_files=check_files)
    raw = pd.read_csv(src, dtype=str, keep_default_na=False, skipinitialspace=True)
    raw.columns = [str(c).strip() for c in raw.columns]
    for col in raw.columns:
        raw[col] = raw[col].str.strip()
    raw = raw.drop(columns=[c for c in ("split",) if c in raw.columns])
    result = split_by_subject(
        checked, task, fractions, seed=seed, stratify=stratify, age_bins=age_bins, unit=unit, source=str(src)
    )
    result.frames = {s: raw.loc[f.index] for s, f in result.frames.items()}
    result.report["input"] = str(src)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in result.frames.items():
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False, lineterminator="\n"))
    atomic_write_json(out / "split_report.json", result.report)
    atomic_write_text(out / "split_report.md", format_split_report(result.report))
    read_split_datalists(out, task, dataset_dir=root.resolve(), check_files=check_files)
    return result
