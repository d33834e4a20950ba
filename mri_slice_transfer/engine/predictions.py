"""Per-scan predictions: an error-tolerant transform and the writer of predictions CSV + metrics JSON."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from scipy.special import expit

from mri_slice_transfer.engine.brain_age import AgeBias, age_bias_metrics
from mri_slice_transfer.engine.distributed import gather_shards, interleave, is_main_process, shard_path
from mri_slice_transfer.engine.io import write_csv
from mri_slice_transfer.engine.metrics import THRESHOLD, DecisionThreshold, as_threshold, compute_metrics
from mri_slice_transfer.engine.resize import scaled_size
from mri_slice_transfer.fileio import atomic_write_json
from mri_slice_transfer.vocabulary import Task, task_spec

__all__ = ["SafeTransform", "PredictionWriter"]

logger = logging.getLogger(__name__)


class SafeTransform:
    """Run ``transform`` on one data dict; on failure return a blank image marked ``status=error``.

    The blank image still goes through the network (batches stay uniform) but its prediction is not
    reported: its row gets the error text instead, and every other scan is predicted as usual. A data
    dict with a non-empty ``prepare_error`` (its raw scan could not be prepared, see
    :func:`~mri_slice_transfer.engine.raw_inputs.prepare_inputs`) becomes such a row without loading.


    Args:
        transform: the preprocessing chain.
        spatial_size: size of the blank image of an unreadable scan (the network's input grid).
        input_scale: instead of ``spatial_size``: the grid at this scale (:func:`scaled_size`).
    """

    def __init__(
        self,
        transform: Callable[[dict], dict],
        spatial_size: tuple[int, ...] = (91, 109, 91),
        input_scale: float | str | None = None,
    ) -> None:
        self.transform = transform
        self.spatial_size = tuple(spatial_size) if input_scale is None else scaled_size(float(input_scale))

    def __call__(self, data: dict) -> dict:
        if data.get("prepare_error"):
            return self._error(data, str(data["prepare_error"]))
        try:
            out = dict(self.transform(dict(data)))
            image = out["image"]
            out["image"] = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
            out.update(status="ok", error="")
            return out
        except Exception as exc:  # noqa: BLE001 - any unreadable scan becomes an error row
            reason = _reason(exc)
            logger.warning("cannot use %s: %s", data.get("image_path", data.get("image")), reason)
            return self._error(data, reason)

    def _error(self, data: dict, reason: str) -> dict:
        out = {k: v for k, v in data.items() if k != "image"}
        out.update(image=torch.zeros((1, *self.spatial_size)), status="error", error=reason)
        return out


def _reason(exc: BaseException) -> str:
    try:
        from mri_slice_transfer.transforms import find_scan_error

        found = find_scan_error(exc)
    except ImportError:
        found = None
    err = found if found is not None else exc
    while found is None and err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}".replace("\n", " ")


def _non_finite(value: float) -> str:
    """The error text of a scan whose network output is NaN or infinite."""
    return (
        f"non-finite network output ({value}): the model weights may be damaged (restore or retrain "
        "models/model.pt) or the scan's intensities are extreme"
    )


def _age(value: Any) -> float | None:
    """A chronological age from an input CSV's ``age`` cell (None: no column, an empty cell, or not a
    finite number)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return age if math.isfinite(age) else None


def _plain(value: Any) -> Any:
    """A decollated batch value as a plain Python value for the CSV."""
    if torch.is_tensor(value):
        value = value.reshape(-1)[0].item() if value.numel() == 1 else value.tolist()
    return value


