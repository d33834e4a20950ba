"""Seeding so that a run on the CPU repeats exactly."""

from __future__ import annotations

import ast
import random

import numpy as np
import torch
from monai.utils import set_determinism

__all__ = ["seed_everything", "rng_state", "set_rng_state"]


def seed_everything(seed: int | str | None) -> int | None:
    """Seed Python, NumPy and torch (via ``monai.utils.set_determinism``); ``None`` leaves them alone.

    Args:
        seed: the seed (``"0"`` from the command line too); None or ``"null"``: no seeding.

    Returns:
        the seed used, or None.
    """
    if seed is None or (isinstance(seed, str) and seed.strip().lower() in ("", "none", "null")):
        return None
    set_determinism(seed=int(seed))
    return int(seed)


def rng_state() -> dict:
    """Python, NumPy and torch CPU random states, storable with ``torch.save`` (weights-only safe)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": repr(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))
