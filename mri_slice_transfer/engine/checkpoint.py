"""Weight files with integrity checks: one loader for resume, evaluation and inference.

- ``models/checkpoint.pt`` (:class:`~mri_slice_transfer.engine.handlers.FullCheckpoint`) embeds
  ``sha256``, a digest of everything else it holds (:func:`state_digest`), written in the same atomic
  rename as the data, so a checkpoint is never out of step with its digest.
- ``models/model.pt`` (:class:`~mri_slice_transfer.engine.handlers.BestModelSaver`) stays a plain state
  dict; its record ``models/model.json`` is written after it and holds the file's ``sha256``
  (``sha256sum models/model.pt`` prints the same). A kill between the two writes leaves a model and a
  record of different epochs: the digests then differ and loading refuses instead of pairing the
  model with another epoch's threshold.

:func:`load_weights` reads any of them with ``torch.load(weights_only=True)`` and turns every way a
file can be broken (missing, truncated, random bytes, not a weights file, digest mismatch) into one
:class:`WeightFileError` that names the file and says what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mri_slice_transfer.engine.distributed import unwrap
from mri_slice_transfer.engine.io import atomic_torch_save

__all__ = [
    "DIGEST_KEY",
    "WeightFileError",
    "WeightsLoader",
    "load_model_weights",
    "load_weights",
    "save_checkpoint",
    "state_digest",
]

logger = logging.getLogger(__name__)

#: Key of the digest embedded in a checkpoint and recorded in ``model.json``.
DIGEST_KEY = "sha256"


class WeightFileError(RuntimeError):
    """A weight file that cannot be used; the message names the file, the problem and what to do."""


def _update(digest: Any, obj: Any) -> None:
    """Feed ``obj`` (nested dicts / lists / tensors / numbers / strings) into ``digest``, in order."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _update(digest, key)
            _update(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for value in obj:
            _update(digest, value)
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def state_digest(state: Any) -> str:
    """Hex SHA-256 of a checkpoint's content: tensors (dtype, shape, bytes), keys, numbers, strings."""
    digest = hashlib.sha256()
    _update(digest, state)
    return digest.hexdigest()


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Save ``state`` atomically with its :func:`state_digest` embedded under :data:`DIGEST_KEY`."""
    return atomic_torch_save({**state, DIGEST_KEY: state_digest(state)}, path)


def _fail(path: Path, problem: str, hint: str) -> WeightFileError:
    return WeightFileError(f"{path}: {problem}. {hint}".strip())


def load_weights(
    path: str | os.PathLike,
    map_location: str | torch.device | None = "cpu",
    sha256: str | None = None,
    record: str | os.PathLike | None = None,
    hint: str = "",
) -> Any:
    """Load a weight file with ``torch.load(weights_only=True)``, verifying its digests.

    Args:
        path: the file (``model.pt``, ``checkpoint.pt``, a state dict).
        map_location: passed to ``torch.load``.
        sha256: expected SHA-256 of the file's bytes (from ``record``), checked after loading (so a
            truncated file is reported as such).
        record: the file ``sha256`` comes from, named in the error.
        hint: what the user should do, appended to every error.

    Returns:
        the loaded object; a checkpoint's embedded digest is checked and removed.

    Raises:
        WeightFileError: missing, unreadable, truncated or corrupt file, or a digest mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "weight file not found", hint)
    try:  # one read: the bytes that are loaded are the bytes that are checked
        data = path.read_bytes()
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error means the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _fail(
            path,
            f"cannot be read as a PyTorch weights file ({type(err).__name__}: {reason[:200]}); it is "
            "truncated, corrupt or not a weights-only file",
            hint,
        ) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise _fail(
            path,
            f"its sha256 differs from the one recorded in {record}: the file is corrupt, or the two files "
            "come from different runs or epochs (e.g. a kill between their writes)",
            hint,
        )
    if isinstance(obj, dict) and DIGEST_KEY in obj:
        stored = obj.pop(DIGEST_KEY)
        if stored != state_digest(obj):
            raise _fail(path, "its content does not match the sha256 stored in it: the file is corrupt", hint)
    return obj


def _model_record_digest(record: Path) -> str | None:
    """The ``sha256`` a ``model.json`` records, or None (no record, or one written before 0.5)."""
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8")).get(DIGEST_KEY)
    except (OSError, ValueError, AttributeError) as err:
        raise WeightFileError(f"{record}: unreadable model record ({err}); retrain the bundle") from None


def load_model_weights(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a trained ``model.pt``, checked against the ``sha256`` in the ``model.json`` beside it.

    Args:
        path: the state dict file; its record is ``path`` with the suffix ``.json``.
        map_location: passed to ``torch.load``.

    Returns:
        the state dict.

    Raises:
        WeightFileError: see :func:`load_weights`.
    """
    path = Path(path)
    record = path.with_suffix(".json")
    hint = f"Train the bundle again, or restore {path.name} together with {record.name} from a backup."
    sha256 = _model_record_digest(record)
    if sha256 is None and path.is_file():
        logger.warning("%s: no sha256 recorded in %s, weights loaded unchecked", path, record)
    return load_weights(path, map_location, sha256=sha256, record=record, hint=hint)


def _reraise(engine: Engine, err: BaseException) -> None:
    raise err


class WeightsLoader:
    """Load ``models/model.pt`` into the network when an evaluation or inference engine starts.

    Replaces MONAI's ``CheckpointLoader`` in ``evaluate.json`` and ``inference.json``: the file is
    checked (:func:`load_model_weights`) and a broken one gives one :class:`WeightFileError`.

    Args:
        load_path: the model file.
        network: the network to load into (a DDP wrapper is unwrapped).
        map_location: passed to ``torch.load``.
    """

    def __init__(
        self, load_path: str, network: torch.nn.Module, map_location: str | torch.device | None = "cpu"
    ) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        # first EXCEPTION_RAISED handler: re-raise at once, so that a StatsHandler attached later does
        # not log the traceback of a broken weight file before the error itself is reported
        engine.add_event_handler(Events.EXCEPTION_RAISED, _reraise)

    def __call__(self, engine: Engine | None = None) -> None:
        state = load_model_weights(self.load_path, self.map_location)
        try:
            unwrap(self.network).load_state_dict(state)
        except RuntimeError as err:
            raise WeightFileError(
                f"{self.load_path}: does not fit the configured network "
                f"({' '.join(str(err).split())[:300]}); "
                "pass the --encoder / --axis / --aggregation / --position_encoding it was trained with"
            ) from None
        logger.info("loaded weights from %s", self.load_path)
