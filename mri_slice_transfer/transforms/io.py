"""Loading a T1 scan from NIfTI into a channel-first :class:`monai.data.MetaTensor`.

:class:`LoadScand` reads the file with nibabel and keeps nibabel's voxel-to-world affine unchanged:
world coordinates are RAS+ millimetres (+x towards the subject's Right, +y Anterior, +z Superior, as in
the NIfTI standard). The voxel data stay in their storage order (no reorientation, no resampling):
orientation and spacing are handled only by
:class:`~mri_slice_transfer.transforms.spatial.ResampleToTemplated`.

Every problem with a file is raised as :class:`~mri_slice_transfer.errors.ScanError`, naming the file
and what to change.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Hashable, Mapping
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from mri_slice_transfer.checks import check_voxel_values
from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.vocabulary import NIFTI_SUFFIXES

__all__ = [
    "SUPPORTED_SUFFIXES",
    "load_scan",
    "LoadScand",
    "missing_problem",
    "permission_problem",
    "read_failure",
]

#: File name endings :func:`load_scan` accepts (NIfTI-1 and NIfTI-2, optionally gzipped).
SUPPORTED_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES
_FORMATS = "NIfTI (.nii or .nii.gz)"
_CONVERT_HINT = (
    "convert it to NIfTI first (e.g. with dcm2niix), and register it to MNI space with "
    "`mri-slice-transfer prepare`"
)


def _has_supported_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in SUPPORTED_SUFFIXES)


def missing_problem(filename: str) -> str:
    """Why a path that does not exist cannot be read: missing, a dangling symbolic link or a link loop.

    Args:
        filename: the path (``os.path.exists`` is False for it).

    Returns:
        the problem text for :class:`~mri_slice_transfer.errors.ScanError`.
    """
    if os.path.islink(filename):
        try:
            os.stat(filename)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symbolic link loop (following it never reaches a file); fix or remove the link"
        return (
            f"is a dangling symbolic link: it points to {os.readlink(filename)!r}, which does not "
            "exist; fix the link or copy the scan in"
        )
    return (
        f"file not found; check the path (relative paths are read from the current directory, {os.getcwd()})"
    )


def permission_problem(exc: BaseException) -> str | None:
    """A "permission denied" problem text if ``exc`` (or an exception it wraps) is an access error.

    Args:
        exc: what a reader raised.

    Returns:
        the problem text for :class:`~mri_slice_transfer.errors.ScanError`, or None for other errors.
    """
    err: BaseException | None = exc
    while err is not None:  # readers may wrap the OS error
        if isinstance(err, PermissionError) or getattr(err, "errno", None) in (errno.EACCES, errno.EPERM):
            return (
                f"permission denied ({type(err).__name__}: {err}); make the file readable for this user "
                "(e.g. `chmod a+r`), or run as a user who may read it"
            )
        err = err.__cause__ or err.__context__
    return None


def read_failure(exc: BaseException) -> str:
    """The problem text for a scan file that exists but could not be read (``ScanError.problem``).

    Args:
        exc: what the reader raised.

    Returns:
        "permission denied ..." for a file the user may not read, else "could not be read ...: the file
        may be corrupt or truncated ..." with the reader's error.
    """
    denied = permission_problem(exc)
    if denied is not None:
        return denied
    return (
        f"could not be read as {_FORMATS}: {type(exc).__name__}: {exc}. The file may be corrupt or "
        "truncated (e.g. an interrupted download or copy), or not a NIfTI image despite its name; "
        "check it opens in a viewer (fsleyes, ITK-SNAP) or re-export it."
    )


def _squeeze_to_3d(data: np.ndarray, path: str) -> np.ndarray:
    """Drop trailing singleton dimensions (4D with one volume) and check that 3 dimensions remain."""
    shape = tuple(int(s) for s in data.shape)
    if data.ndim > 3:
        extra = shape[3:]
        n_volumes = int(np.prod(extra))
        if n_volumes != 1:
            raise ScanError(
                path,
                f"is {data.ndim}D with shape {shape}, i.e. {n_volumes} volumes; one 3D T1 volume is "
                "expected. Extract the volume you want first, e.g. `fslroi in.nii.gz out.nii.gz 0 1` "
                "or in Python `nibabel.load(path).slicer[..., 0]`.",
            )
        data = data.reshape(shape[:3])
    if data.ndim < 3:
        raise ScanError(
            path,
            f"is {data.ndim}D with shape {shape}; a 3D T1 volume is expected (a single slice or a "
            "2D picture cannot be used). Check that you passed the volume, not a screenshot or slice.",
        )
    thin = [ax for ax, n in enumerate(data.shape) if n < 2]
    if thin:
        raise ScanError(
            path,
            f"has shape {tuple(data.shape)}: only one voxel along axis {thin[0]}, so it is a single 2D "
            "slice rather than a 3D volume. Pass the full 3D T1 volume.",
        )
    return data


def load_scan(path: str | PathLike) -> MetaTensor:
    """Load one 3D scan with nibabel, checking it is usable.

    Orientation and spacing are untouched: the data keep their storage order and the affine is
    nibabel's ``img.affine`` (sform if set, else qform), mapping voxel indices to RAS+ mm.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file holding one 3D volume (a 4D file with a single volume is
            accepted and squeezed).

    Returns:
        float32 :class:`~monai.data.MetaTensor` of shape ``[1, X, Y, Z]`` (channel first, voxels in
        storage order) whose ``.affine`` (float64, 4x4) is the file's voxel-to-world affine (RAS+ mm) and
        whose meta holds ``filename_or_obj`` (the path as given), ``original_affine``, ``spatial_shape``
        and ``space="RAS"``.

    Raises:
        ScanError: the file is missing, is not NIfTI or does not load, is not 3D, has a singular affine,
            holds NaN/Inf voxels, or is constant (e.g. all zeros).
    """
    filename = os.fspath(path)
    p = Path(filename)
    if not p.exists():
        raise ScanError(filename, missing_problem(filename))
    if p.is_dir():
        raise ScanError(
            filename,
            f"is a folder, not an image file. Supported formats: {_FORMATS}. If it is a DICOM series, "
            + _CONVERT_HINT
            + ".",
        )
    if not _has_supported_suffix(p):
        raise ScanError(
            filename,
            f"unsupported file type {''.join(p.suffixes) or '(no extension)'!r}; supported formats: "
            f"{_FORMATS}. For other formats (DICOM, .mgz, .nrrd, ...), " + _CONVERT_HINT + ".",
        )
    try:
        img = nib.load(filename)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(f"nibabel read it as {type(img).__name__}, not NIfTI")
        data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged"), dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except ScanError:
        raise
    except Exception as exc:  # nibabel raises many types for broken files (gzip, EOF, header...)
        raise ScanError(filename, read_failure(exc)) from exc

    data = _squeeze_to_3d(data, filename)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(
            filename,
            f"has an unusable voxel-to-world affine (singular or not finite):\n{affine}\n"
            "Fix the header's voxel sizes / sform (e.g. `fslorient`), or re-export the image.",
        )
    header = img.header
    if int(header.get("sform_code", 0)) == 0 and int(header.get("qform_code", 0)) == 0:
        warnings.warn(
            f"{filename}: neither sform nor qform is set, so the orientation is unknown and nibabel's "
            "default affine is used; check the image is really in MNI space.",
            stacklevel=2,
        )
    check_voxel_values(data, filename)

    meta = {
        "filename_or_obj": filename,
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(data.shape, dtype=np.int64),
        "space": "RAS",
    }
    tensor = torch.from_numpy(np.ascontiguousarray(data)[None])
    return MetaTensor(tensor, affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


class LoadScand(MapTransform):
    """Load the NIfTI file named by each key into a ``[1, X, Y, Z]`` float32 MetaTensor.

    Orientation: unchanged (storage order kept; ``.affine`` is nibabel's voxel-to-world RAS+ mm affine,
    *not* converted the way ``monai.transforms.LoadImage`` with ITK would). Spacing: unchanged (read from
    the affine). See :func:`load_scan` for the checks made.

    Args:
        keys: keys whose values are paths (``str`` or ``os.PathLike``) to ``.nii`` / ``.nii.gz`` files.
        allow_missing_keys: do not raise if a key is absent from the data dictionary.

    Raises:
        ScanError: naming the file, for a missing / unreadable / non-3D / NaN / constant image.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_scan(d[key])  # type: ignore[arg-type]
        return d
