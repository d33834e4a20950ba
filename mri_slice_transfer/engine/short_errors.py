"""Errors a user can act on, reported as one message instead of a long traceback.

``monai.bundle run`` wraps every error raised while running a config in its own ``RuntimeError``,
so a broken weight file or a locked bundle folder ends in some 80 lines of traceback with the useful
line in the middle. :func:`short_errors` (called in the bundles' ``initialize``) installs a
``sys.excepthook`` that, when the uncaught error is or wraps one of :data:`USER_ERRORS`, prints just
that error's type and message; the exit status stays non-zero (1). Set
``MRI_SLICE_TRANSFER_TRACEBACK=1`` for the full traceback. Other errors keep the full traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

from mri_slice_transfer.engine.checkpoint import WeightFileError
from mri_slice_transfer.engine.handlers import NonFiniteLossError
from mri_slice_transfer.engine.lock import RunLockedError
from mri_slice_transfer.engine.model_record import ModelRecordError
from mri_slice_transfer.engine.run_guard import ExistingRunError
from mri_slice_transfer.errors import DataListError, ScanError

__all__ = ["USER_ERRORS", "short_errors", "user_error"]

#: Errors whose message says all a user needs (the file, the problem, what to do).
USER_ERRORS: tuple[type[BaseException], ...] = (
    WeightFileError,
    ModelRecordError,
    RunLockedError,
    ExistingRunError,
    NonFiniteLossError,
    DataListError,
    ScanError,  # an unreadable scan while caching a split: the message names the file and the problem
)


def user_error(exc: BaseException | None) -> BaseException | None:
    """``exc`` or the first of :data:`USER_ERRORS` in its ``__cause__`` / ``__context__`` chain, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, USER_ERRORS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _hook(previous):
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        found = user_error(value)
        if found is None or os.environ.get("MRI_SLICE_TRANSFER_TRACEBACK", "") not in ("", "0"):
            previous(kind, value, tb)
            return
        print(f"ERROR {type(found).__name__}: {found}", file=sys.stderr)
        print("(full traceback: set MRI_SLICE_TRANSFER_TRACEBACK=1)", file=sys.stderr)

    hook.short_errors = True
    return hook


def short_errors() -> None:
    """Install the ``sys.excepthook`` described in the module docstring (once per process)."""
    if not getattr(sys.excepthook, "short_errors", False):
        sys.excepthook = _hook(sys.excepthook)
