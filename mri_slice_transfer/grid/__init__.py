"""Experiment grids: many bundle runs (encoders x settings x seeds), resumable, with paper-style tables.

- :mod:`.presets`: :class:`ModelConfig` (one table row) and the paper's grids (``paper-ad``,
  ``paper-brain-age``).
- :mod:`.runner`: :func:`plan_runs`, :func:`run_grid` and :class:`BundleRunner` (one
  ``python -m monai.bundle run`` subprocess per stage; one folder per run; ``done.json`` markers).
- :mod:`.run_folder`: the names of the files in a grid folder and typed records of a run
  (:class:`TrainMarker`, :class:`RunInfo`); :mod:`.runner` and :mod:`.summary` both use it and do not
  import each other.
- :mod:`.bootstrap`: bootstrap confidence intervals; :mod:`.summary`: ``results.csv``;
  :mod:`.tables`: ``table.md``; :mod:`.plot`: ``plot.png``.
- the command line ``mri-slice-transfer grid`` is :mod:`mri_slice_transfer.commands.grid`.

Names are imported lazily (PEP 562), so the command line stays quick to start.
"""

from __future__ import annotations

import importlib

__all__ = [
    "PRESETS",
    "ModelConfig",
    "Preset",
    "PlannedRun",
    "BundleRunner",
    "RunFailed",
    "GridError",
    "bootstrap_ci",
    "expand_grid",
    "format_table",
    "get_preset",
    "plan_runs",
    "plot_results",
    "run_grid",
    "summarize",
]

_WHERE = {
    "PRESETS": "presets",
    "ModelConfig": "presets",
    "Preset": "presets",
    "expand_grid": "presets",
    "get_preset": "presets",
    "PlannedRun": "runner",
    "BundleRunner": "runner",
    "RunFailed": "runner",
    "GridError": "runner",
    "plan_runs": "runner",
    "run_grid": "runner",
    "bootstrap_ci": "bootstrap",
    "summarize": "summary",
    "format_table": "tables",
    "plot_results": "plot",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"mri_slice_transfer.grid.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
