"""The trained model's record, ``models/model.json``: everything needed to use ``models/model.pt``.

:class:`~mri_slice_transfer.engine.handlers.BestModelSaver` writes it atomically after the weights,
whenever the key metric improves. Besides the best epoch, its validation metrics and the weights'
``sha256`` (what 0.5.0 recorded), it holds the architecture (encoder, axis, aggregation, position
encoding, number of slices), the input (scale, grid size, template, normalisation), the output's
meaning, the AD decision threshold (a logit cut), the initial output bias, how the encoder was
initialised, a summary of the training data and the package / torch / MONAI versions.

Evaluation, inference and every Python entry point build the network from it
(:func:`build_network_from_record`, :meth:`ModelRecord.network`): no model option has to be repeated
after training. A record written by 0.5.0 (or by a run with a custom ``network_def``) has no
architecture: :func:`read` returns what is there with :attr:`ModelRecord.complete` False, and
:func:`resolve_record` fills the gaps from explicit options, with a warning.

The JSON keys are the field names of :class:`ModelRecord`; names and values come from
:mod:`mri_slice_transfer.vocabulary`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mri_slice_transfer.engine.brain_age import AgeBias
from mri_slice_transfer.networks.registry import encoder_name
from mri_slice_transfer.template import TEMPLATE_SHAPE
from mri_slice_transfer.vocabulary import (
    TASKS,
    Aggregation,
    Axis,
    Encoder,
    PositionEncoding,
    Task,
    format_axis,
    look_up,
    parse_axis,
    task_spec,
)

__all__ = [
    "ARCHITECTURE_FIELDS",
    "FALLBACK_ARCHITECTURE",
    "FORMAT_VERSION",
    "ModelRecord",
    "ModelRecordError",
    "PREPROCESSING",
    "build_network_from_record",
    "read",
    "record_path",
    "resolve_record",
    "versions",
]

logger = logging.getLogger(__name__)

#: Version of the record's layout; 0 = a 0.5.0 ``model.json`` (epoch, metrics and sha256 only).
FORMAT_VERSION = 1

#: The fields that describe the network and its input; a record without any of them is incomplete.
ARCHITECTURE_FIELDS: tuple[str, ...] = ("encoder", "axis", "aggregation", "position_encoding", "input_scale")

#: The enum of each architecture field (values are checked and normalised with ``look_up``; ``axis``
#: with :func:`~mri_slice_transfer.vocabulary.parse_axis`, which also knows several planes).
_ENUMS = {"encoder": Encoder, "axis": Axis, "aggregation": Aggregation, "position_encoding": PositionEncoding}

#: What a model without a record is assumed to be: the bundles' ``train.json`` model defaults at
#: ``input_scale`` 1 (``tests/test_model_record.py`` checks that they agree). Used only for fields
#: that neither the record nor an explicit option gives, with a warning.
FALLBACK_ARCHITECTURE: dict[Task, dict[str, Any]] = {
    Task.ADNI_AD: {
        "encoder": Encoder.RESNET18,
        "axis": Axis.AXIAL,
        "aggregation": Aggregation.MEAN,
        "position_encoding": PositionEncoding.LEARNED,
        "input_scale": 1.0,
    },
    Task.BRAIN_AGE: {
        "encoder": Encoder.RESNET18,
        "axis": Axis.SAGITTAL,
        "aggregation": Aggregation.MEAN,
        "position_encoding": PositionEncoding.NONE,
        "input_scale": 1.0,
    },
}

#: The preprocessing every model of this package is trained with (``transforms.get_transforms``,
#: then an area resize to ``spatial_size`` when ``input_scale`` is not 1).
PREPROCESSING: dict[str, str] = {
    "template": f"FSL MNI152 2 mm grid, {' x '.join(map(str, TEMPLATE_SHAPE))} voxels (L-A-S)",
    "normalisation": "z-score over brain (non-zero) voxels, background 0 (NormalizeBraind)",
    "resize": "area (monai Resized) to spatial_size when input_scale != 1",
}


class ModelRecordError(ValueError):
    """A model record that cannot be used, or options that contradict it; the message names the file."""


@dataclass(frozen=True)
class ModelRecord:
    """What ``models/model.json`` says about ``models/model.pt``.

    Attributes:
        task: the task the model was trained for.
        epoch: the best epoch (1-based); the weights are that epoch's.
        key_metric: name of the metric that chose it (``val_balanced_accuracy``, ``val_mae``).
        metrics: all validation metrics of that epoch.
        sha256: SHA-256 of ``model.pt``'s bytes (None: not recorded).
        encoder, axis, aggregation, position_encoding: the network (None: not recorded). ``encoder`` is
            an :class:`Encoder` or, for other torchvision / timm encoders, their name (a ``str``);
            ``axis`` is an :class:`Axis`, or for a several-plane model ``"all"`` / ``"sagittal,axial"``
            (:func:`~mri_slice_transfer.vocabulary.format_axis`).
        num_outputs: size of the network's output.
        num_slices: slices per scan along ``axis`` (``{plane: K}`` for several planes; None for the
            3D-CNN or when not recorded).
        input_scale: scale of the template grid the model was trained at (None: not recorded).
        spatial_size: input grid ``(x, y, z)`` at that scale.
        preprocessing: template grid, normalisation and resize (:data:`PREPROCESSING`).
        output: what the output means (:attr:`TaskSpec.output`: an AD logit, or age in years).
        threshold_logit: the AD decision cut (AD when ``logit >= threshold_logit``); None for brain age.
        output_bias: value the output bias was initialised to (brain age: training mean age).
        encoder_init: how the encoder was initialised (``imagenet``, ``random ...``, ``file:...``).
        training_data: demo or user lists, their folder, split sizes, label balance / mean.
        age_bias: brain age: the age-bias correction fitted on the best epoch's validation predictions
            (:class:`~mri_slice_transfer.engine.brain_age.AgeBias`); None for AD and for older records.
        versions: package, torch and MONAI versions of the training run.
        network_options: further network settings that differ from their defaults (the transformer's
            ``transformer_*``, the training's ``slice_keep`` / ``slice_keep_style``); written only when
            not empty, so the default model's record has no such key.
        format_version: :data:`FORMAT_VERSION`; 0 for a record written by 0.5.0.
        path: the file it was read from (None: built in memory).
    """

    task: Task
    epoch: int
    key_metric: str
    metrics: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None
    encoder: Encoder | str | None = None
    axis: str | None = None
    aggregation: Aggregation | None = None
    position_encoding: PositionEncoding | None = None
    num_outputs: int = 1
    num_slices: int | dict[str, int] | None = None
    input_scale: float | None = None
    spatial_size: tuple[int, ...] | None = None
    preprocessing: dict[str, str] = field(default_factory=dict)
    output: str = ""
    threshold_logit: float | None = None
    output_bias: float | None = None
    encoder_init: str | None = None
    training_data: dict[str, Any] = field(default_factory=dict)
    age_bias: AgeBias | None = None
    versions: dict[str, str] = field(default_factory=dict)
    network_options: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    path: Path | None = field(default=None, compare=False)

    @property
    def missing(self) -> tuple[str, ...]:
        """The :data:`ARCHITECTURE_FIELDS` the record does not give."""
        return tuple(name for name in ARCHITECTURE_FIELDS if getattr(self, name) is None)

    @property
    def complete(self) -> bool:
        """Whether the record alone rebuilds the network (no field of :attr:`missing`)."""
        return not self.missing

    def network_kwargs(self) -> dict[str, Any]:
        """Arguments of :func:`~mri_slice_transfer.engine.network.build_network` for this model.

        Raises:
            ModelRecordError: the record is incomplete (see :func:`resolve_record`).
        """
        if not self.complete:
            raise ModelRecordError(
                f"{self.path or 'model record'}: records no {', '.join(self.missing)}; pass them as options "
                "(they must be the training run's)"
            )
        return {
            "encoder": str(self.encoder),
            "axis": str(self.axis),
            "aggregation": self.aggregation.value,
            "position_encoding": self.position_encoding.value,
            "num_outputs": int(self.num_outputs),
            "spatial_size": tuple(self.spatial_size or _scaled(self.input_scale)),
            **self.network_options,
        }

    def network(self, channels_last: bool = False) -> torch.nn.Module:
        """A new, untrained network of this architecture (no pretrained weights are loaded).

        Args:
            channels_last: 2D conv weights in channels-last memory format (speed only).

        Returns:
            the network; load ``model.pt`` into it (``WeightsLoader``, ``load_model_weights``).
        """
        return build_network_from_record(self, channels_last=channels_last)

    def to_json(self) -> dict[str, Any]:
        """The record as written to ``model.json`` (enums as their names, no ``path``)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "path" or (f.name == "network_options" and not self.network_options):
                continue
            value = getattr(self, f.name)
            if isinstance(value, AgeBias):
                value = value.to_json()
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return json.loads(json.dumps(out, default=str))


def _scaled(scale: float) -> tuple[int, ...]:
    from mri_slice_transfer.engine.resize import scaled_size

    return scaled_size(scale)


def record_path(model_path: str | os.PathLike) -> Path:
    """``models/model.pt`` -> ``models/model.json`` (the record beside the weights)."""
    return Path(model_path).with_suffix(".json")


def versions() -> dict[str, str]:
    """Versions of this package, torch and MONAI (recorded with every trained model)."""
    import monai

    from mri_slice_transfer import __version__

    return {"mri_slice_transfer": __version__, "torch": torch.__version__, "monai": monai.__version__}


def _task_of(raw: dict, path: Path) -> Task:
    """The record's task; a 0.5.0 record has none and is recognised by its key metric."""
    if raw.get("task") is not None:
        return _enum(raw["task"], Task, "task", path)
    key = str(raw.get("key_metric", ""))
    for task, spec in TASKS.items():
        if key.endswith(spec.key_metric):
            return task
    raise ModelRecordError(
        f"{path}: records no task and its key_metric {key!r} names none; retrain the bundle"
    )


def _canonical(name: str, value: Any) -> Any:
    """An architecture field's value as the record keeps it: the vocabulary member, or for ``encoder``
    a torchvision / timm name that is not one (:func:`~mri_slice_transfer.networks.registry.encoder_name`)."""
    if name == "encoder":
        return encoder_name(value)
    if name == "axis":
        return format_axis(value)
    return look_up(value, _ENUMS[name], name)


def _enum(value: Any, enum: type, what: str, path: Path) -> Any:
    try:
        return _canonical(what, value) if what in _ENUMS else look_up(value, enum, what)
    except ValueError as err:
        raise ModelRecordError(f"{path}: {err}") from None


def _number(value: Any, what: str, path: Path, kind: type = float) -> Any:
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ModelRecordError(f"{path}: {what} must be a number, not {value!r}") from None
    if kind is float and not math.isfinite(number):
        raise ModelRecordError(f"{path}: {what} must be finite, not {value!r}")
    return number


def read(path: str | os.PathLike) -> ModelRecord:
    """Read a ``model.json`` (this version's, or 0.5.0's without the architecture).

    Args:
        path: the record, or the ``model.pt`` it describes (its ``.json`` sibling is read).

    Returns:
        the record; :attr:`ModelRecord.complete` is False when it lacks architecture fields.

    Raises:
        ModelRecordError: missing or unreadable file, or a field with an invalid value (the message
            names the file, the field and the value).
    """
    path = Path(path)
    path = record_path(path) if path.suffix == ".pt" else path
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelRecordError(f"{path}: model record not found; train the bundle first") from None
    except (OSError, ValueError) as err:
        raise ModelRecordError(f"{path}: unreadable model record ({err}); retrain the bundle") from None
    if not isinstance(raw, dict):
        raise ModelRecordError(f"{path}: a model record must be a JSON object, not {type(raw).__name__}")
    return _from_json(raw, path)


def _from_json(raw: dict, path: Path) -> ModelRecord:
    task = _task_of(raw, path)
    metrics = raw.get("metrics") or {}
    enums = {k: _enum(raw[k], e, k, path) if raw.get(k) is not None else None for k, e in _ENUMS.items()}
    cut = raw.get("threshold_logit", metrics.get("val_threshold_logit"))
    size = raw.get("spatial_size")
    return ModelRecord(
        task=task,
        epoch=_number(raw.get("epoch", 0), "epoch", path, int),
        key_metric=str(raw.get("key_metric", "val_" + task_spec(task).key_metric)),
        metrics=dict(metrics),
        sha256=raw.get("sha256"),
        **enums,
        num_outputs=_number(raw.get("num_outputs", 1), "num_outputs", path, int),
        num_slices=_num_slices(raw.get("num_slices"), path),
        input_scale=_positive_scale(raw.get("input_scale"), path),
        spatial_size=tuple(int(s) for s in size) if size is not None else None,
        preprocessing=dict(raw.get("preprocessing") or {}),
        output=str(raw.get("output") or task_spec(task).output),
        threshold_logit=_number(cut, "threshold_logit", path),
        output_bias=_number(raw.get("output_bias"), "output_bias", path),
        encoder_init=raw.get("encoder_init"),
        training_data=dict(raw.get("training_data") or {}),
        age_bias=_age_bias(raw.get("age_bias"), path),
        versions=dict(raw.get("versions") or {}),
        network_options=_network_options(raw.get("network_options"), path),
        format_version=_number(raw.get("format_version", 0), "format_version", path, int),
        path=path,
    )


def _num_slices(value: Any, path: Path) -> int | dict[str, int] | None:
    """``num_slices``: an int, or ``{plane: K}`` for a several-plane model."""
    if isinstance(value, dict):
        return {str(format_axis(k)): _number(v, f"num_slices[{k!r}]", path, int) for k, v in value.items()}
    return _number(value, "num_slices", path, int)


def _network_options(value: Any, path: Path) -> dict[str, Any]:
    from mri_slice_transfer.engine.network import NETWORK_OPTION_ARGS

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelRecordError(f"{path}: network_options must be a JSON object, not {value!r}")
    unknown = sorted(set(value) - set(NETWORK_OPTION_ARGS))
    if unknown:
        raise ModelRecordError(
            f"{path}: unknown network_options {unknown} (this version knows "
            f"{', '.join(NETWORK_OPTION_ARGS)}); was the model trained with a newer mri_slice_transfer?"
        )
    return dict(value)


def _age_bias(raw: Any, path: Path) -> AgeBias | None:
    if raw is None:
        return None
    try:
        return AgeBias.from_json(raw, f"{path}: age_bias")
    except ValueError as err:
        raise ModelRecordError(str(err)) from None


def _positive_scale(value: Any, path: Path | None) -> float | None:
    scale = _number(value, "input_scale", path, float) if path is not None else float(value)
    if scale is not None and scale <= 0:
        raise ModelRecordError(f"{path}: input_scale must be > 0, not {value!r}")
    return scale


def build_network_from_record(
    record: ModelRecord | str | os.PathLike, channels_last: bool = False
) -> torch.nn.Module:
    """Build the exact (untrained) network a record describes.

    Args:
        record: a :class:`ModelRecord`, or the path of ``model.json`` / ``model.pt``.
        channels_last: 2D conv weights in channels-last memory format (speed only).

    Returns:
        the network, without pretrained weights (the trained weights are loaded afterwards).

    Raises:
        ModelRecordError: the record is incomplete (use :func:`resolve_record` with options).
    """
    from mri_slice_transfer.engine.network import build_network

    if not isinstance(record, ModelRecord):
        record = read(record)
    return build_network(channels_last=channels_last, pretrained=False, **record.network_kwargs())


def _option(value: Any, name: str) -> Any:
    """An explicit option as the record writes it (None: not given; ``"null"`` from the command line too)."""
    from mri_slice_transfer.engine.options import as_optional

    value = as_optional(value)
    if value is None:
        return None
    if name == "input_scale":
        return _positive_scale(value, Path(f"--{name}"))
    return _canonical(name, value)


def _same(name: str, a: Any, b: Any) -> bool:
    return math.isclose(float(a), float(b)) if name == "input_scale" else a == b


def resolve_record(
    record: ModelRecord | str | os.PathLike,
    task: str | None = None,
    encoder: Any = None,
    axis: Any = None,
    aggregation: Any = None,
    position_encoding: Any = None,
    input_scale: Any = None,
) -> ModelRecord:
    """The record of a trained model, completed and checked against explicit options.

    Evaluation and inference call this (``inference.json``: ``model``). An option left empty (None,
    ``"null"``) takes the recorded value. An option that the record also gives must agree with it. For
    a record without the architecture (0.5.0, a custom ``network_def``) or no record at all, the
    options fill the gaps and the rest comes from :data:`FALLBACK_ARCHITECTURE`, with a warning.

    Args:
        record: a :class:`ModelRecord`, or the path of ``model.json`` / ``model.pt``.
        task: the bundle's task; must be the record's.
        encoder, axis, aggregation, position_encoding, input_scale: explicit options (None: as recorded).

    Returns:
        a complete record (``spatial_size`` and ``num_slices`` follow the filled fields).

    Raises:
        ModelRecordError: an option contradicts the record (both values named), the task differs, or
            the record is unreadable.
    """
    if not isinstance(record, ModelRecord):
        path = record_path(record) if Path(record).suffix == ".pt" else Path(record)
        record = read(path) if path.is_file() else _empty_record(task, path)
    if task is not None and look_up(task, Task) != record.task:
        raise ModelRecordError(
            f"{record.path}: the model was trained for task {record.task}, not {look_up(task, Task)}; "
            f"use the {record.task} bundle's configs"
        )
    options = dict(encoder=encoder, axis=axis, aggregation=aggregation)
    options.update(position_encoding=position_encoding, input_scale=input_scale)
    filled, assumed = {}, {}
    for name, given in options.items():
        given, recorded = _option(given, name), getattr(record, name)
        if given is not None and recorded is not None and not _same(name, given, recorded):
            raise ModelRecordError(
                f"--{name} {given} contradicts the trained model: {record.path} records {name} {recorded}. "
                f"Drop --{name} (the record's value is used), or train a model with {name} {given}"
            )
        if recorded is None:
            filled[name] = given if given is not None else FALLBACK_ARCHITECTURE[record.task][name]
            if given is None:
                assumed[name] = filled[name]
    if filled:
        logger.warning(
            "%s records no %s (written by 0.5.0, with a custom network_def, or missing): using %s%s",
            record.path, ", ".join(filled), ", ".join(f"{k} {v}" for k, v in filled.items()),
            f" (assumed: {', '.join(assumed)}; pass --{' --'.join(assumed)} if it was trained otherwise)"
            if assumed else " (from the options)",
        )  # fmt: skip
    return _with_geometry(dataclasses.replace(record, **filled)) if filled else record


def _empty_record(task: str | None, path: Path) -> ModelRecord:
    if task is None:
        raise ModelRecordError(f"{path}: model record not found; train the bundle first")
    t = look_up(task, Task)
    return ModelRecord(
        task=t, epoch=0, key_metric="val_" + task_spec(t).key_metric, format_version=0, path=path
    )


def _with_geometry(record: ModelRecord) -> ModelRecord:
    """``record`` with ``spatial_size`` and ``num_slices`` computed from its input scale and axis."""
    from mri_slice_transfer.networks.slice_set import num_slices

    size = _scaled(record.input_scale)
    planes = [p.value for p in parse_axis(record.axis)]
    slices = {p: num_slices(size, p) for p in planes} if len(planes) > 1 else num_slices(size, planes[0])
    slices = None if record.encoder is Encoder.CONV3D else slices
    return dataclasses.replace(record, spatial_size=size, num_slices=slices)


def training_data_summary(data: Any) -> dict[str, Any]:
    """What a model was trained on: demo or user lists, their folder, split sizes, label balance.

    Args:
        data: the run's :class:`~mri_slice_transfer.engine.datasets.DataSource`.

    Returns:
        ``{"source", "datalist_dir", "sizes", "train_labels", ...}`` (AD: scans per class of the
        training list; brain age: mean, min and max age), plus the demo settings for the demo cohort
        and the label budget (``train_fraction``) when only a fraction of the training list was used.
    """
    spec = task_spec(data.task)
    labels = data.frames["train"]["label"].astype(float)
    if spec.is_binary:
        names = {v: k for k, v in (spec.classes or {}).items()}
        balance = {names.get(int(v), str(v)): int((labels == v).sum()) for v in sorted(labels.unique())}
    else:
        balance = {"mean": float(labels.mean()), "min": float(labels.min()), "max": float(labels.max())}
    return {
        "source": "demo" if data.is_demo else "user data lists",
        "datalist_dir": str(data.datalist_dir),
        "sizes": {split: len(frame) for split, frame in data.frames.items()},
        "train_labels": balance,
        **({"demo": dict(data.info)} if data.is_demo else {}),
        **({"train_fraction": dict(data.train_fraction)} if getattr(data, "train_fraction", None) else {}),
    }


def training_record(
    network: torch.nn.Module,
    task: str,
    epoch: int,
    key_metric: str,
    metrics: dict[str, float],
    sha256: str | None = None,
    input_scale: float | None = None,
    output_bias: float | None = None,
    training_data: dict[str, Any] | None = None,
    age_bias: AgeBias | None = None,
) -> ModelRecord:
    """The record of a network trained by a bundle (what ``BestModelSaver`` writes).

    Args:
        network: the trained network (a DDP wrapper is unwrapped). Built by
            :func:`~mri_slice_transfer.engine.network.build_network`, it carries its ``architecture``;
            any other network gives a record without one (:attr:`ModelRecord.complete` False).
        task: the task.
        epoch, key_metric, metrics, sha256: the best epoch, its key metric, validation metrics and the
            SHA-256 of the saved weights.
        input_scale: the scale of the template grid the network was trained at.
        output_bias: the initial output bias (None: not initialised).
        training_data: :func:`training_data_summary` of the run's data.
        age_bias: brain age: the correction fitted on this epoch's validation predictions.

    Returns:
        the record.
    """
    from mri_slice_transfer.engine.distributed import unwrap
    from mri_slice_transfer.engine.network import encoder_init

    net = unwrap(network)
    arch = dict(getattr(net, "architecture", None) or {})
    t = look_up(task, Task)
    cut = metrics.get("val_threshold_logit") if task_spec(t).is_binary else None
    scale = None if input_scale is None else _positive_scale(input_scale, None)
    record = ModelRecord(
        task=t,
        epoch=int(epoch),
        key_metric=key_metric,
        metrics=dict(metrics),
        sha256=sha256,
        **{k: _canonical(k, arch[k]) if k in arch else None for k in _ENUMS},
        num_outputs=int(arch.get("num_outputs", 1)),
        input_scale=scale,
        preprocessing=dict(PREPROCESSING),
        output=task_spec(t).output,
        threshold_logit=None if cut is None else float(cut),
        output_bias=None if output_bias is None else float(output_bias),
        encoder_init=encoder_init(net),
        training_data=dict(training_data or {}),
        age_bias=age_bias,
        versions=versions(),
        network_options=dict(getattr(net, "network_options", None) or {}),
    )
    return _with_geometry(record) if record.complete else record
