"""The trained network of a bundle folder, built from its own record (``models/model.json``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mri_slice_transfer.engine.checkpoint import load_model_weights
from mri_slice_transfer.engine.model_record import ModelRecord, resolve_record

__all__ = ["model_file", "load_trained_model"]


def model_file(bundle: str | os.PathLike) -> Path:
    """``models/model.pt`` of a bundle folder (or ``bundle`` itself when it is a ``.pt`` file)."""
    path = Path(bundle).expanduser()
    if path.suffix == ".pt":
        return path
    if (path / "model.pt").is_file() and path.name == "models":
        return path / "model.pt"
    return path / "models" / "model.pt"


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
        ``(network in eval mode on the CPU, its record)``; the record is completed by
        :func:`~mri_slice_transfer.engine.model_record.resolve_record` (a 0.5.0 record gets the
        bundles' default architecture, with a warning).

    Raises:
        FileNotFoundError: no ``model.pt``.
        ModelRecordError, WeightFileError: a record or weight file that cannot be used (named).
    """
    weights = model_file(bundle)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained model (train the bundle first, or pass its folder)")
    record = resolve_record(weights, **(architecture or {}))
    net = record.network()
    net.load_state_dict(load_model_weights(weights, map_location="cpu"))
    return net.eval(), record
