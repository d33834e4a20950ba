"""The project's vocabulary: every name a user or a config can write, and the facts of each task.

One source of truth for tasks, encoders, slicing axes, aggregations, position encodings, data paths,
perturbations and scan file endings. Members are ``str`` enums, so they compare equal to their values
(``Task.ADNI_AD == "adni_ad"``) and bundle configs that write plain strings keep working.
:func:`look_up` turns a user's string into a member and answers "did you mean ..." for typos.
:data:`TASKS` holds one :class:`TaskSpec` per task: label column, loss, key metric and the one "is this
epoch better" rule (:meth:`TaskSpec.better`).

This module imports only the standard library (no torch, no MONAI), so any module can use it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

__all__ = [
    "ALIASES",
    "ALL_PLANES",
    "Aggregation",
    "Axis",
    "DataCache",
    "Encoder",
    "IMAGE_SUFFIXES",
    "Init",
    "NIFTI_SUFFIXES",
    "Perturbation",
    "PlaneEncoder",
    "PlaneFusion",
    "PositionEncoding",
    "PRETRAINABLE_ENCODERS",
    "ScanSuffix",
    "SLICE_ENCODERS",
    "TASKS",
    "Task",
    "TaskSpec",
    "canonical",
    "format_axis",
    "is_better",
    "look_up",
    "names",
    "parse_axis",
    "task_spec",
]


class _Name(str, Enum):
    """A ``str`` enum whose ``str()``, ``format()`` and hash are its value's (``"adni_ad"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __hash__(self) -> int:  # Enum hashes the member name; as a dict key a member must find its value
        return hash(self.value)


class Task(_Name):
    """The prediction tasks."""

    ADNI_AD = "adni_ad"
    BRAIN_AGE = "brain_age"


class Encoder(_Name):
    """Model names accepted by :func:`~mri_slice_transfer.networks.build_model`: the 2D slice encoders
    of :class:`~mri_slice_transfer.networks.SliceSetNet` and the 3D-CNN baseline (``conv3d``)."""

    CNN5 = "cnn5"
    RESNET18 = "resnet18"
    RESNET34 = "resnet34"
    RESNET50 = "resnet50"
    CONV3D = "conv3d"


class Axis(_Name):
    """Slicing axes, in voxel-axis order of the template grid (x, y, z)."""

    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    AXIAL = "axial"


#: The ``axis`` value of a three-plane model: every :class:`Axis`, in :class:`Axis` order (the plane
#: order of :func:`parse_axis`, of a three-plane model's fused embedding and of its feature arrays).
ALL_PLANES = "all"


class PlaneEncoder(_Name):
    """Several-plane models (``axis all``): one 2D slice encoder for all planes, or one per plane."""

    SHARED = "shared"
    SEPARATE = "separate"


class PlaneFusion(_Name):
    """Several-plane models: how the per-plane scan embeddings become one."""

    CONCAT = "concat"  # concatenated in plane order, then the head
    ATTENTION = "attention"  # attention pooling across the plane embeddings (AXIAL style)


class Aggregation(_Name):
    """How the slice embeddings are pooled into one."""

    MEAN = "mean"
    MAX = "max"
    ATTENTION = "attention"
    TRANSFORMER = "transformer"


class PositionEncoding(_Name):
    """Positional encodings of the slice index."""

    NONE = "none"
    LEARNED = "learned"
    SINUSOIDAL = "sinusoidal"


class DataCache(_Name):
    """Where the training / validation data path keeps preprocessed scans (``train.json``: ``cache``)."""

    MEMORY = "memory"  # MONAI CacheDataset: every scan in RAM (the demo)
    DISK = "disk"  # an on-disk store built once, read by DataLoader workers (real data)
    NONE = "none"  # decode and preprocess every scan every epoch


class Perturbation(_Name):
    """Scanner-like perturbations of the robustness evaluation (``robustness.json``: ``perturb``)."""

    BIAS_FIELD = "bias_field"
    GIBBS = "gibbs"
    NOISE = "noise"
    CONTRAST = "contrast"
    MOTION = "motion"


class Init(_Name):
    """Where a slice encoder's starting weights come from (the ``init`` of a grid row).

    ``scratch``: random; ``imagenet``: torchvision's ImageNet-1K weights; ``ssl``: this project's
    self-supervised pretraining (``pretrain.json``) on the training (+ unlabeled) scans; ``file``: a
    weights file the user gives (``--pretrained FILE``).
    """

    SCRATCH = "scratch"
    IMAGENET = "imagenet"
    SSL = "ssl"
    FILE = "file"


#: Encoders of single slices (everything but the 3D-CNN).
SLICE_ENCODERS: tuple[Encoder, ...] = (Encoder.CNN5, Encoder.RESNET18, Encoder.RESNET34, Encoder.RESNET50)
#: Encoders with ImageNet-1K weights (the torchvision ResNets).
PRETRAINABLE_ENCODERS: tuple[Encoder, ...] = (Encoder.RESNET18, Encoder.RESNET34, Encoder.RESNET50)

