"""Which scans self-supervised pretraining (``pretrain.json``) sees: the training list and unlabeled scans.

Pretraining never sees an evaluation scan: it takes the run's ``train`` list (read with the bundles'
own checks, :func:`~mri_slice_transfer.engine.datasets.resolve_data`, which also reads ``val`` and
``test`` and runs the leakage guard between them) plus, optionally, unlabeled scans (a folder, a glob
or a CSV with an ``image`` column: labels, if any, are ignored). The unlabeled scans go through the
same leakage guard (:func:`~mri_slice_transfer.data.datalist.check_leakage`) against the ``val`` and
``test`` lists: a subject, an image file or an image's content found in both is refused, naming each.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mri_slice_transfer.data.datalist import check_leakage
from mri_slice_transfer.engine.datasets import DataSource, frame_to_records, resolve_data
from mri_slice_transfer.engine.inputs import resolve_inputs
from mri_slice_transfer.engine.options import as_optional
from mri_slice_transfer.errors import DataListError

__all__ = ["PretrainData", "EVALUATION_SPLITS", "pretraining_data"]

logger = logging.getLogger(__name__)

#: The splits pretraining never touches (the unlabeled scans are checked against them).
EVALUATION_SPLITS: tuple[str, ...] = ("val", "test")


@dataclass
class PretrainData:
    """The scans of one pretraining run.

    Attributes:
        source: the run's labelled data lists (``train`` is pretrained on; ``val`` / ``test`` are not).
        unlabeled: the extra unlabeled scans (``image``, ``subject_id``, ``session_id``), possibly empty.
        unlabeled_source: where they come from (``""``: none given).
    """

    source: DataSource
    unlabeled: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["image", "subject_id"]))
    unlabeled_source: str = ""

    def records(self) -> list[dict]:
        """MONAI data dicts of every pretraining scan: the training list, then the unlabeled scans."""
        train = frame_to_records(self.source.frames["train"])
        for rec in train:
            rec.pop("label")  # labels are not used (and the unlabeled scans have none)
        return train + self.unlabeled.to_dict("records")

    def summary(self) -> dict[str, Any]:
        """What the encoder was pretrained on (``encoder.json``'s ``data``)."""
        return {
            "source": "demo" if self.source.is_demo else "user data lists",
            "datalist_dir": str(self.source.datalist_dir),
            "train_scans": len(self.source.frames["train"]),
            "unlabeled_scans": len(self.unlabeled),
            "unlabeled_source": self.unlabeled_source,
            **({"demo": dict(self.source.info)} if self.source.is_demo else {}),
        }

    def describe(self) -> str:
        """One line for the run log."""
        extra = (
            f" + {len(self.unlabeled)} unlabeled from {self.unlabeled_source}"
            if self.unlabeled_source
            else ""
        )
        return (
            f"pretraining scans: {len(self.source.frames['train'])} of the train list{extra} (labels unused)"
        )


def _unlabeled_frame(source: str, dataset_dir: str | None, train: pd.DataFrame) -> pd.DataFrame:
    """The unlabeled scans as a frame, without those already in the training list.

    Raises:
        DataListError: listed scans that do not exist (every one named).
    """
    rows = resolve_inputs(source, dataset_dir)
    missing = [f"{source}: image {r['image']!r} not found" for r in rows if not os.path.isfile(r["image"])]
    if missing:
        raise DataListError(missing)
    frame = pd.DataFrame(rows, columns=["image", "image_path", "subject_id", "session_id"])
    known = {os.path.realpath(p) for p in train["image"]}
    return frame[[os.path.realpath(p) not in known for p in frame["image"]]].reset_index(drop=True)


def pretraining_data(
    task: str,
    datalist_dir: str | None = None,
    dataset_dir: str | None = None,
    unlabeled: str | None = None,
    demo_n: int = 120,
    demo_seed: int = 0,
) -> PretrainData:
    """Read the data lists (or the demo cohort) and the unlabeled scans; refuse evaluation scans.

    Args:
        task: ``"adni_ad"`` or ``"brain_age"`` (decides how the labelled lists are checked).
        datalist_dir, dataset_dir, demo_n, demo_seed: as for
            :func:`~mri_slice_transfer.engine.datasets.resolve_data`.
        unlabeled: extra scans without labels: a folder, a glob or a CSV with an ``image`` column
            (``subject_id`` / ``session_id`` optional, else read from the path); None / ``"null"``: none.
            Relative CSV paths start at ``dataset_dir`` (else the CSV's folder).

    Returns:
        the :class:`PretrainData`.

    Raises:
        DataListError: a problem in the data lists, a missing unlabeled scan, or an unlabeled scan that
            shares a subject, an image file or an image's content with the ``val`` or ``test`` list.
        ValueError: ``unlabeled`` finds no scan.
    """
    data = resolve_data(task, datalist_dir, dataset_dir, demo_n, demo_seed)
    source = as_optional(unlabeled)
    if not source:
        result = PretrainData(data)
        logger.info(result.describe())
        return result
    extra = _unlabeled_frame(str(source), as_optional(dataset_dir), data.frames["train"])
    frames = {"unlabeled": extra, **{s: data.frames[s] for s in EVALUATION_SPLITS}}
    names = {"unlabeled": f"unlabeled scans {source}"}
    names.update({s: str(data.datalist_dir / f"{s}.csv") for s in EVALUATION_SPLITS})
    check_leakage(frames, names)
    result = PretrainData(data, extra, str(source))
    logger.info(result.describe())
    return result
