"""Model configurations of an experiment grid, and the paper's grids as presets.

A :class:`ModelConfig` is one row of a results table (encoder, axis, aggregation, positional
encoding, pretrained); a grid runs every row once per seed. The presets are the rows of the paper's
tables (Gupta et al., *Transferring models trained on natural images to 3D MRI via position encoded
slice models*):

- ``paper-ad``: Table 1, AD vs CN on ADNI, bundle ``adni_ad``: the 3D-CNN, then the 2D-CNN (cnn5)
  and ResNet-18 slice models (mean aggregation) with and without positional encoding along the
  sagittal, coronal and axial axes, ResNet-18 from scratch and ImageNet-pretrained; 19 rows.
- ``paper-brain-age``: Table 2, brain age on UK Biobank, bundle ``ukbb_brain_age``: sagittal slices
  only; 3D-CNN, 2D-CNN mean and attention (+- positional encoding), ResNet-18 from scratch,
  ResNet-18 pretrained (+- positional encoding), ResNet-50 pretrained; 9 rows.

Each preset also names its *headline* rows (the comparisons the paper's text draws; see
``/work/shared/reference/architecture.md``), which ``--quick`` runs, and holds the paper's numbers so
tables and docs can show them beside ours.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from mri_slice_transfer import vocabulary
from mri_slice_transfer.vocabulary import (
    PRETRAINABLE_ENCODERS,
    Aggregation,
    Axis,
    Encoder,
    Init,
    Task,
    canonical,
    look_up,
    names,
)

__all__ = [
    "ModelConfig",
    "Preset",
    "PRESETS",
    "CONV3D",
    "expand_grid",
    "get_preset",
    "unavailable",
]

#: Encoder name of the 3D-CNN baseline (it has no slices: axis, aggregation, encoding do not apply).
CONV3D = Encoder.CONV3D.value
#: The built-in encoders that have ImageNet weights (every torchvision / timm encoder has them too:
#: :func:`_pretrainable`, which follows the encoder registry).
PRETRAINABLE = tuple(e.value for e in PRETRAINABLE_ENCODERS)
AXES = names(Axis)
_ENCODER_LABEL = {
    Encoder.CNN5: "2D-CNN",
    Encoder.RESNET18: "2D-ResNet-18",
    Encoder.RESNET34: "2D-ResNet-34",
    Encoder.RESNET50: "2D-ResNet-50",
}


def _pretrainable(encoder: str) -> bool:
    """Whether ``encoder`` has ImageNet weights (the encoder registry's ``has_pretrained_weights``)."""
    if canonical(encoder, Encoder) in names(Encoder):  # built-in: no torch import to plan a grid
        return canonical(encoder, Encoder) in PRETRAINABLE
    from mri_slice_transfer.networks.registry import has_pretrained_weights  # torchvision's names

    try:
        return has_pretrained_weights(encoder)
    except ValueError:  # an unknown name: the grid reports it when it builds the model
        return False


def _is_conv3d(encoder: str) -> bool:
    """Whether ``encoder`` names the 3D-CNN (``conv3d`` or an alias from the vocabulary's ``ALIASES``)."""
    return canonical(encoder, Encoder) == CONV3D


_INIT_TEXT = {
    Init.SCRATCH: "scratch",
    Init.IMAGENET: "ImageNet",
    Init.SSL: "self-supervised",
    Init.FILE: "file",
}


def _check_fraction(value: float) -> float:
    """``value`` as a float in (0, 1]; ``ValueError`` otherwise."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"train_fraction must be a number in (0, 1], not {value!r}") from None
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], not {value!r}")
    return fraction


@dataclass(frozen=True)
class ModelConfig:
    """One model configuration (a table row); the seed is not part of it.

    Attributes:
        encoder: ``"cnn5"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"conv3d"`` (3D-CNN).
        axis: slicing axis (``None`` for the 3D-CNN).
        aggregation: ``"mean"``, ``"max"`` or ``"attention"`` (``None`` for the 3D-CNN).
        position_encoding: ``"none"``, ``"learned"`` or ``"sinusoidal"``.
        pretrained: whether the encoder starts from ImageNet-1K weights (kept for the paper presets;
            ``init`` says the same and more).
        init: where the encoder's weights start (:class:`~mri_slice_transfer.vocabulary.Init`:
            ``scratch``, ``imagenet``, ``ssl``, ``file``); None: from ``pretrained``.
        train_fraction: fraction of the labelled training subjects trained on (``--train_fraction``).

    The run key of a row with the defaults ``init=None`` (or the init ``pretrained`` implies) and
    ``train_fraction=1.0`` is the key it had before these two fields existed, so old grid folders
    resume.
    """

    encoder: str
    axis: str | None = "sagittal"
    aggregation: str | None = "mean"
    position_encoding: str = "none"
    pretrained: bool = False
    init: str | None = None
    train_fraction: float = 1.0

    def normalised(self) -> ModelConfig:
        """The same model with settings that do not apply removed (the 3D-CNN has no slices).

        Raises:
            ValueError: an unknown ``init`` or a ``train_fraction`` outside (0, 1].
        """
        enc = self.encoder.lower()
        fraction = _check_fraction(self.train_fraction)
        if _is_conv3d(enc):
            return ModelConfig(CONV3D, None, None, "none", False, Init.SCRATCH.value, fraction)
        if self.init is None:
            init = Init.IMAGENET if self.pretrained else Init.SCRATCH
        else:
            init = look_up(self.init, Init)
        pretrained = init == Init.IMAGENET
        return ModelConfig(
            enc, self.axis, self.aggregation, self.position_encoding, pretrained, init.value, fraction
        )

    @property
    def is_conv3d(self) -> bool:
        """Whether this is the 3D-CNN baseline."""
        return _is_conv3d(self.encoder)

    def key(self) -> str:
        """A file-name-safe identifier, e.g. ``resnet18_axial_mean_pe-learned_imagenet`` (with
        ``_frac0.25`` appended when the row trains on a fraction of the labels)."""
        c = self.normalised()
        frac = "" if c.train_fraction == 1.0 else f"_frac{c.train_fraction:g}"
        if c.is_conv3d:
            return CONV3D + frac
        return f"{c.encoder}_{c.axis}_{c.aggregation}_pe-{c.position_encoding}_{c.init}{frac}"

    def label(self) -> str:
        """The paper's first column, e.g. ``2D-ResNet-18 (Mean)`` or ``3D-CNN``."""
        c = self.normalised()
        if c.is_conv3d:
            return "3D-CNN"
        name = _ENCODER_LABEL.get(c.encoder, c.encoder)
        return f"{name} ({str(c.aggregation).capitalize()})"

    def describe(self) -> str:
        """One line for progress output."""
        c = self.normalised()
        frac = "" if c.train_fraction == 1.0 else f", {c.train_fraction:.0%} of the training labels"
        if c.is_conv3d:
            return "3D-CNN" + frac
        pe = "" if c.position_encoding == "none" else f" + {c.position_encoding} pos. enc."
        return f"{c.label()} {c.axis}{pe}, {_INIT_TEXT[look_up(c.init, Init)]}{frac}"

    def as_dict(self) -> dict[str, object]:
        """The fields as a dict (normalised)."""
        return asdict(self.normalised())


