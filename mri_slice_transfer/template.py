"""Template space: the FSL MNI152 2 mm grid that every model in this project expects.

The grid is 91 x 109 x 91 voxels of 2 mm, voxel axes pointing Left, Anterior, Superior
(``i`` runs from right to left, as in FSL's ``MNI152_T1_2mm.nii.gz``):

================  ==========================================================
shape             ``TEMPLATE_SHAPE = (91, 109, 91)``
affine            ``[[-2,0,0,90],[0,2,0,-126],[0,0,2,-72],[0,0,0,1]]``
voxel size        2 mm isotropic
world extent      x 90 .. -90, y -126 .. 90, z -72 .. 108 (mm, voxel centres)
================  ==========================================================

:func:`load_template` derives the template T1, grey matter, white matter and brain mask on that grid
from the ICBM152 2009a (nonlinear symmetric) images shipped inside nilearn's wheel, so it works
offline. The derivation (Gaussian anti-aliasing then trilinear sampling at the 2 mm voxel centres)
runs once and is cached as NIfTI under ``cache_dir("template")`` (see :mod:`mri_slice_transfer.paths`;
override the location with ``$MRI_SLICE_TRANSFER_CACHE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from mri_slice_transfer.fileio import atomic_path
from mri_slice_transfer.paths import cache_dir

__all__ = [
    "TEMPLATE_SHAPE",
    "TEMPLATE_AFFINE",
    "TEMPLATE_SPACING",
    "Template",
    "load_template",
    "load_template_1mm",
    "template_nifti",
]

#: Shape of the FSL MNI152 2 mm grid (x, y, z voxels).
TEMPLATE_SHAPE: tuple[int, int, int] = (91, 109, 91)
#: Voxel-to-world (RAS+ mm) affine of the FSL MNI152 2 mm grid.
TEMPLATE_AFFINE: np.ndarray = np.array(
    [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
TEMPLATE_AFFINE.setflags(write=False)
#: Voxel size of the template grid in mm.
TEMPLATE_SPACING: tuple[float, float, float] = (2.0, 2.0, 2.0)

# Bump when the derivation below changes, so stale caches are not reused.
_CACHE_VERSION = "icbm152_2009a_v1"
_IMAGES = ("t1", "gm", "wm", "mask")


@dataclass(frozen=True)
class Template:
    """Template images on one grid (all arrays have ``shape``; world coordinates via ``affine``).

    Attributes:
        t1: T1-weighted template, float32, brain-extracted, intensities in [0, 1].
        gm: grey-matter probability, float32 in [0, 1].
        wm: white-matter probability, float32 in [0, 1].
        mask: brain mask, bool.
        affine: 4x4 voxel-to-world (RAS+ mm) affine.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t1.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def _nilearn_1mm() -> dict[str, nib.Nifti1Image]:
    from nilearn import datasets

    return {
        "t1": datasets.load_mni152_template(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
        "mask": datasets.load_mni152_brain_mask(resolution=1),
    }


@lru_cache(maxsize=1)
def load_template_1mm() -> Template:
    """The ICBM152 2009a images at their native 1 mm (197 x 233 x 189, RAS) from nilearn's wheel."""
    imgs = _nilearn_1mm()
    arrays = {k: np.asarray(v.get_fdata(dtype=np.float32)) for k, v in imgs.items()}
    arrays["mask"] = arrays["mask"] > 0.5
    return Template(affine=imgs["t1"].affine.copy(), **arrays)


def _resample_to_grid(
    data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...]
) -> np.ndarray:
    """Anti-aliased trilinear resampling between two axis-aligned grids (world = affine @ voxel)."""
    from scipy import ndimage

    src_spacing = np.linalg.norm(src_affine[:3, :3], axis=0)
    dst_spacing = np.linalg.norm(dst_affine[:3, :3], axis=0)
    # Gaussian pre-filter: sigma (in source voxels) so the 2 mm grid does not alias 1 mm detail.
    sigma = np.sqrt(np.maximum((dst_spacing / src_spacing) ** 2 - 1.0, 0.0)) / 2.0
    smoothed = ndimage.gaussian_filter(data.astype(np.float32), sigma=sigma, mode="constant")
    vox = np.linalg.inv(src_affine) @ dst_affine
    grid = np.indices(dst_shape, dtype=np.float32).reshape(3, -1)
    coords = vox[:3, :3] @ grid + vox[:3, 3:4]
    out = ndimage.map_coordinates(smoothed, coords, order=1, mode="constant", cval=0.0)
    return out.reshape(dst_shape).astype(np.float32)


def _derive_2mm() -> dict[str, np.ndarray]:
    src = load_template_1mm()
    out = {}
    for key in _IMAGES:
        data = getattr(src, key).astype(np.float32)
        out[key] = _resample_to_grid(data, src.affine, TEMPLATE_AFFINE, TEMPLATE_SHAPE)
    out["mask"] = (out["mask"] > 0.5).astype(np.uint8)
    # Keep the T1 brain-extracted on the 2 mm grid as well, so "non-zero" means "brain".
    out["t1"] = np.clip(out["t1"], 0.0, 1.0) * out["mask"]
    return out


def template_nifti(name: str = "t1") -> Path:
    """Path of a cached template image on the 2 mm grid (``t1``, ``gm``, ``wm`` or ``mask``).

    The files are created on first use; useful for tools that want a file (SimpleITK, nilearn plots).
    """
    if name not in _IMAGES:
        raise ValueError(f"unknown template image {name!r}; choose one of {', '.join(_IMAGES)}")
    folder = cache_dir("template", _CACHE_VERSION)
    paths = {k: folder / f"mni152_2mm_{k}.nii.gz" for k in _IMAGES}
    if not all(p.is_file() for p in paths.values()):
        derived = _derive_2mm()
        for key, path in paths.items():
            dtype = np.uint8 if key == "mask" else np.float32
            img = nib.Nifti1Image(derived[key].astype(dtype), TEMPLATE_AFFINE)
            img.header.set_xyzt_units("mm")
            img.set_qform(TEMPLATE_AFFINE, code=4)  # 4 = MNI152
            img.set_sform(TEMPLATE_AFFINE, code=4)
            with atomic_path(path) as tmp:
                nib.save(img, tmp)
    return paths[name]


@lru_cache(maxsize=1)
def _load_template_cached(folder: str) -> Template:
    arrays = {}
    for key in _IMAGES:
        img = nib.load(template_nifti(key))
        if img.shape != TEMPLATE_SHAPE or not np.allclose(img.affine, TEMPLATE_AFFINE):
            raise RuntimeError(
                f"cached template {template_nifti(key)} is not on the MNI152 2 mm grid; "
                f"delete {Path(folder)} and retry"
            )
        arrays[key] = np.asarray(img.dataobj)
    arrays["mask"] = arrays["mask"].astype(bool)
    for key in ("t1", "gm", "wm"):
        arrays[key] = arrays[key].astype(np.float32)
        arrays[key].setflags(write=False)
    arrays["mask"].setflags(write=False)
    return Template(affine=TEMPLATE_AFFINE.copy(), **arrays)


def load_template() -> Template:
    """The ICBM152 2009a T1, GM, WM and brain mask on the FSL MNI152 2 mm grid.

    Returns:
        a :class:`Template` whose arrays have shape ``(91, 109, 91)`` and whose ``affine`` is
        :data:`TEMPLATE_AFFINE`. Arrays are read-only; copy before editing.
    """
    return _load_template_cached(str(cache_dir("template", _CACHE_VERSION)))
