"""Benchmarks: training, inference, data-pipeline and preparation speed, side by side.

One run measures, for every model (cnn5, ResNet-18, ResNet-50 slice models and the 3D-CNN by
default) the reference-style ``baseline`` and the project's ``fast`` path (see :mod:`.specs`):
training and inference scans/s, their ratio, achieved TFLOP/s (from a ``FlopCounterMode`` count) and
the training peak memory; the ResNet-50 memory option (plain vs ``slice_chunk_size``); the data
pipeline (nibabel decode floor, first pass, cached pass); and the preparation of one raw scan. Every
configuration runs in a fresh child process (:mod:`.process`). See ``docs/benchmarks.md``.

- :mod:`.specs`: model names, variants and the default settings (no heavy imports);
- :mod:`.run`: :func:`~.run.run_bench`, the orchestration (one job per measurement, progress lines);
- :mod:`.measure` / :mod:`.pipeline`: the measurements (run in the child processes);
- :mod:`.report`: summaries, targets and the printed table; :mod:`.scaling`: the scaling plot.

The command line is :mod:`mri_slice_transfer.commands.bench`.
"""
