"""matplotlib for the package's PNG files: the headless backend, and figures saved atomically and closed.

matplotlib is imported inside these functions (``docs/architecture.md``, import rule 3), so importing
this module costs nothing and the rest of the package works without matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mri_slice_transfer.fileio import atomic_path

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (servers have no display)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` atomically (``savefig`` options passed on) and close it, also on error.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig)
    finally:
        pyplot().close(fig)
    return path
