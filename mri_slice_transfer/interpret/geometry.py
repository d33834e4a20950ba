"""Where a model's slices and voxels are on the template grid, and NIfTI output on it.

A model trained at ``input_scale`` s sees the template grid area-resized to ``scaled_size(s)``
(:mod:`mri_slice_transfer.engine.resize`; MONAI's ``"area"`` mode is adaptive average pooling). Its
voxel ``k`` (of ``n`` along an axis of ``N`` template voxels) averages the template voxels
``floor(k N / n) .. ceil((k + 1) N / n) - 1``, whose centre :func:`slice_template_voxels` returns
exactly. :func:`to_template_grid` resamples maps back trilinearly with ``align_corners=False``, which
puts voxel ``k`` at ``(k + 0.5) N / n - 0.5``: the same on average, within half a template voxel
(1 mm) of the exact bin centre. At ``input_scale`` 1 both are the identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from mri_slice_transfer.fileio import atomic_path
from mri_slice_transfer.networks.slice_set import AXES
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE

__all__ = [
    "slice_template_voxels",
    "slice_mni_coordinates",
    "to_template_grid",
    "save_template_nifti",
    "stack_slice_maps",
]


def slice_template_voxels(axis: str, num_slices: int) -> np.ndarray:
    """Template voxel coordinate (along ``axis``) of the centre of each of a model's ``num_slices`` slices.

    Args:
        axis: ``"sagittal"``, ``"coronal"`` or ``"axial"``.
        num_slices: ``K``, the model's number of slices along ``axis``.

    Returns:
        ``[K]`` float array; ``0 .. N - 1`` at full scale.
    """
    size = TEMPLATE_SHAPE[AXES[axis]]
    k = np.arange(num_slices)
    start = (k * size) // num_slices
    stop = -((-(k + 1) * size) // num_slices)  # ceil
    return (start + stop - 1) / 2.0


def slice_mni_coordinates(axis: str, num_slices: int) -> np.ndarray:
    """MNI coordinate (mm; x for sagittal, y for coronal, z for axial) of each slice's centre.

    Uses :data:`~mri_slice_transfer.template.TEMPLATE_AFFINE` (the grid is axis-aligned).

    Args:
        axis: ``"sagittal"``, ``"coronal"`` or ``"axial"``.
        num_slices: ``K``, the model's number of slices along ``axis``.

    Returns:
        ``[K]`` float array of world coordinates in mm.
    """
    dim = AXES[axis]
    return TEMPLATE_AFFINE[dim, dim] * slice_template_voxels(axis, num_slices) + TEMPLATE_AFFINE[dim, 3]


def to_template_grid(volume: torch.Tensor | np.ndarray) -> np.ndarray:
    """Resample a map on a model's grid ``[X', Y', Z']`` to the template grid (91 x 109 x 91).

    Args:
        volume: 3D map on the (possibly down-scaled) input grid of a model.

    Returns:
        float32 array of shape :data:`~mri_slice_transfer.template.TEMPLATE_SHAPE` (unchanged values when
        the map is already on it).
    """
    vol = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume).detach().float()
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D map [X, Y, Z], not shape {tuple(vol.shape)}")
    if tuple(vol.shape) != TEMPLATE_SHAPE:
        vol = F.interpolate(vol[None, None], size=TEMPLATE_SHAPE, mode="trilinear", align_corners=False)[0, 0]
    return vol.cpu().numpy().astype(np.float32)


def save_template_nifti(volume: np.ndarray, path: str | os.PathLike, description: str = "") -> Path:
    """Write a map on the template grid as NIfTI with the template affine (qform / sform code MNI152).

    Args:
        volume: array of shape :data:`~mri_slice_transfer.template.TEMPLATE_SHAPE`.
        path: output file (``.nii.gz``); written atomically.
        description: stored in the header's ``descrip`` (at most 80 characters).

    Returns:
        ``path``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.shape != TEMPLATE_SHAPE:
        raise ValueError(f"{path}: a template-grid map must have shape {TEMPLATE_SHAPE}, not {volume.shape}")
    img = nib.Nifti1Image(volume, TEMPLATE_AFFINE)
    img.header.set_xyzt_units("mm")
    img.set_qform(TEMPLATE_AFFINE, code=4)
    img.set_sform(TEMPLATE_AFFINE, code=4)
    img.header["descrip"] = description[:79].encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def stack_slice_maps(maps: torch.Tensor, axis: str, spatial_size: Sequence[int]) -> torch.Tensor:
    """Put per-slice 2D maps ``[K, h, w]`` back into a volume ``[X, Y, Z]`` of ``spatial_size``.

    The inverse of :meth:`~mri_slice_transfer.networks.SliceSetNet.slices` for one scan: each map is
    bilinearly resized to its slice's in-plane size and placed at its slice index along ``axis``.
    """
    dim = AXES[axis]
    plane = [s for i, s in enumerate(spatial_size) if i != dim]
    up = F.interpolate(maps[:, None].float(), size=plane, mode="bilinear", align_corners=False)[:, 0]
    return up.movedim(0, dim)