#: Other spellings accepted by :func:`look_up`, per enum (the only alias table).
ALIASES: dict[type[Enum], dict[str, Enum]] = {
    Encoder: {"3dcnn": Encoder.CONV3D, "3d-cnn": Encoder.CONV3D},
}


class ScanSuffix(_Name):
    """File endings of scan files (lower case; ``.nhdr``/``.mhd``: detached headers)."""

    NII = ".nii"
    NII_GZ = ".nii.gz"
    MGZ = ".mgz"
    MGH = ".mgh"
    NRRD = ".nrrd"
    NHDR = ".nhdr"
    MHA = ".mha"
    MHD = ".mhd"


#: NIfTI file endings (what :class:`~mri_slice_transfer.transforms.LoadScand` reads).
NIFTI_SUFFIXES: tuple[str, ...] = (ScanSuffix.NII.value, ScanSuffix.NII_GZ.value)
#: Every scan file ending: one image per file (what ``prepare`` reads and folder inputs contribute).
IMAGE_SUFFIXES: tuple[str, ...] = tuple(s.value for s in ScanSuffix)

E = TypeVar("E", bound=Enum)


def _label(enum: type[Enum]) -> str:
    """``PositionEncoding`` -> ``"position_encoding"`` (the word used in error messages)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.__name__).lower()


def names(enum: type[Enum], aliases: bool = False) -> tuple[str, ...]:
    """The values of ``enum`` as plain strings (with ``aliases=True`` also its :data:`ALIASES`).

    Args:
        enum: one of this module's enums.
        aliases: also list the other accepted spellings.

    Returns:
        The names in definition order, aliases last.
    """
    values = tuple(str(m.value) for m in enum)
    return values + tuple(ALIASES.get(enum, {})) if aliases else values


def look_up(value: object, enum: type[E], what: str | None = None) -> E:
    """The member of ``enum`` that ``value`` names (case-insensitive; :data:`ALIASES` accepted).

    Args:
        value: a member or its string (``"adni_ad"``, ``"ResNet18"``, ``"3dcnn"``).
        enum: the enum to look in (:class:`Task`, :class:`Encoder`, ...).
        what: the word for error messages; default the enum's name in snake case.

    Returns:
        The member.

    Raises:
        ValueError: ``"unknown <what> 'x'; choose one of a, b, c"``, plus ``"(did you mean 'a'?)"``
            when a close spelling exists.
    """
    if isinstance(value, enum):
        return value
    aliases = ALIASES.get(enum, {})
    if isinstance(value, str):
        key = value.lower()
        for member in enum:
            if member.value == key:
                return member
        if key in aliases:
            return aliases[key]  # type: ignore[return-value]
    choices = names(enum, aliases=True)
    msg = f"unknown {what or _label(enum)} {value!r}; choose one of {', '.join(choices)}"
    close = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.6)
    raise ValueError(msg + (f" (did you mean {close[0]!r}?)" if close else ""))


def parse_axis(value: object) -> tuple[Axis, ...]:
    """The planes an ``axis`` value names, in :class:`Axis` order (the one parser of ``axis``).

    Args:
        value: one plane (``"axial"``, an :class:`Axis`), :data:`ALL_PLANES` (``"all"``), or several
            planes as a comma-separated string (``"sagittal,axial"``) or a sequence of names; any case,
            any order, each plane once.

    Returns:
        The planes, in :class:`Axis` order (sagittal, coronal, axial).

    Raises:
        ValueError: ``"axis must be sagittal, coronal, axial, all or a comma-separated list of planes
            ..., not 'x'"``, with ``"(did you mean 'axial'?)"`` when a close spelling exists.
    """
    if isinstance(value, Axis):
        return (value,)
    parts = value.split(",") if isinstance(value, str) else value
    choices = (*names(Axis), ALL_PLANES)
    msg = (
        f"axis must be {', '.join(choices)} or a comma-separated list of planes (e.g. 'sagittal,axial'), "
        f"not {value!r}"
    )
    if not isinstance(parts, (list, tuple)) or not parts:
        raise ValueError(msg)
    keys = [str(p).strip().lower() for p in parts]
    if keys == [ALL_PLANES]:
        return tuple(Axis)
    if ALL_PLANES in keys:
        raise ValueError(msg + f" ({ALL_PLANES!r} stands alone)")
    bad = [k for k in keys if k not in names(Axis)]
    if bad:
        close = difflib.get_close_matches(bad[0], choices, n=1, cutoff=0.6)
        raise ValueError(msg + (f" (did you mean {close[0]!r}?)" if close else ""))
    if len(set(keys)) != len(keys):
        raise ValueError(msg + " (each plane at most once)")
    return tuple(a for a in Axis if a.value in keys)


def format_axis(value: object) -> str:
    """The one spelling of an ``axis`` value (what model records and feature files write).

    Args:
        value: anything :func:`parse_axis` accepts.

    Returns:
        The :class:`Axis` member for one plane (a ``str``), :data:`ALL_PLANES` for all three, else the
        planes comma-separated in :class:`Axis` order (``"sagittal,axial"``).
    """
    planes = parse_axis(value)
    if len(planes) == 1:
        return planes[0]
    return ALL_PLANES if planes == tuple(Axis) else ",".join(p.value for p in planes)


def canonical(value: str, enum: type[Enum]) -> str:
    """``value`` lower-cased with :data:`ALIASES` resolved, without raising (``"3D-CNN"`` -> ``"conv3d"``).

    Args:
        value: a name as a user wrote it.
        enum: the enum whose aliases apply.

    Returns:
        The member's value, or ``value.lower()`` when it names no member.
    """
    key = value.lower()
    member = ALIASES.get(enum, {}).get(key)
    return str(member.value) if member is not None else key


@dataclass(frozen=True)
class TaskSpec:
    """Everything the code needs to know about a task.

    Attributes:
        name: the task.
        dataset: the paper's data set of the task.
        label_column: data-list column with the label (``dx`` or ``age``).
        kind: ``"binary"`` (categorical label mapped to 0/1) or ``"regression"``.
        loss: the loss (``"bce_with_logits"`` or ``"mse"``).
        key_metric: the metric that picks the best epoch (``balanced_accuracy`` or ``mae``).
        lower_is_better: whether a smaller key metric is better.
        prediction_columns: the prediction columns of ``predictions.csv`` (the first is the network's
            output; brain age's ``corrected_age`` / ``brain_age_gap``: ``engine.brain_age``).
        output: what the network's single output means.
        table_metrics: the test metrics of the paper's results table, in its column order.
        unit: unit of the table metrics as shown (``"%"``: fractions shown times 100).
        table_note: the table's footnote on units.
        classes: for binary tasks, allowed values mapped to the numeric label (``{"CN": 0, "AD": 1}``).
        value_range: for regression tasks, inclusive plausible range of the label.
        description: one line for help texts.
    """

    name: Task
    dataset: str
    label_column: str
    kind: str
    loss: str
    key_metric: str
    lower_is_better: bool
    prediction_columns: tuple[str, ...]
    output: str
    table_metrics: tuple[str, ...]
    unit: str
    table_note: str
    classes: dict[str, int] | None = field(default=None)
    value_range: tuple[float, float] | None = None
    description: str = ""

    @property
    def is_binary(self) -> bool:
        """Whether the label is a class (0/1) and the network's output a logit."""
        return self.kind == "binary"

    def better(self, value: float, best: float | None) -> bool:
        """Whether the key metric ``value`` beats ``best``: :func:`is_better` with this task's direction.

        Args:
            value: the new key metric.
            best: the best so far; None when there is none yet.

        Returns:
            False for NaN; True when ``best`` is None; else smaller (``lower_is_better``) or larger.
        """
        return is_better(value, best, self.lower_is_better)


def is_better(value: float, best: float | None, lower_is_better: bool) -> bool:
    """The one "is this epoch better" rule (:meth:`TaskSpec.better` and every best-epoch choice use it).

    Args:
        value: the new metric.
        best: the best so far; None when there is none yet.
        lower_is_better: whether smaller is better.

    Returns:
        False for NaN; True when ``best`` is None; else whether ``value`` is strictly better.
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if lower_is_better else value > best


#: The tasks this project knows, by name.
TASKS: dict[Task, TaskSpec] = {
    Task.ADNI_AD: TaskSpec(
        name=Task.ADNI_AD,
        dataset="ADNI",
        label_column="dx",
        kind="binary",
        loss="bce_with_logits",
        key_metric="balanced_accuracy",
        lower_is_better=False,
        prediction_columns=("probability", "logit", "predicted"),
        output="AD logit (sigmoid: probability of AD)",
        table_metrics=("balanced_accuracy", "f1", "average_precision"),
        unit="%",
        table_note="AD metrics in %.",
        classes={"CN": 0, "AD": 1},
        description="Alzheimer's disease (AD, label 1) vs cognitively normal (CN, label 0)",
    ),
    Task.BRAIN_AGE: TaskSpec(
        name=Task.BRAIN_AGE,
        dataset="UK Biobank",
        label_column="age",
        kind="regression",
        loss="mse",
        key_metric="mae",
        lower_is_better=True,
        prediction_columns=("predicted_age", "corrected_age", "brain_age_gap"),
        output="age in years",
        table_metrics=("mae", "rmse"),
        unit="years",
        table_note="Errors in years.",
        value_range=(0.0, 120.0),
        description="chronological age in years (regression) of healthy subjects",
    ),
}


def task_spec(task: object) -> TaskSpec:
    """The :class:`TaskSpec` of ``task`` (a :class:`Task` or its name).

    Args:
        task: ``"adni_ad"`` or ``"brain_age"``.

    Returns:
        The spec from :data:`TASKS`.

    Raises:
        ValueError: unknown task, naming the known ones (and the closest).
    """
    return TASKS[look_up(task, Task)]


def _check_aliases(aliases: Mapping[type[Enum], Mapping[str, Enum]]) -> None:
    for enum, table in aliases.items():
        clash = set(table) & set(names(enum))
        assert not clash, f"aliases of {enum.__name__} shadow members: {clash}"


_check_aliases(ALIASES)
