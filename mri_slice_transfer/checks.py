"""Checks of voxel values shared by every reader (nibabel transforms, SimpleITK preparation).

Kept free of heavy imports so that preparation workers do not load MONAI/torch just to use them.
"""

from __future__ import annotations

import os

import numpy as np

from mri_slice_transfer.errors import ScanError

__all__ = ["check_voxel_values"]


def check_voxel_values(data: np.ndarray, path: str | os.PathLike | None) -> None:
    """Raise :class:`ScanError` naming ``path`` if ``data`` holds NaN/Inf or is constant (e.g. all zeros).

    Shared by :func:`mri_slice_transfer.transforms.load_scan` and :mod:`mri_slice_transfer.prepare` so both
    report the same problems.
    """
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - np.count_nonzero(finite))
        n_nan = int(np.count_nonzero(np.isnan(data)))
        raise ScanError(
            path,
            f"holds {n_bad} non-finite voxel(s) ({n_nan} NaN, {n_bad - n_nan} Inf) out of {data.size}. "
            "Replace them before use, e.g. `fslmaths in.nii.gz -nan out.nii.gz` (NaN -> 0), and check "
            "the preprocessing step that produced them.",
        )
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        what = "all zeros" if hi == 0 else f"constant (every voxel is {hi:g})"
        raise ScanError(
            path,
            f"is {what}: there is no image in it. Check that the right file was written "
            "(e.g. a failed skull-stripping or registration step leaves an empty image).",
        )
