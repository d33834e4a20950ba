"""Finding raw scans and reading them into SimpleITK images.

Formats: NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``, ``.nhdr``),
FreeSurfer MGH (``.mgz``, ``.mgh``, via nibabel) and DICOM series (a folder of slices, via GDCM).

Inputs (:func:`find_inputs`): files, folders (searched recursively; a BIDS dataset contributes only its
``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` files; a folder of DICOM slices is one scan) and CSV files with
an ``image`` column (relative paths are read from the CSV's folder).

Every problem with a scan is raised as :class:`~mri_slice_transfer.errors.ScanError` naming the file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk

from mri_slice_transfer.checks import check_voxel_values
from mri_slice_transfer.data.bids import bids_t1w_files
from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.transforms.io import missing_problem, permission_problem
from mri_slice_transfer.vocabulary import IMAGE_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "find_inputs", "read_scan", "is_dicom_folder"]

_NIBABEL_SUFFIXES = (".mgz", ".mgh")
_FORMATS = (
    "NIfTI (.nii/.nii.gz), MGH (.mgz/.mgh), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd) "
    "or a DICOM series folder"
)


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return None


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(folder: Path) -> bool:
    """True if ``folder`` directly holds DICOM slice files (``.dcm``/``.ima`` or the ``DICM`` marker)."""
    try:
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return False
    return any(_looks_like_dicom(p) for p in files[:20])


def _scan_folder(folder: Path) -> list[Path]:
    bids = bids_t1w_files(folder)
    if bids:
        return bids
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        root_p = Path(root)
        if is_dicom_folder(root_p):
            out.append(root_p)
            continue
        out += [root_p / f for f in sorted(files) if not f.startswith(".") and _suffix(Path(f))]
    return out


def _from_csv(csv: Path) -> list[Path]:
    try:
        table = pd.read_csv(csv)
    except Exception as exc:
        raise ScanError(csv, f"could not be read as CSV: {type(exc).__name__}: {exc}") from exc
    if "image" not in table.columns:
        raise ScanError(csv, f"has no 'image' column (columns: {', '.join(map(str, table.columns))})")
    out = []
    for value in table["image"].dropna().astype(str):
        p = Path(value).expanduser()
        out.append(p if p.is_absolute() else csv.parent / p)
    return out


def find_inputs(inputs: Iterable[str | PathLike]) -> list[Path]:
    """Expand files, folders (recursively, BIDS-aware, DICOM folders as one scan) and CSVs into scans.

    Paths that do not exist are kept, so that they get a manifest row saying so.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            out += [p] if is_dicom_folder(p) else _scan_folder(p)
        elif p.suffix.lower() == ".csv":
            out += _from_csv(p)
        else:
            out.append(p)
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _read_dicom(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ScanError(folder, "is a folder but holds no readable DICOM series")
    # Several series in one folder: take the one with the most slices (usually the 3D T1).
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    if len(files) < 2:
        raise ScanError(folder, "holds a DICOM series of one slice; a 3D volume (many slices) is expected")
    reader.SetFileNames(files)
    return reader.Execute()


def _read_nibabel(path: Path) -> sitk.Image:
    img = nib.load(str(path))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        return sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # rejected by the shape check
    affine = np.asarray(img.affine, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise ScanError(path, f"has an unusable voxel-to-world affine:\n{affine}")
    u, _, vt = np.linalg.svd(lps / spacing)  # nearest orthonormal direction matrix (drops any shear)
    direction = u @ vt
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing(tuple(float(s) for s in spacing))
    out.SetDirection(tuple(float(v) for v in direction.ravel()))
    out.SetOrigin(tuple(float(v) for v in (np.array([-1.0, -1.0, 1.0]) * affine[:3, 3])))
    return out


def read_scan(path: str | PathLike) -> sitk.Image:
    """Read one 3D scan as a float32 SimpleITK image (LPS physical space, as SimpleITK always is).

    Raises:
        ScanError: missing path, unsupported format, corrupt file, not 3D (a single volume of a 4D file is
            accepted), fewer than 4 voxels along an axis, non-finite or constant (e.g. all-zero) voxels.
    """
    p = Path(path)
    if not p.exists():
        raise ScanError(p, missing_problem(str(p)))
    try:
        if p.is_file() and not os.access(p, os.R_OK):  # ITK's errors do not say why it cannot open
            raise PermissionError(errno.EACCES, "not readable by this user", str(p))
        if p.is_dir():
            if not is_dicom_folder(p):
                raise ScanError(p, f"is a folder without DICOM slices; supported: {_FORMATS}")
            img = _read_dicom(p)
        else:
            suffix = _suffix(p)
            if suffix is None and not _looks_like_dicom(p):
                raise ScanError(
                    p,
                    f"unsupported file type {''.join(p.suffixes) or '(no extension)'!r}; "
                    f"supported: {_FORMATS}",
                )
            if suffix in _NIBABEL_SUFFIXES:
                img = _read_nibabel(p)
            else:
                try:
                    img = sitk.ReadImage(str(p))
                except RuntimeError:
                    if suffix not in (".nii", ".nii.gz"):
                        raise
                    img = _read_nibabel(p)  # e.g. a sheared sform ITK refuses
    except ScanError:
        raise
    except Exception as exc:
        denied = permission_problem(exc)
        if denied is not None:
            raise ScanError(p, denied) from exc
        msg = str(exc).strip().splitlines()
        detail = next((m for m in msg if "Description" in m or "ERROR" in m), msg[-1] if msg else "")
        raise ScanError(
            p,
            f"could not be read ({type(exc).__name__}: {detail.strip()[:300]}). The file may be corrupt or "
            "truncated, or not an image despite its name; check it opens in a viewer (ITK-SNAP, fsleyes).",
        ) from exc
    return _check(img, p)


def _check(img: sitk.Image, path: Path) -> sitk.Image:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(
            path,
            f"has {img.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "a grey-scale T1 is expected",
        )
    if img.GetDimension() == 4:
        size = img.GetSize()
        if size[3] != 1:
            raise ScanError(
                path, f"is 4D with {size[3]} volumes; one 3D T1 volume is expected (extract it first)"
            )
        img = sitk.Extract(img, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
    size = img.GetSize()
    if img.GetDimension() != 3:
        raise ScanError(
            path,
            f"is {img.GetDimension()}D with size {size}; a 3D T1 volume is expected (a single slice or a 2D "
            "picture cannot be registered)",
        )
    if min(size) < 4:
        raise ScanError(path, f"has size {size}: fewer than 4 voxels along an axis, so it is not a 3D volume")
    img = sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    check_voxel_values(arr, path)
    return img
