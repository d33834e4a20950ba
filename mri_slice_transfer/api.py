"""Use a trained model from Python: :func:`load_model` and :func:`predict`.

A trained bundle (``models/model.pt`` with its record ``models/model.json``, see
:mod:`mri_slice_transfer.engine.model_record`) is loaded without repeating any training option::

    import mri_slice_transfer as mst

    model = mst.load_model("bundles/adni_ad")  # or ".../models/model.pt"
    table = model.predict("scans/")  # a folder, glob, CSV, list of files or tensors
    network, record = model  # the network in eval mode and its record

:meth:`TrainedModel.predict` runs the same transforms, network, decision threshold and row writer as
``inference.json`` (:class:`~mri_slice_transfer.engine.predictions.SafeTransform`,
:class:`~mri_slice_transfer.engine.predictions.PredictionWriter`), so its table has the columns and
values of the inference CSV; an unreadable scan gets a ``status=error`` row and the others are predicted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mri_slice_transfer.engine.model_record import ModelRecord, record_path, resolve_record
from mri_slice_transfer.template import TEMPLATE_SHAPE

__all__ = ["TrainedModel", "load_model", "predict"]

logger = logging.getLogger(__name__)

#: What :func:`predict` accepts: a folder / glob / CSV / file, a list of files, a tensor or a list of tensors.
Inputs = str | os.PathLike | torch.Tensor | Sequence[str | os.PathLike | torch.Tensor]


def weights_path(path: str | os.PathLike) -> Path:
    """The ``model.pt`` of a bundle folder, a ``models`` folder or the file itself.

    Args:
        path: a bundle folder (``bundles/adni_ad``, a ``--bundle_root``), its ``models`` folder, or a
            weights file.

    Returns:
        the weights file's path (it may not exist; :func:`load_model` then says so).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return path / "model.pt" if (path / "model.pt").is_file() else path / "models" / "model.pt"
    return path


@dataclass(frozen=True)
class TrainedModel:
    """A trained network in eval mode with its record; unpacks as ``network, record = model``.

    Attributes:
        network: the network with the trained weights, in eval mode, on ``device``.
        record: what the model is (:class:`~mri_slice_transfer.engine.model_record.ModelRecord`).
        weights: the ``model.pt`` it was loaded from.
        device: where the network runs.
    """

    network: torch.nn.Module
    record: ModelRecord
    weights: Path
    device: torch.device

    def __iter__(self) -> Iterator[Any]:
        return iter((self.network, self.record))

    def predict(self, inputs: Inputs, batch_size: int = 4, decision_threshold: str | float = "validation"):
        """Predict scans; see :func:`predict`."""
        return predict(self, inputs, batch_size=batch_size, decision_threshold=decision_threshold)


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    task: str | None = None,
    channels_last: bool = True,
    **options: Any,
) -> TrainedModel:
    """Load a trained model: the network its record describes, with the recorded weights.

    Args:
        path: a bundle folder, its ``models`` folder or a ``model.pt``; the record is the ``.json``
            beside the weights.
        device: where the network runs.
        task: the task (``adni_ad`` / ``brain_age``); needed only for weights without a record.
        channels_last: 2D conv weights in channels-last memory format, as the bundles build them (so
            that predictions equal the bundle's bit for bit; speed only otherwise).
        options: ``encoder``, ``axis``, ``aggregation``, ``position_encoding``, ``input_scale``: only
            for weights without a (complete) record, which are then loaded with a warning; an option
            that contradicts the record is an error naming both values.

    Returns:
        the :class:`TrainedModel` (network in eval mode, record, weights path, device).

    Raises:
        ModelRecordError: unreadable record, or an option that contradicts it.
        WeightFileError: missing or corrupt weights, or weights whose sha256 differs from the record's.
    """
    from mri_slice_transfer.engine.checkpoint import load_model_weights

    weights = weights_path(path)
    device = torch.device(device)
    state = load_model_weights(weights, map_location=device)
    record = resolve_record(record_path(weights), task=task, **options)
    network = record.network(channels_last=channels_last)
    network.load_state_dict(state)
    network.to(device).eval()
    logger.info("loaded %s (%s, %s)", weights, record.task, record.output)
    return TrainedModel(network=network, record=record, weights=weights, device=device)