@dataclass(frozen=True)
class Preset:
    """A named grid: the rows of one of the paper's tables.

    Attributes:
        name: ``--preset`` value.
        bundle: bundle name under ``bundles/``.
        task: the bundle's task.
        title: table caption.
        rows: the configurations, in the paper's order.
        headline: indices into ``rows`` that ``--quick`` runs.
        paper: the paper's test results per row, ``{metric: (mean, std)}`` (AD metrics in %).
        note: what the paper's table says about its setting.
        seeds: seeds of the full grid (the paper: 5 runs per configuration).
        paper_params: the paper's "# Params" column, per row (Table 2 only).
        overrides: bundle overrides that make the bundle follow the paper's recipe where its defaults
            differ (``--override`` on the command line still wins).
        fractions: label fractions every row is run at (``--fractions`` replaces them); ``()``: the
            rows as they are (the paper presets).
        quick_fractions: the fractions of ``--quick``.
        quick_epochs: epochs per run of ``--quick`` (None: the grid's default).
        robustness: severities of a third stage per run that re-scores the best model under the
            robustness overlay (``configs/robustness.json``), e.g. ``"2"``; ``""``: no such stage.
        table_metrics: the test metrics of ``table.md`` (``()``: the task's paper columns).
    """

    name: str
    bundle: str
    task: str
    title: str
    rows: tuple[ModelConfig, ...]
    headline: tuple[int, ...]
    paper: tuple[dict[str, tuple[float, float]], ...]
    note: str = ""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    paper_params: tuple[str, ...] = field(default=())
    overrides: dict[str, object] = field(default_factory=dict)
    fractions: tuple[float, ...] = ()
    quick_fractions: tuple[float, ...] = ()
    quick_epochs: int | None = None
    robustness: str = ""
    table_metrics: tuple[str, ...] = ()

    def headline_rows(self) -> tuple[ModelConfig, ...]:
        """The rows ``--quick`` runs."""
        return tuple(self.rows[i] for i in self.headline)


