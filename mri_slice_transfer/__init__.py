"""mri_slice_transfer: 2D-slice set networks for 3D brain MRI, as a package and MONAI Bundles.

A newcomer's map:

- :mod:`mri_slice_transfer.template`: the FSL MNI152 2 mm grid every model expects.
- :mod:`mri_slice_transfer.transforms`: MONAI transforms from a NIfTI file to a ``[1, 91, 109, 91]`` tensor.
- :mod:`mri_slice_transfer.networks`: :class:`SliceSetNet` (the paper's model) and :class:`Conv3DNet`.
- :mod:`mri_slice_transfer.data`: data lists and the synthetic demo cohorts.
- :mod:`mri_slice_transfer.cli`: the ``mri-slice-transfer`` command line.
- :func:`load_model` / :func:`predict` (:mod:`mri_slice_transfer.api`): a trained model from Python.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "predict", "TrainedModel"]

#: Imported on first use, so that ``import mri_slice_transfer`` (and ``--help``) stays free of torch.
_API = ("load_model", "predict", "TrainedModel")


def __getattr__(name: str) -> Any:
    if name in _API:
        from mri_slice_transfer import api

        return getattr(api, name)
    raise AttributeError(f"module 'mri_slice_transfer' has no attribute {name!r}")
