"""The run log's summary: device, precision, data, model and how its encoder was initialised."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from mri_slice_transfer.engine.datasets import DataSource
from mri_slice_transfer.engine.distributed import is_main_process, world_size
from mri_slice_transfer.engine.network import encoder_init
from mri_slice_transfer.engine.precision import precision_label
from mri_slice_transfer.engine.recipe import TrainingRecipe
from mri_slice_transfer.engine.resize import scaled_size
from mri_slice_transfer.fileio import atomic_write_json

__all__ = ["log_run_info", "RUN_INFO_ENV"]

#: Environment variable naming a JSON file where :func:`log_run_info` also writes the run's facts as
#: data (``{"encoder_init": ...}``); ``mri-slice-transfer grid`` sets it for its train stage.
RUN_INFO_ENV = "MRI_SLICE_TRANSFER_RUN_INFO"

logger = logging.getLogger("mri_slice_transfer.bundle")


def log_run_info(
    device: torch.device | str,
    amp: bool | str,
    data: DataSource | None = None,
    network: torch.nn.Module | None = None,
    settings: dict[str, Any] | TrainingRecipe | None = None,
) -> str:
    """Log (rank 0) and return one block describing the run.

    When the environment variable :data:`RUN_INFO_ENV` names a file and ``network`` is given, rank 0
    also writes ``{"encoder_init": ...}`` there (atomically), so callers read it as data, not from the log.

    Args:
        device: the run's device.
        amp: mixed precision requested.
        data: the data source (None: not described).
        network: the network (None: its encoder initialisation is not described).
        settings: demo settings to name when the data is the demo cohort (a :class:`TrainingRecipe`
            is shown as ``max_epochs``, ``batch_size``, ``lr``, ``lr_schedule``, ``input_scale``,
            ``input_size``).

    Returns:
        the block, one fact per line.
    """
    if isinstance(settings, TrainingRecipe):
        settings = _recipe_text(settings)
    threads = torch.get_num_threads()
    lines = [f"device: {torch.device(device)} (processes: {world_size()}, torch threads: {threads})"]
    lines.append(f"precision: {precision_label(amp, device)}")
    if data is not None:
        lines.append(data.describe())
        if data.is_demo:
            lines.append(
                "no dataset configured (dataset_dir/datalist_dir empty): using the synthetic DEMO cohort "
                f"with demo settings {data.info} and {settings or {}}; "
                "set --dataset_dir to train on real data"
            )
    init = None
    if network is not None:
        init = encoder_init(network)
        lines.append(f"encoder initialisation: {init}")
        if "unavailable" in init:
            lines.append(
                "pretrained ImageNet weights could not be loaded here: the encoder starts from random init"
            )
    text = "\n".join(lines)
    if is_main_process():
        for line in lines:
            logger.info(line)
        if init is not None and os.environ.get(RUN_INFO_ENV):
            atomic_write_json(os.environ[RUN_INFO_ENV], {"encoder_init": init})
    return text


def _recipe_text(recipe: TrainingRecipe) -> dict[str, Any]:
    """The recipe under the names the run log has always used."""
    batch = "batch_size" if world_size() == 1 else "batch_size_per_process"
    out = {"max_epochs": recipe.epochs, batch: recipe.batch_size, "lr": recipe.lr}
    out.update(lr_schedule=recipe.lr_schedule, input_scale=recipe.input_scale)
    if recipe.input_scale is not None:
        out["input_size"] = scaled_size(recipe.input_scale)
    return out