def _ad_rows() -> tuple[tuple[ModelConfig, ...], tuple[dict[str, tuple[float, float]], ...]]:
    numbers = {  # Table 1: balanced accuracy, F1, average precision (mean, std over 5 seeds), in %
        ("cnn5", "none", False): [
            (87.53, 1.311, 84.40, 1.707, 94.86, 0.946),
            (85.78, 2.811, 81.38, 3.610, 90.57, 2.976),
            (86.34, 1.445, 82.21, 1.573, 90.81, 0.677),
        ],  # noqa: E501
        ("cnn5", "learned", False): [
            (87.05, 1.115, 83.40, 0.873, 93.40, 0.956),
            (85.41, 2.521, 80.62, 2.521, 89.86, 0.771),
            (86.61, 0.942, 81.20, 1.971, 91.44, 2.123),
        ],  # noqa: E501
        ("resnet18", "none", False): [
            (85.71, 4.834, 80.89, 6.111, 91.12, 2.880),
            (85.73, 1.433, 81.30, 1.802, 90.60, 2.544),
            (84.61, 2.099, 79.21, 2.906, 88.95, 1.741),
        ],  # noqa: E501
        ("resnet18", "learned", False): [
            (86.57, 2.871, 81.69, 3.972, 91.80, 2.150),
            (84.34, 1.706, 79.75, 2.258, 90.29, 0.645),
            (86.55, 1.059, 81.39, 1.752, 90.82, 0.701),
        ],  # noqa: E501
        ("resnet18", "none", True): [
            (87.09, 1.192, 82.07, 1.167, 90.80, 1.601),
            (87.31, 0.971, 83.19, 1.518, 91.80, 1.626),
            (88.59, 1.187, 85.10, 1.265, 93.11, 0.482),
        ],  # noqa: E501
        ("resnet18", "learned", True): [
            (87.19, 2.037, 83.16, 2.158, 91.75, 1.291),
            (86.95, 2.750, 82.33, 2.811, 90.96, 1.541),
            (88.60, 2.058, 84.52, 2.389, 92.56, 0.563),
        ],  # noqa: E501
    }

    def res(v: Sequence[float]) -> dict[str, tuple[float, float]]:
        return {"balanced_accuracy": (v[0], v[1]), "f1": (v[2], v[3]), "average_precision": (v[4], v[5])}

    rows = [ModelConfig(CONV3D, None, None)]
    paper = [res((88.40, 0.703, 84.44, 1.028, 92.33, 0.492))]
    for (enc, pe, pt), per_axis in numbers.items():
        for axis, v in zip(AXES, per_axis, strict=True):
            rows.append(ModelConfig(enc, axis, "mean", pe, pt))
            paper.append(res(v))
    return tuple(rows), tuple(paper)


