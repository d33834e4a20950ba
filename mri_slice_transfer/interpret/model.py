"""The trained network of a bundle folder, built from its own record (``models/model.json``)."""

from __future__ import annotations

import os
from typing import Any

import torch

from mri_slice_transfer.api import load_model, weights_path
from mri_slice_transfer.engine.model_record import ModelRecord

__all__ = ["load_trained_model"]


def load_trained_model(
    bundle: str | os.PathLike, architecture: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, ModelRecord]:
    """Build the network a bundle's ``models/model.json`` records and load ``models/model.pt`` into it.

    Args:
        bundle: a bundle folder (with ``models/model.pt`` and ``models/model.json``), its ``models``
            folder, or the ``model.pt`` file.
        architecture: explicit ``encoder``, ``axis``, ``aggregation``, ``position_encoding``,
            ``input_scale`` (None values: as recorded). Needed only for a record without them (0.5.0);
            a value that contradicts the record is an error.

    Returns:
        ``(network in eval mode on the CPU, its record)``, as :func:`mri_slice_transfer.api.load_model`
        loads them (a 0.5.0 record gets the bundles' default architecture, with a warning).

    Raises:
        FileNotFoundError: no ``model.pt``.
        ModelRecordError, WeightFileError: a record or weight file that cannot be used (named).
    """
    weights = weights_path(bundle)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained model (train the bundle first, or pass its folder)")
    model = load_model(weights, device="cpu", channels_last=False, **(architecture or {}))
    return model.network, model.record
