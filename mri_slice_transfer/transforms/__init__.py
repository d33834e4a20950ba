"""MONAI transforms from a NIfTI file to a ``[1, 91, 109, 91]`` tensor on the MNI152 2 mm grid.

Chain (:func:`get_transforms`)::

    LoadScand -> ResampleToTemplated -> NormalizeBraind -> EnsureTyped(float32)

- :class:`LoadScand` (:mod:`.io`): nibabel load, checks, ``[1, X, Y, Z]`` MetaTensor with the file's
  RAS+ mm affine; orientation and spacing untouched.
- :class:`ResampleToTemplated` (:mod:`.spatial`): onto the template grid (91 x 109 x 91, 2 mm, L-A-S) from
  the affine; bit-exact index copy when the grids coincide up to flips/permutations, separable
  anti-aliasing + voxel picking when the template centres are a subset of the source's (1 mm MNI grid),
  else anti-aliased trilinear.
- :class:`NormalizeBraind` (:mod:`.intensity`): z-score over non-zero voxels, background stays 0.

Every unusable input raises :class:`~mri_slice_transfer.errors.ScanError` naming the file; use
:func:`find_scan_error` to get it back from MONAI's ``RuntimeError`` wrapping.
"""

from mri_slice_transfer.transforms.chains import (
    ScanCompose,
    find_scan_error,
    get_inference_transforms,
    get_train_transforms,
    get_transforms,
    load_scan_tensor,
)
from mri_slice_transfer.transforms.intensity import NormalizeBraind, normalize_brain
from mri_slice_transfer.transforms.io import SUPPORTED_SUFFIXES, LoadScand, load_scan
from mri_slice_transfer.transforms.spatial import (
    EXACT_TOLERANCE,
    ResampleToTemplated,
    exact_index_map,
    lattice_index_map,
    resample_to_template,
)

__all__ = [
    "LoadScand",
    "ResampleToTemplated",
    "NormalizeBraind",
    "ScanCompose",
    "get_transforms",
    "get_train_transforms",
    "get_inference_transforms",
    "find_scan_error",
    "load_scan_tensor",
    "load_scan",
    "resample_to_template",
    "normalize_brain",
    "exact_index_map",
    "lattice_index_map",
    "EXACT_TOLERANCE",
    "SUPPORTED_SUFFIXES",
]
