"""The training recipe of a bundle run: the paper's settings for real data, the demo's without data.

``train.json`` lists both side by side: ``epochs``, ``batch_size``, ``lr``, ``lr_schedule``,
``input_scale`` and ``cache`` (the data path: ``disk`` for real data, ``memory`` for the demo) for
real data, and the same names with ``demo_`` in front for the synthetic demo cohort.
:func:`training_recipe` picks one set: the demo's when neither ``dataset_dir`` nor ``datalist_dir`` is
configured (:func:`is_demo`), else the real-data one. Every other setting is the same for both. The
values may be the raw strings of command-line overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mri_slice_transfer.engine.options import as_optional
from mri_slice_transfer.vocabulary import DataCache, look_up

__all__ = ["RECIPE_FIELDS", "TrainingRecipe", "is_demo", "training_recipe"]

#: The settings that differ between the demo and real data (``train.json``: ``x`` and ``demo_x``).
RECIPE_FIELDS: tuple[str, ...] = ("epochs", "batch_size", "lr", "lr_schedule", "input_scale", "cache")


@dataclass(frozen=True)
class TrainingRecipe:
    """The settings of one training run that depend on whether it is the demo.

    Attributes:
        epochs: number of epochs (the trainer's ``max_epochs``).
        batch_size: scans per batch (per process).
        lr: Adam's learning rate.
        lr_schedule: ``constant`` or ``cosine`` (:func:`~mri_slice_transfer.engine.make_lr_scheduler`).
        input_scale: scale of the template grid (None: not set; evaluation takes the model's).
        cache: the data path of training and validation (:class:`~mri_slice_transfer.vocabulary.DataCache`
            value: ``memory``, ``disk`` or ``none``; :func:`~mri_slice_transfer.engine.make_dataset`).
        demo: whether these are the demo settings.
    """

    epochs: int
    batch_size: int
    lr: float
    lr_schedule: str
    input_scale: float | None
    cache: str = DataCache.MEMORY.value
    demo: bool = False

    def settings(self) -> dict[str, Any]:
        """The recipe as a dict, for the run log."""
        return asdict(self)


def is_demo(datalist_dir: Any = None, dataset_dir: Any = None) -> bool:
    """Whether a run uses the demo cohort: no data folder is configured (``null`` and ``""`` are unset)."""
    return not (as_optional(datalist_dir) or as_optional(dataset_dir))


def training_recipe(
    datalist_dir: Any = None,
    dataset_dir: Any = None,
    real: dict[str, Any] | None = None,
    demo: dict[str, Any] | None = None,
) -> TrainingRecipe:
    """The recipe of this run: ``demo`` without data (:func:`is_demo`), else ``real``.

    Args:
        datalist_dir, dataset_dir: the run's data folders (raw override values accepted).
        real: :data:`RECIPE_FIELDS` for real data.
        demo: :data:`RECIPE_FIELDS` for the demo cohort.

    Returns:
        the chosen settings, converted (``"10"`` -> 10, ``"3e-4"`` -> 0.0003, ``"null"`` -> None).

    Raises:
        ValueError: a setting is missing, not a number where one is needed, or not a data path
            (``cache``); the message names it.
    """
    use_demo = is_demo(datalist_dir, dataset_dir)
    chosen = dict((demo if use_demo else real) or {})
    prefix = "demo_" if use_demo else ""
    missing = [f for f in RECIPE_FIELDS if f not in chosen]
    if missing:
        raise ValueError(f"training recipe without {', '.join(prefix + m for m in missing)}")

    def number(name: str, kind: type) -> Any:
        value = as_optional(chosen[name])
        try:
            return None if value is None and name == "input_scale" else kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{prefix}{name} must be a number, not {chosen[name]!r}") from None

    return TrainingRecipe(
        epochs=number("epochs", int),
        batch_size=number("batch_size", int),
        lr=number("lr", float),
        lr_schedule=str(chosen["lr_schedule"]),
        input_scale=number("input_scale", float),
        cache=look_up(chosen["cache"], DataCache, f"{prefix}cache").value,
        demo=use_demo,
    )
