"""Planning ``grid --preset transfer``: encoder initialisations x label fractions x seeds.

Each row of the preset (an encoder with an ``init``: ``scratch``, ``ssl``, ``imagenet``; ``file`` when
the user gives ``--pretrained-file``) runs once per label fraction (``train.json --train_fraction``)
and seed. ``ssl`` rows start from a :class:`~.runner.PretrainStage`: ``configs/pretrain.json`` run
once per encoder, axis and seed (shared by every fraction) on the training list plus the optional
``--unlabeled`` scans, never the validation or test list (its leakage guard refuses them), into
``<out>/pretrain/<encoder>_<axis>_seed<seed>/``; the encoder file it writes is the run's
``--pretrained``. ``imagenet`` rows run only when torchvision's weights file is already in the cache
(strict load, no silent random fallback); otherwise they are planned as skipped with a note.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mri_slice_transfer.experiments.presets import PRETRAINABLE, ModelConfig
from mri_slice_transfer.experiments.runner import PRETRAIN, GridError, PlannedRun, PretrainStage, plan_runs
from mri_slice_transfer.vocabulary import Init

__all__ = [
    "PRETRAIN_SHARED_KEYS",
    "TransferPlan",
    "imagenet_weights_present",
    "plan_transfer",
    "with_fractions",
]

#: Bundle overrides a pretraining stage shares with the runs it serves (data and input size), so the
#: encoder learns the slices the classifier later sees.
PRETRAIN_SHARED_KEYS: tuple[str, ...] = (
    "dataset_dir",
    "datalist_dir",
    "input_scale",
    "demo_input_scale",
    "channels_last",
    "demo_n",
    "demo_seed",
    "cache",
    "demo_cache",
    "cache_dir",
)


@dataclass(frozen=True)
class TransferPlan:
    """The runs of a transfer grid and what the user should know about them.

    Attributes:
        runs: every run (rows x fractions x seeds), skipped ones included, in table order.
        stages: the pretraining stages, each once.
        notes: why rows were skipped or left out.
    """

    runs: list[PlannedRun]
    stages: list[PretrainStage]
    notes: list[str]


def imagenet_weights_present(encoder: str) -> bool:
    """Whether torchvision's ImageNet weights of ``encoder`` are in the local cache (no download)."""
    if encoder not in PRETRAINABLE:
        return False
    try:
        from mri_slice_transfer.networks.pretrained import imagenet_weights_file

        return imagenet_weights_file(encoder).is_file()
    except (ImportError, ValueError, AttributeError):
        return False


def with_fractions(rows: Sequence[ModelConfig], fractions: Sequence[float]) -> list[ModelConfig]:
    """Every row at every label fraction (row-major).

    Raises:
        GridError: a fraction outside (0, 1].
    """
    try:
        return [replace(r, train_fraction=float(f)).normalised() for r in rows for f in fractions]
    except ValueError as err:
        raise GridError(f"--fractions: {err}") from None


def _stage(
    config: ModelConfig, seed: int, out_dir: Path, base: Mapping[str, Any], pretrain: Mapping[str, Any]
) -> PretrainStage:
    """The pretraining stage of an ``ssl`` row and seed."""
    stage_id = f"{config.encoder}_{config.axis}_seed{seed}"
    overrides = {k: v for k, v in base.items() if k in PRETRAIN_SHARED_KEYS}
    overrides.update({"encoder": config.encoder, "axis": config.axis, **pretrain, "seed": seed})
    encoder_file = str(out_dir.resolve() / PRETRAIN / stage_id / "models" / "encoder.pt")
    return PretrainStage(stage_id, overrides, encoder_file)


def plan_transfer(
    rows: Sequence[ModelConfig],
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    base_overrides: Mapping[str, Any] | None = None,
    pretrain_overrides: Mapping[str, Any] | None = None,
    pretrained_file: str | os.PathLike | None = None,
) -> TransferPlan:
    """Plan a transfer grid: rows (already at their label fractions) x seeds, with pretraining stages.

    Args:
        rows: the rows, e.g. ``with_fractions(preset.rows, fractions)``.
        seeds: the seeds (each ``ssl`` row pretrains once per seed).
        out_dir: the grid folder (stages go to ``<out_dir>/pretrain``).
        base_overrides: overrides of every training run (data, epochs, extras).
        pretrain_overrides: extra overrides of every pretraining stage (``unlabeled``, epochs).
        pretrained_file: adds a ``file`` row per encoder, axis and aggregation of the rows, starting
            from this weights file.

    Returns:
        the :class:`TransferPlan`.

    Raises:
        GridError: ``pretrained_file`` does not exist, or two rows with the same run id.
    """
    out = Path(out_dir)
    base = dict(base_overrides or {})
    rows = [r.normalised() for r in rows]
    notes: list[str] = []
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser().resolve()
        if not path.is_file():
            raise GridError(f"--pretrained-file must be an existing file, not {str(pretrained_file)!r}")
        rows = _add_file_rows(rows)
    stages: dict[str, PretrainStage] = {}

    def weights_for(config: ModelConfig, seed: int) -> str:
        if config.init == Init.FILE:
            return str(path)
        stage = _stage(config, seed, out, base, dict(pretrain_overrides or {}))
        stages.setdefault(stage.stage_id, stage)
        return stage.encoder_file

    runs = plan_runs(rows, seeds, base, strict_pretrained=True, weights_for=weights_for)
    present: dict[str, bool] = {}
    planned = []
    for run in runs:
        c = run.config
        if c.init == Init.SSL:
            run = replace(run, pretrain=stages[_stage(c, run.seed, out, base, {}).stage_id])
        elif c.init == Init.IMAGENET:
            if c.encoder not in present:
                present[c.encoder] = imagenet_weights_present(c.encoder)
            if not present[c.encoder]:
                run = replace(run, skip=_imagenet_note(c.encoder))
                notes.append(run.skip)
        planned.append(run)
    return TransferPlan(planned, list(stages.values()), sorted(set(notes)))


def _imagenet_note(encoder: str) -> str:
    if encoder not in PRETRAINABLE:
        return f"ImageNet rows of {encoder} skipped: {encoder} has no ImageNet weights"
    from mri_slice_transfer.networks.pretrained import imagenet_weights_file

    return (
        f"ImageNet rows of {encoder} skipped: weights not found at {imagenet_weights_file(encoder)} "
        "(put the torchvision file there, or run once with network access, then rerun the grid: the "
        "finished rows are kept)"
    )


def _add_file_rows(rows: list[ModelConfig]) -> list[ModelConfig]:
    """``rows`` plus, after them, a ``file`` row per model and label fraction of ``rows``."""
    out: list[ModelConfig] = []
    seen: set[tuple[Any, ...]] = set()
    for r in rows:
        out.append(r)
        if r.is_conv3d:
            continue
        group = (r.encoder, r.axis, r.aggregation, r.position_encoding, r.train_fraction)
        if group not in seen:
            seen.add(group)
    extra = []
    for enc, axis, agg, pe, frac in sorted(seen, key=lambda g: [str(x) for x in g]):
        extra.append(ModelConfig(enc, axis, agg, pe, init=Init.FILE.value, train_fraction=frac).normalised())
    return out + extra