class PredictionWriter:
    """Collect one row per scan during an evaluator run and write them (and metrics) at the end.

    Columns: ``subject_id``, ``session_id``, ``image``, ``label`` (evaluation) or ``age`` (brain-age
    inference from a CSV with an ``age`` column), then the task's
    :attr:`~mri_slice_transfer.vocabulary.TaskSpec.prediction_columns`: ``probability``, ``logit`` and
    ``predicted`` (AD) or ``predicted_age``, ``corrected_age`` and ``brain_age_gap`` (brain age; the
    last two only when the model record has an ``age_bias``, empty for scans without a chronological
    age: :class:`~mri_slice_transfer.engine.brain_age.AgeBias`), then ``status``, ``error``. Scans
    prepared on the way (``inference.json --prepare true``) also get ``input`` (the raw scan; ``image``
    is then the prepared one) and, after ``error``, ``prepare_status``, ``flagged``,
    ``prepare_correlation``, ``qc_png`` and ``prepare_note``
    (see :data:`~mri_slice_transfer.engine.raw_inputs.PREPARE_KEYS`).

    Args:
        task: ``"adni_ad"`` (probability of AD) or ``"brain_age"`` (predicted age).
        predictions_csv: output CSV path.
        metrics_json: output metrics path, written when the scans have labels (evaluation).
        threshold: AD decision threshold for ``predicted`` and the metrics: a
            :class:`~mri_slice_transfer.engine.metrics.DecisionThreshold` (AD when ``logit >= cut``; see
            :func:`~mri_slice_transfer.engine.metrics.operating_threshold`) or a probability; recorded
            in the metrics as ``threshold`` (probability) and ``threshold_logit``.
        record: the trained model's :class:`~mri_slice_transfer.engine.model_record.ModelRecord`;
            brain age: its ``age_bias`` gives the corrected columns and metrics (``corrected_mae``,
            ``gap_age_correlation`` before and after). A record without one (an older model) gives
            ``predicted_age`` only, with a warning. None: no correction, no warning.
        shard: ``INDEX/COUNT`` of ``inference.json --shard`` (a SLURM array task): the rows of this
            shard go to ``<predictions_csv stem>.shard-INDEX-of-COUNT.csv``
            (:func:`~mri_slice_transfer.engine.distributed.shard_path`; ``merge-shards`` joins them).
            Under a multi-process launcher rank 0 writes every rank's rows to ``predictions_csv``.
    """

    def __init__(
        self,
        task: str,
        predictions_csv: str,
        metrics_json: str | None = None,
        threshold: float | DecisionThreshold | None = THRESHOLD,
        record: Any = None,
        shard: str | None = None,
    ) -> None:
        self.task = task
        self._binary = task_spec(task).is_binary
        self.columns = task_spec(task).prediction_columns
        self.age_bias: AgeBias | None = getattr(record, "age_bias", None)
        if record is not None and not self._binary and self.age_bias is None:
            logger.warning(
                "%s records no age-bias correction (an older model): writing predicted_age without "
                "corrected_age / brain_age_gap; retrain the bundle to fit one on its validation split",
                getattr(record, "path", None) or "the model record",
            )
        elif self.age_bias is not None and self.age_bias.degenerate:
            logger.warning(
                "%s: %s", getattr(record, "path", None) or "model record", self.age_bias.describe()
            )
        self.threshold = as_threshold(THRESHOLD if threshold is None else threshold)
        self.predictions_csv = Path(shard_path(str(predictions_csv), shard))
        self.metrics_json = Path(metrics_json) if metrics_json else None
        self.rows: list[dict] = []
        self._raw: list[tuple[float, float]] = []  # (network output, label) of readable labelled scans
        self.n_non_finite = 0  # scans whose network output was NaN or infinite
        self._bad_ages: list[str] = []  # "<image>: <cell>" of input age cells that are not numbers

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows.clear()
        self._raw.clear()
        self.n_non_finite = 0
        self._bad_ages.clear()

    def _row(self, item: dict, pred: Any) -> dict:
        row = {k: item.get(k, "") for k in ("subject_id", "session_id")}
        prepared = "prepare_status" in item
        if prepared:
            row["input"] = item.get("input", "")
        row["image"] = item.get("image_path", "")
        if "label" in item:
            row["label"] = float(torch.as_tensor(item["label"]).reshape(-1)[0])
        status, error = item.get("status", "ok"), item.get("error", "")
        value = float(torch.as_tensor(pred).float().reshape(-1)[0]) if status == "ok" else np.nan
        if status == "ok" and not np.isfinite(value):
            status, error, value = "error", _non_finite(value), np.nan
            self.n_non_finite += 1
            logger.warning("%s: %s", row["image"], error)
        if self._binary:  # the logit too: the decision, exact also where probabilities saturate
            row["probability"], row["logit"] = float(expit(value)), value
            row["predicted"] = "" if np.isnan(value) else ("AD" if self.threshold.decide(value) else "CN")
        else:
            row.update(self._age_columns(item, row, value))
        row["status"], row["error"] = status, error
        if prepared:
            prep = _plain(item["prepare_status"])
            row["prepare_status"] = prep
            row["flagged"] = "" if prep == "error" else bool(_plain(item.get("flagged", False)))
            row["prepare_correlation"] = _plain(item.get("prepare_correlation", np.nan))
            for key in ("qc_png", "prepare_note"):
                row[key] = _plain(item.get(key, ""))
        if status == "ok" and "label" in row:
            self._raw.append((value, row["label"]))
        return row

    def _age_columns(self, item: dict, row: dict, value: float) -> dict:
        """Brain age: ``age`` (inference input CSV), predicted, corrected age and gap (:attr:`columns`)."""
        out = {}
        if "label" in row:
            age = row["label"]
        else:
            cell = _plain(item.get(task_spec(Task.BRAIN_AGE).label_column))
            age = _age(cell)
            if age is not None:
                out["age"] = age
            elif cell is not None and str(cell).strip():
                self._bad_ages.append(f"{row['image']}: {cell!r}")
        out[self.columns[0]] = value
        if self.age_bias is not None:
            known = age if age is not None else np.nan
            out[self.columns[1]] = float(self.age_bias.correct(value, known))
            out[self.columns[2]] = float(self.age_bias.gap(value, known))
        return out

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict) or isinstance(output, dict):
            raise TypeError("PredictionWriter needs decollated engine outputs (decollate=True)")
        self.rows.extend(self._row(item, out["pred"]) for item, out in zip(batch, output, strict=True))

    def write(self, engine: Engine | None = None) -> dict | None:
        """Write the predictions CSV (and the metrics JSON over the readable scans).

        Returns:
            the metrics (None without ``metrics_json`` or off the main process).

        Raises:
            RuntimeError: no scan could be predicted (after writing the CSV, whose rows say why).
        """
        self._gather()
        if not is_main_process():
            return None
        write_csv(self.rows, self.predictions_csv)
        n_err = sum(r["status"] != "ok" for r in self.rows)
        logger.info("wrote %d predictions (%d errors) to %s", len(self.rows), n_err, self.predictions_csv)
        self._log_missing_ages()
        metrics = self._write_metrics(n_err) if self.metrics_json is not None else None
        if self.rows and n_err == len(self.rows):
            raise RuntimeError(
                f"no scan could be predicted: all {n_err} failed ({self.n_non_finite} with non-finite "
                f"network outputs); the 'error' column of {self.predictions_csv} says why for each"
            )
        return metrics

    def _gather(self) -> None:
        """Under a multi-process launcher: every rank's rows on each rank, in input order.

        The ranks scored the shards of :func:`~mri_slice_transfer.engine.distributed.shard_records`, so
        row ``i`` comes from rank ``i % world_size``; the labelled outputs for the metrics follow the
        merged rows, so the CSV and the metrics equal a single-process run's.
        """
        parts = gather_shards([self.rows, self._raw, self.n_non_finite, self._bad_ages])
        if len(parts) == 1:
            return
        self.rows = interleave([p[0] for p in parts])
        raw = [iter(p[1]) for p in parts]
        self._raw = [
            next(raw[i % len(parts)])
            for i, row in enumerate(self.rows)
            if row["status"] == "ok" and "label" in row
        ]
        self.n_non_finite = sum(p[2] for p in parts)
        self._bad_ages = [bad for p in parts for bad in p[3]]

    def _log_missing_ages(self) -> None:
        if self.age_bias is None:
            return
        n = sum(r["status"] == "ok" and np.isnan(r[self.columns[2]]) for r in self.rows)
        if n:
            logger.warning(
                "%d scan(s) have no chronological age: their corrected_age and brain_age_gap are empty (the "
                "age-bias correction needs the age); give the input CSV an 'age' column",
                n,
            )
        if self._bad_ages:
            logger.warning(
                "%d age cell(s) of the input are not finite numbers and were left out (%s%s)",
                len(self._bad_ages),
                "; ".join(self._bad_ages[:3]),
                "; ..." if len(self._bad_ages) > 3 else "",
            )

    def _write_metrics(self, n_err: int) -> dict:
        raw = np.array(self._raw, dtype=np.float64).reshape(-1, 2)
        metrics = compute_metrics(self.task, raw[:, 0], raw[:, 1], self.threshold)
        if self._binary:
            metrics["threshold"], metrics["threshold_logit"] = (
                self.threshold.probability,
                self.threshold.logit,
            )
        else:
            metrics.update(age_bias_metrics(raw[:, 0], raw[:, 1], self.age_bias))
        n_skipped = sum(r["status"] != "ok" and "label" in r for r in self.rows)
        metrics.update(n_scans=len(raw), n_errors=n_err, n_skipped=n_skipped, n_non_finite=self.n_non_finite)
        atomic_write_json(self.metrics_json, metrics)
        if n_skipped:
            logger.warning(
                "test metrics are over the %d readable scans: %d scan(s) skipped (%d unreadable, %d with "
                "non-finite network outputs); see the 'error' column of %s",
                len(raw),
                n_skipped,
                n_skipped - self.n_non_finite,
                self.n_non_finite,
                self.predictions_csv,
            )
        logger.info("test metrics: %s -> %s", metrics, self.metrics_json)
        return metrics
