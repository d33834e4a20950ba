"""Experiments: grids of bundle runs (encoders x settings x seeds), resumable, with paper-style tables.

- :mod:`.presets`: :class:`~.presets.ModelConfig` (one table row) and the paper's grids (``paper-ad``,
  ``paper-brain-age``); light (standard library and the vocabulary only), since the command line's
  options read it.
- :mod:`.runner`: :func:`~.runner.plan_runs`, :func:`~.runner.run_grid` and
  :class:`~.runner.BundleRunner` (one ``python -m monai.bundle run`` subprocess per stage; one folder per
  run; ``done.json`` markers).
- :mod:`.run_folder`: the names of the files in a grid folder and typed records of a run
  (:class:`~.run_folder.TrainMarker`, :class:`~.run_folder.RunInfo`); :mod:`.runner` and :mod:`.summary`
  both use it and do not import each other.
- :mod:`.bootstrap`: bootstrap confidence intervals; :mod:`.summary`: ``results.csv``;
  :mod:`.tables`: ``table.md``; :mod:`.plot`: ``plot.png``.
- the command line ``mri-slice-transfer grid`` is :mod:`mri_slice_transfer.commands.grid`.

This ``__init__`` imports nothing: import a name from its module
(``from mri_slice_transfer.experiments.runner import run_grid``).
"""
