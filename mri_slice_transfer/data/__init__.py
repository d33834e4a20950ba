"""Data: data lists (``train/val/test.csv``) and synthetic demo cohorts.

- :data:`TASKS`, :func:`read_datalist`, :func:`read_split_datalists`: the data list format of
  ``docs/data_lists.md``, checked up front (every problem reported at once).
- :mod:`.sources` (``build_datalist``) and :mod:`.bids` (``scan_entities``): one CSV of all scans from a
  BIDS dataset, ``prepare``'s manifest or any folder plus a clinical table (``docs/real_data.md``).
- :func:`generate_cohort`, :func:`plan_cohort`: synthetic AD / brain-age cohorts derived from the
  ICBM152 template (``docs/demo_data.md``).

Names are imported lazily (PEP 562), so ``import mri_slice_transfer.data`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib

__all__ = [
    "SPLITS",
    "TASKS",
    "TaskSpec",
    "generate_cohort",
    "plan_cohort",
    "read_datalist",
    "read_split_datalists",
    "task_spec",
]

_WHERE = {
    "SPLITS": "datalist",
    "TASKS": "datalist",
    "TaskSpec": "datalist",
    "read_datalist": "datalist",
    "read_split_datalists": "datalist",
    "task_spec": "datalist",
    "generate_cohort": "synthetic",
    "plan_cohort": "synthetic",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"mri_slice_transfer.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
