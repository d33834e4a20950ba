"""Raw (scanner) space for demo scans: random pose, storage orientation, voxel size and field of view.

A raw scan shows the same brain as the template-space scan, placed in the scanner by a random affine
*pose* (rotations up to +-15 degrees about each axis, translations up to +-20 mm, per-axis scaling
0.97-1.03) and stored on a 1-1.2 mm grid in one of several orientations. The true transform is
written beside each scan as JSON (see :class:`RawGeometry.record`):

``template_from_raw`` (4x4) maps raw scanner world mm (the NIfTI's RAS+ world, i.e. ``raw_affine @
voxel``) to template world mm (MNI152 RAS+). To resample a raw scan onto the template grid, sample it
at ``inv(raw_affine) @ raw_from_template @ TEMPLATE_AFFINE @ template_voxel``.

The transform is the pose only: the subject's own head size and anatomy stay, exactly as they are in
the template-space scan of the same subject and session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mri_slice_transfer.data.anatomy import BRAIN_CENTRE, ScanParams, subject_anatomy
from mri_slice_transfer.template import TEMPLATE_AFFINE, load_template

__all__ = ["ORIENTATIONS", "RawGeometry", "raw_geometry", "raw_points", "rotation_matrix"]

#: Storage orientations drawn for raw scans (nibabel axis codes: direction each voxel axis points to).
ORIENTATIONS: tuple[str, ...] = ("RAS", "LAS", "LPS", "PIR", "ASR", "LIP", "RPI", "SAR")
VOXEL_SIZES: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 1.0), (1.2, 1.0, 1.0), (1.0, 1.1, 1.1))
_DIRECTIONS = {
    "R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1),
}  # fmt: skip
_PHYSICAL_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
MAX_HEAD_SCALE = 1.25  # bound used to crop the work to where the brain can be


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), as a 3x3 matrix."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class RawGeometry:
    """Storage grid and pose of one raw scan."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # raw voxel -> raw world mm
    template_from_raw: np.ndarray  # raw world mm -> template world mm
    orientation: str
    voxel_size: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    scaling: tuple[float, float, float]

    def record(self) -> dict:
        """The JSON record written beside the scan."""

        def m(a: np.ndarray) -> list:
            return [[round(float(v), 10) for v in row] for row in a]

        return {
            "convention": (
                "template_from_raw maps raw scanner world coordinates (mm, RAS+, = raw_affine @ voxel) to "
                "template world coordinates (mm, MNI152 RAS+); raw_from_template is its inverse. "
                "Pose only: head size and anatomy are those of the template-space scan."
            ),
            "template_from_raw": m(self.template_from_raw),
            "raw_from_template": m(np.linalg.inv(self.template_from_raw)),
            "raw_affine": m(self.affine),
            "raw_shape": list(self.shape),
            "template_affine": m(TEMPLATE_AFFINE),
            "template_shape": [91, 109, 91],
            "orientation": self.orientation,
            "voxel_size_mm": list(self.voxel_size),
            "pose": {
                "rotation_deg_xyz": [round(v, 6) for v in self.rotation_deg],
                "translation_mm": [round(v, 6) for v in self.translation_mm],
                "scaling": [round(v, 6) for v in self.scaling],
                "centre_mm": BRAIN_CENTRE.tolist(),
                "definition": "template = centre + R @ diag(scaling) @ (raw - centre - translation)",
            },
        }


def raw_geometry(scan_seed: int) -> RawGeometry:
    """Random pose, orientation, voxel size and field of view of a raw scan (from ``scan_seed``)."""
    rng = np.random.default_rng([scan_seed, 4])
    angles = rng.uniform(-15.0, 15.0, size=3)
    shift = rng.uniform(-20.0, 20.0, size=3)
    scaling = rng.uniform(0.97, 1.03, size=3)
    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    voxel = VOXEL_SIZES[int(rng.integers(len(VOXEL_SIZES)))]
    fov_phys = np.array([176.0, 240.0, 240.0]) + 8.0 * rng.integers(0, 3, size=3)  # LR, AP, SI mm
    offset = rng.uniform(-6.0, 6.0, size=3)

    c = BRAIN_CENTRE
    lin = rotation_matrix(angles) @ np.diag(scaling)
    pose = np.eye(4)
    pose[:3, :3] = lin
    pose[:3, 3] = c - lin @ (c + shift)

    dirs = np.array([_DIRECTIONS[a] for a in orientation], float).T  # columns = voxel axis directions
    vox = np.array(voxel)
    shape = tuple(
        int(np.ceil(fov_phys[_PHYSICAL_AXIS[a]] / v)) for a, v in zip(orientation, vox, strict=True)
    )
    affine = np.eye(4)
    affine[:3, :3] = dirs * vox
    centre_raw = np.linalg.solve(lin, c - pose[:3, 3]) + offset  # brain centre in raw world, jittered
    affine[:3, 3] = centre_raw - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return RawGeometry(
        shape=shape,  # type: ignore[arg-type]
        affine=affine,
        template_from_raw=pose,
        orientation=orientation,
        voxel_size=tuple(float(v) for v in vox),  # type: ignore[arg-type]
        rotation_deg=tuple(float(v) for v in angles),  # type: ignore[arg-type]
        translation_mm=tuple(float(v) for v in shift),  # type: ignore[arg-type]
        scaling=tuple(float(v) for v in scaling),  # type: ignore[arg-type]
    )


def _brain_corners(head_scale: float) -> np.ndarray:
    t = load_template()
    idx = np.argwhere(t.mask)
    lo, hi = idx.min(0) - 6, idx.max(0) + 6  # 12 mm margin for the random deformation
    corners = np.array(
        [[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float
    )
    world = corners @ TEMPLATE_AFFINE[:3, :3].T + TEMPLATE_AFFINE[:3, 3]
    return BRAIN_CENTRE + (world - BRAIN_CENTRE) * max(head_scale, 1.0) * 1.05


def raw_points(geo: RawGeometry, params: ScanParams) -> tuple[tuple[slice, ...], np.ndarray]:
    """The raw-grid block that can hold brain and its voxels' template world coordinates (3, N)."""
    head = subject_anatomy(params).head_scale
    vox_from_template = np.linalg.inv(geo.template_from_raw @ geo.affine)
    corners = _brain_corners(min(head, MAX_HEAD_SCALE))
    ijk = corners @ vox_from_template[:3, :3].T + vox_from_template[:3, 3]
    lo = np.clip(np.floor(ijk.min(0)).astype(int), 0, np.array(geo.shape))
    hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 1, 0, np.array(geo.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grid = np.mgrid[box].reshape(3, -1).astype(np.float64)
    m = geo.template_from_raw @ geo.affine
    return box, m[:3, :3] @ grid + m[:3, 3:4]