def _brain_age_rows() -> tuple[
    tuple[ModelConfig, ...], tuple[dict[str, tuple[float, float]], ...], tuple[str, ...]
]:
    table = [  # Table 2: MAE, RMSE in years (mean, std over 5 seeds), # params
        (ModelConfig(CONV3D, None, None), (2.792, 0.032, 3.521, 0.023), "~ 3M"),
        (ModelConfig("cnn5", "sagittal", "mean", "none"), (2.826, 0.021, 3.582, 0.027), "~ 1M"),
        (ModelConfig("cnn5", "sagittal", "mean", "learned"), (2.847, 0.051, 3.617, 0.067), "~ 1M"),
        (ModelConfig("cnn5", "sagittal", "attention", "none"), (2.839, 0.009, 3.590, 0.014), "~ 1M"),
        (ModelConfig("cnn5", "sagittal", "attention", "learned"), (2.888, 0.067, 3.655, 0.075), "~ 1M"),
        (ModelConfig("resnet18", "sagittal", "mean", "none", False), (2.911, 0.039, 3.684, 0.043), "~ 12M"),
        (ModelConfig("resnet18", "sagittal", "mean", "none", True), (2.715, 0.029, 3.426, 0.044), "~ 12M"),
        (ModelConfig("resnet18", "sagittal", "mean", "learned", True), (2.721, 0.045, 3.439, 0.053), "~ 12M"),
        (ModelConfig("resnet50", "sagittal", "mean", "none", True), (2.743, 0.018, 3.468, 0.029), "~ 26M"),
    ]
    rows = tuple(r for r, _, _ in table)
    paper = tuple({"mae": (v[0], v[1]), "rmse": (v[2], v[3])} for _, v, _ in table)
    return rows, paper, tuple(p for _, _, p in table)


def _make_presets() -> dict[str, Preset]:
    ad_rows, ad_paper = _ad_rows()
    ba_rows, ba_paper, ba_params = _brain_age_rows()
    ad = Preset(
        name="paper-ad",
        bundle="adni_ad",
        task=Task.ADNI_AD.value,
        title="AD detection (AD vs CN), test set",
        rows=ad_rows,
        # 3D-CNN; 2D-CNN sagittal; ResNet-18 axial from scratch; ResNet-18 axial ImageNet +- pos. enc.
        headline=(0, 1, 9, 15, 18),
        paper=ad_paper,
        note="Paper Table 1 (ADNI): higher is better; model selection on validation balanced accuracy; "
        "mean ± std over 5 seeds.",
        # the paper trains with plain BCE (no class weights) and thresholds at 0.5; the bundle balances
        # classes and chooses the threshold on validation by default
        overrides={"class_balance": False, "decision_threshold": 0.5},
    )
    ba = Preset(
        name="paper-brain-age",
        bundle="ukbb_brain_age",
        task=Task.BRAIN_AGE.value,
        title="Brain age, test set (sagittal slices)",
        rows=ba_rows,
        # 3D-CNN; 2D-CNN mean; ResNet-18 scratch; ResNet-18 ImageNet +- pos. enc.; ResNet-50 ImageNet
        headline=(0, 1, 5, 6, 7, 8),
        paper=ba_paper,
        paper_params=ba_params,
        note="Paper Table 2 (UK Biobank): lower MAE / RMSE is better; model selection on validation "
        "MAE; all sagittal; mean ± std over 5 seeds.",
    )
    return {ad.name: ad, ba.name: ba, TRANSFER.name: TRANSFER, ARCHITECTURES.name: ARCHITECTURES}


def _transfer_rows() -> tuple[ModelConfig, ...]:
    """ResNet-18 axial (mean) from scratch, self-supervised, ImageNet; cnn5 from scratch and
    self-supervised (the ``--quick`` rows: cnn5 is the encoder a 2-core CPU trains in minutes)."""
    resnet = tuple(ModelConfig("resnet18", "axial", "mean", init=i) for i in ("scratch", "ssl", "imagenet"))
    cnn5 = tuple(ModelConfig("cnn5", "axial", "mean", init=i) for i in ("scratch", "ssl"))
    return resnet + cnn5


#: ``grid --preset transfer`` (issue 16): where the slice encoder starts, at several label budgets.
TRANSFER = Preset(
    name="transfer",
    bundle="adni_ad",
    task=Task.ADNI_AD.value,
    title="Encoder initialisation x label fraction (AD vs CN), test set",
    rows=_transfer_rows(),
    headline=(3, 4),
    paper=(),
    note="Self-supervised rows start from pretrain.json run once per seed on the training list "
    "(+ --unlabeled scans), never the validation or test list.",
    seeds=(0, 1, 2),
    fractions=(0.25, 0.5, 1.0),
    quick_fractions=(0.25, 1.0),
)


