"""Where a trained model looks: slice importance, Grad-CAM and occlusion maps on the template grid.

One module per concept: :mod:`.geometry` (slice positions in MNI space, maps back to the template grid,
NIfTI with the template affine), :mod:`.slices` (leave-one-slice-out importance and attention weights),
:mod:`.gradcam` and :mod:`.occlusion` (MONAI's ``monai.visualize`` on our networks), :mod:`.plots`
(PNG overlays on the MNI152 template, importance plots), :mod:`.model` (the trained network from its
record), :mod:`.methods` (method names) and :mod:`.run` (a list of scans -> per-scan files,
``interpret.csv`` and group averages). The command line is
:mod:`mri_slice_transfer.commands.interpret`; see ``docs/interpret.md``.

Names are imported lazily (PEP 562), so the command line stays quick to start.
"""

from __future__ import annotations

import importlib

__all__ = [
    "METHODS",
    "GradCAMMap",
    "InterpretResult",
    "OcclusionMap",
    "SliceImportance",
    "interpret_scans",
    "load_trained_model",
    "save_template_nifti",
    "slice_importance",
    "slice_mni_coordinates",
    "to_template_grid",
]

_WHERE = {
    "METHODS": "methods",
    "GradCAMMap": "gradcam",
    "InterpretResult": "run",
    "OcclusionMap": "occlusion",
    "SliceImportance": "slices",
    "interpret_scans": "run",
    "load_trained_model": "model",
    "save_template_nifti": "geometry",
    "slice_importance": "slices",
    "slice_mni_coordinates": "geometry",
    "to_template_grid": "geometry",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"mri_slice_transfer.interpret.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