def _data_dicts(inputs: Inputs) -> list[dict]:
    """One data dict per scan, as ``inference.json`` builds them (tensors: ``image`` is the tensor)."""
    from mri_slice_transfer.engine.inputs import resolve_inputs

    if isinstance(inputs, (str, os.PathLike)):
        return resolve_inputs(os.fspath(inputs))
    if torch.is_tensor(inputs):
        inputs = list(inputs) if inputs.ndim == 5 else [inputs]
    kinds = {torch.is_tensor(item) for item in inputs}
    if len(kinds) != 1:
        raise ValueError(
            "predict needs at least one input, and all inputs must be files or all tensors, not "
            + ("nothing" if not kinds else "a mix of both")
        )
    items = []
    for i, item in enumerate(inputs):
        if torch.is_tensor(item):
            items.append({"image": _template_tensor(item, i), "image_path": f"<tensor {i}>"})
        else:
            path = os.path.abspath(os.fspath(item))
            items.append({"image": path, "image_path": path})
    return [{**d, "subject_id": "", "session_id": ""} for d in items]


def _template_tensor(x: torch.Tensor, index: int) -> torch.Tensor:
    expected = (1, *TEMPLATE_SHAPE)
    if tuple(x.shape) != expected:
        raise ValueError(
            f"input tensor {index} must have shape {list(expected)} (a scan on the template grid, as "
            f"mri_slice_transfer.transforms.load_scan_tensor returns), not {list(x.shape)}"
        )
    return x.detach().float().cpu()


def _transform(record: ModelRecord, tensors: bool):
    """``inference.json``'s ``preprocessing`` at the record's input scale (tensors: only the resize)."""
    from mri_slice_transfer.engine.predictions import SafeTransform
    from mri_slice_transfer.engine.resize import ScaleInputd
    from mri_slice_transfer.transforms import ScanCompose, get_inference_transforms

    chain = [] if tensors else list(get_inference_transforms().transforms)
    chain.append(ScaleInputd(keys="image", input_scale=record.input_scale))
    return SafeTransform(ScanCompose(chain), spatial_size=record.spatial_size)


def predict(
    model: TrainedModel | str | os.PathLike,
    inputs: Inputs,
    batch_size: int = 4,
    decision_threshold: str | float = "validation",
    amp: bool | str = "auto",
) -> pd.DataFrame:
    """Predict scans with a trained model: one row per scan, like the inference CSV.

    Args:
        model: a :class:`TrainedModel`, or what :func:`load_model` accepts.
        inputs: a folder, glob or CSV (as ``inference.json --input``), a list of scan files, or
            tensors ``[1, 91, 109, 91]`` on the template grid (as
            :func:`~mri_slice_transfer.transforms.load_scan_tensor` returns; a ``[B, 1, 91, 109, 91]``
            batch too), resized to the model's input grid here.
        batch_size: scans per forward pass (results do not depend on it up to float rounding).
        decision_threshold: AD only: ``"validation"`` (the recorded threshold) or a fixed probability.
        amp: mixed precision, as the bundles' ``amp``: ``"auto"`` (bf16 on CPUs with native bf16,
            as ``inference.json`` by default), true or false (fp32).

    Returns:
        the table of ``inference.json``: ``subject_id, session_id, image, probability, logit, predicted``
        (AD) or ``predicted_age`` (brain age; with the model's age-bias correction and an ``age`` column
        in a CSV input also ``corrected_age, brain_age_gap``), ``status, error``; unreadable scans get
        ``status=error``.

    Raises:
        ValueError: no input found, or a tensor of the wrong shape (the message gives both shapes).
    """
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    from mri_slice_transfer.engine.metrics import operating_threshold
    from mri_slice_transfer.engine.precision import make_inferer
    from mri_slice_transfer.engine.predictions import PredictionWriter

    model = model if isinstance(model, TrainedModel) else load_model(model)
    data = _data_dicts(inputs)
    tensors = any(torch.is_tensor(d["image"]) for d in data)
    record = model.record
    threshold = operating_threshold(decision_threshold, record_path(model.weights), record.task.value)
    writer = PredictionWriter(
        record.task.value, predictions_csv=os.devnull, threshold=threshold, record=record
    )
    loader = DataLoader(Dataset(data, _transform(record, tensors)), batch_size=int(batch_size), shuffle=False)
    evaluator = SupervisedEvaluator(
        device=model.device,
        val_data_loader=loader,
        network=model.network,
        inferer=make_inferer(amp=amp, device=model.device),
    )
    evaluator.add_event_handler(Events.STARTED, writer.reset)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, writer.collect)
    evaluator.run()
    n_err = sum(r["status"] != "ok" for r in writer.rows)
    if n_err:
        logger.warning(
            "%d of %d scans could not be predicted; see the 'error' column", n_err, len(writer.rows)
        )
    return pd.DataFrame(writer.rows)
