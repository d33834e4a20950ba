"""Which data a bundle run uses: the user's data lists, or the demo cohort generated once and cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mri_slice_transfer.data.datalist import read_split_datalists
from mri_slice_transfer.data.synthetic import GENERATOR_VERSION, generate_cohort
from mri_slice_transfer.engine.distributed import barrier, is_main_process
from mri_slice_transfer.engine.options import as_optional
from mri_slice_transfer.paths import cache_dir
from mri_slice_transfer.vocabulary import task_spec

__all__ = [
    "DataSource",
    "resolve_data",
    "with_train_fraction",
    "demo_cohort_dir",
    "frame_to_records",
    "initial_output_bias",
]

logger = logging.getLogger(__name__)

_DONE_MARKER = ".complete"


@dataclass
class DataSource:
    """Data lists of one run: ``frames[split]`` as read by ``read_split_datalists``.

    Attributes:
        task: ``"adni_ad"`` or ``"brain_age"``.
        frames: split name -> DataFrame with ``image``, ``subject_id``, ``label`` (+ ``session_id``).
        is_demo: whether this is the generated demo cohort.
        datalist_dir: folder of the CSV data lists.
        info: the demo cohort's settings.
        train_fraction: the label budget when only a fraction of the training list is used
            (``fraction``, ``seed``, subjects and scans of the whole list); None: the whole list.
    """

    task: str
    frames: dict[str, pd.DataFrame]
    is_demo: bool
    datalist_dir: Path
    info: dict = field(default_factory=dict)
    train_fraction: dict | None = None

    def records(self, split: str) -> list[dict]:
        """MONAI data dicts for one split (see :func:`frame_to_records`)."""
        return frame_to_records(self.frames[split])

    def label_mean(self, split: str = "train") -> float:
        """Mean label of a split (the regression bias initialisation for brain age)."""
        return float(self.frames[split]["label"].astype(float).mean())

    def positive_weight(self, split: str = "train") -> float:
        """``n_negative / n_positive`` of a binary split: the BCE ``pos_weight`` that balances classes.

        Raises:
            ValueError: the split has no positive or no negative scan.
        """
        labels = self.frames[split]["label"].astype(float)
        n_pos = int((labels > 0.5).sum())
        n_neg = len(labels) - n_pos
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"{split} data list of {self.datalist_dir} has {n_pos} AD and {n_neg} CN scans; "
                "class balancing needs both classes"
            )
        return n_neg / n_pos

    def describe(self) -> str:
        """One line for the run log."""
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.frames.items())
        kind = "DEMO cohort (synthetic)" if self.is_demo else "user data lists"
        budget = self.train_fraction
        of = (
            f"; train list cut to {budget['subjects']} of {budget['of_subjects']} subjects "
            f"(train_fraction {budget['fraction']:g}, seed {budget['seed']})"
            if budget
            else ""
        )
        return f"data: {kind} from {self.datalist_dir} ({sizes}{of})"


def frame_to_records(frame: pd.DataFrame) -> list[dict]:
    """Rows -> dicts with ``image``, ``label`` (float32 array of shape [1]) and string metadata."""
    records = []
    for row in frame.to_dict("records"):
        session = row.get("session_id")
        records.append(
            {
                "image": str(row["image"]),
                "image_path": str(row["image"]),
                "label": np.asarray([row["label"]], dtype=np.float32),
                "subject_id": str(row["subject_id"]),
                "session_id": "" if session is None or pd.isna(session) else str(session),
            }
        )
    return records


def demo_cohort_dir(task: str, n: int, seed: int) -> Path:
    """Cache folder of the demo cohort for ``task``/``n``/``seed`` (and the generator version, so a
    changed generator never reuses an old cohort)."""
    name = f"{task}_template_n{int(n)}_seed{int(seed)}_v{GENERATOR_VERSION}"
    return cache_dir("demo", name, create=False)


def _ensure_demo_cohort(task: str, n: int, seed: int) -> Path:
    out = demo_cohort_dir(task, n, seed)
    if (out / _DONE_MARKER).is_file():
        logger.info("demo cohort found in cache: %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)  # the generator resumes an interrupted generation
    logger.info("generating the demo cohort once (task=%s, n=%d, seed=%d) into %s", task, n, seed, out)
    generate_cohort(task, space="template", n=int(n), seed=int(seed), out=out, progress=False)
    (out / _DONE_MARKER).write_text("ok\n")
    return out


def resolve_data(
    task: str,
    datalist_dir: str | None = None,
    dataset_dir: str | None = None,
    demo_n: int = 120,
    demo_seed: int = 0,
    splits: tuple[str, ...] = ("train", "val", "test"),
    train_fraction: float | str = 1.0,
    train_fraction_seed: int | str = 0,
) -> DataSource:
    """Read and check the data lists, or fall back to the demo cohort when no data is configured.

    ``datalist_dir`` defaults to ``dataset_dir``. With neither set, the demo cohort is generated once
    into ``cache_dir("demo", ...)`` (keyed by task, ``demo_n`` and ``demo_seed``) and used. Every
    problem in the data lists is raised together as a ``DataListError`` before any training starts.
    In a distributed run only rank 0 generates; the other ranks wait.

    Args:
        task: ``"adni_ad"`` or ``"brain_age"``.
        datalist_dir: folder of ``train.csv``/``val.csv``/``test.csv`` (``"null"``/``""``: unset).
        dataset_dir: folder the image paths are relative to (and the default ``datalist_dir``).
        demo_n, demo_seed: size and seed of the demo cohort (strings of numbers accepted).
        splits: the data lists to read.
        train_fraction: train on this share of the training list's subjects (all their scans),
            stratified by label and drawn with ``train_fraction_seed``
            (:func:`~mri_slice_transfer.split.subject_fraction`); 1: the whole list.
        train_fraction_seed: the seed of that draw.

    Returns:
        the data source.
    """
    dataset_dir = as_optional(dataset_dir)
    datalist_dir = as_optional(datalist_dir) or dataset_dir or None
    demo_n, demo_seed = int(demo_n), int(demo_seed)
    if datalist_dir:
        frames = read_split_datalists(datalist_dir, task, dataset_dir=dataset_dir or None, splits=splits)
        data = DataSource(task, frames, False, Path(datalist_dir).resolve())
        return with_train_fraction(data, float(train_fraction), int(train_fraction_seed))
    if is_main_process():
        out = _ensure_demo_cohort(task, demo_n, demo_seed)
        barrier()
    else:
        barrier()
        out = demo_cohort_dir(task, demo_n, demo_seed)
    frames = read_split_datalists(out, task, dataset_dir=out, splits=splits)
    info = {"demo_n": int(demo_n), "demo_seed": int(demo_seed)}
    return with_train_fraction(
        DataSource(task, frames, True, out, info), float(train_fraction), int(train_fraction_seed)
    )


def with_train_fraction(data: DataSource, fraction: float | str, seed: int | str = 0) -> DataSource:
    """``data`` with its training list cut to a subject-level, stratified ``fraction`` (1: unchanged).

    Args:
        data: the run's data source.
        fraction: the share of training subjects kept, in (0, 1] (a command-line string accepted).
        seed: the seed of the draw (:func:`~mri_slice_transfer.split.subject_fraction`).

    Returns:
        ``data``, its ``train`` frame cut and :attr:`DataSource.train_fraction` set when ``fraction < 1``.

    Raises:
        ValueError: ``fraction`` is not a number in (0, 1].
    """
    from mri_slice_transfer.split import subject_fraction

    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"train_fraction must be a number in (0, 1], not {fraction!r}") from None
    whole = data.frames.get("train")
    if whole is None or fraction == 1:
        subject_fraction(whole, data.task, fraction)  # checks the value; 1 keeps the whole list
        return data
    part = subject_fraction(
        whole, data.task, fraction, int(seed), source=str(data.datalist_dir / "train.csv")
    )
    data.frames["train"] = part
    data.train_fraction = {
        "fraction": fraction,
        "seed": int(seed),
        "subjects": int(part["subject_id"].nunique()),
        "of_subjects": int(whole["subject_id"].nunique()),
        "of_scans": len(whole),
    }
    return data


def initial_output_bias(data: DataSource) -> float | None:
    """The value the output bias starts at: the training mean label for a regression task (brain age:
    the mean age), None (no initialisation) for a binary task.

    Args:
        data: the run's data source.

    Returns:
        the bias value or None.
    """
    return None if task_spec(data.task).is_binary else data.label_mean("train")
