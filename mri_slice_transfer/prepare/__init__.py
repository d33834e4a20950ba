"""Preparing raw T1 scans for the models: registration to the template with SimpleITK, QC, batches.

A raw scan (NIfTI, MGZ, NRRD, MHA or a DICOM series, any storage orientation) is registered affinely to
the template T1 (mutual information, multi-resolution), resampled onto the 91x109x91 2 mm template grid
and masked with the template brain mask. See ``docs/prepare.md``.

- :func:`prepare_scan` / :func:`prepare_scans`: one scan / a batch (manifest, QC images, resumable).
- :func:`read_scan`, :func:`find_inputs`: reading and finding scans.
- :func:`register_to_template`, :func:`resample_to_template_grid`: the registration itself.

Names are imported lazily, so that importing a submodule does not pull in SimpleITK and pandas. The
command line is :mod:`mri_slice_transfer.commands.prepare`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare_scan": "batch",
    "prepare_scans": "batch",
    "MANIFEST_COLUMNS": "batch",
    "output_name": "batch",
    "read_scan": "io",
    "find_inputs": "io",
    "IMAGE_SUFFIXES": "io",
    "register_to_template": "registration",
    "resample_to_template_grid": "registration",
    "transform_to_ras_matrix": "registration",
    "n4_correct": "registration",
    "Registration": "registration",
    "DEFAULT_DOF": "registration",
    "DOF_CHOICES": "registration",
    "qc_png": "qc",
    "write_overview": "qc",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