def _architecture_rows() -> tuple[ModelConfig, ...]:
    """Encoder x aggregation x plane(s), all from scratch (no row depends on downloadable weights)."""
    rows = [ModelConfig(CONV3D, None, None)]
    rows += [ModelConfig("resnet18", "axial", agg) for agg in ("mean", "attention", "transformer")]
    rows += [ModelConfig("cnn5", "axial", agg) for agg in ("mean", "attention", "transformer")]
    rows += [ModelConfig("cnn5", "all", "mean"), ModelConfig("resnet18", "all", "attention")]
    rows += [ModelConfig(enc, "axial", "mean") for enc in ("efficientnet_b0", "regnet_y_400mf")]
    return tuple(rows)


#: ``grid --preset architectures`` (issue 22 item 6): one split and seeds, encoders x aggregations x
#: planes, with a robustness stage at the middle severity.
ARCHITECTURES = Preset(
    name="architectures",
    bundle="adni_ad",
    task=Task.ADNI_AD.value,
    title="Architectures (AD vs CN), test set",
    rows=_architecture_rows(),
    # 3D-CNN; cnn5 mean, attention, transformer; cnn5 three planes; regnet_y_400mf
    headline=(0, 4, 5, 6, 7, 10),
    paper=(),
    note="Every row from scratch, the same subject-level split and seeds; robustness: balanced accuracy "
    "lost at severity 2 of bias_field, gibbs, noise, contrast.",
    seeds=(0, 1, 2),
    quick_epochs=1,
    robustness="2",
    table_metrics=("balanced_accuracy", "roc_auc"),
)

#: The presets by name.
PRESETS: dict[str, Preset] = _make_presets()


def unavailable(config: ModelConfig) -> str:
    """Why this checkout cannot build ``config``; ``""`` when it can.

    An axis is checked with the vocabulary's axis parser when there is one (three-plane models:
    ``"all"`` or a list of planes), else against :class:`Axis`; an encoder outside :class:`Encoder`
    with the encoder registry when the package has one (torchvision / timm names; imports torch only
    for such names), else it is unavailable; the aggregation against :class:`Aggregation`.
    """
    c = config.normalised()
    if c.is_conv3d:
        return ""
    parse_axis = getattr(vocabulary, "parse_axis", None)
    try:
        if parse_axis is not None:
            parse_axis(c.axis)
        elif str(c.axis) not in names(Axis):
            raise ValueError
    except ValueError:
        return f"axis {c.axis!r} is not available in this version of mri_slice_transfer"
    if c.encoder not in names(Encoder, aliases=True):  # built-in names need no torch import
        if importlib.util.find_spec("mri_slice_transfer.networks.registry") is None:
            return f"encoder {c.encoder!r} is not available in this version of mri_slice_transfer"
        from mri_slice_transfer.networks.registry import encoder_name

        try:
            encoder_name(c.encoder)
        except ValueError as err:
            return str(err)
    if str(c.aggregation) not in names(Aggregation):
        return f"aggregation {c.aggregation!r} is not available in this version of mri_slice_transfer"
    return ""


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` names the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def expand_grid(
    encoders: Iterable[str],
    axes: Iterable[str] = ("sagittal",),
    aggregations: Iterable[str] = ("mean",),
    position_encodings: Iterable[str] = ("none",),
    pretrained: Iterable[bool] = (False,),
) -> tuple[list[ModelConfig], list[str]]:
    """Every combination of the settings, without duplicates and impossible models.

    The 3D-CNN appears once (axis, aggregation and positional encoding do not apply to it); encoders
    without ImageNet weights (cnn5, 3D-CNN) are not combined with ``pretrained=True``.

    Args:
        encoders, axes, aggregations, position_encodings, pretrained: the values to combine.

    Returns:
        ``(configs in a stable order, notes on combinations that were dropped)``.
    """
    configs: list[ModelConfig] = []
    notes: list[str] = []
    seen: set[str] = set()
    for enc in encoders:
        for pt in pretrained:
            if pt and not _pretrainable(enc):
                notes.append(f"{enc} has no ImageNet weights: pretrained=true skipped")
                continue
            for axis in axes:
                for agg in aggregations:
                    for pe in position_encodings:
                        c = ModelConfig(enc, axis, agg, pe, pt).normalised()
                        if c.key() not in seen:
                            seen.add(c.key())
                            configs.append(c)
    return configs, sorted(set(notes))
