"""Affine registration of a raw T1 scan to the template T1 with SimpleITK, and resampling onto the grid.

Pipeline (:func:`register_to_template`, :func:`resample_to_template_grid`):

1. optional N4 bias-field correction, estimated on a ~6 mm copy and applied to the full image;
2. a ~3 mm copy of the scan (``BinShrink``, i.e. block averaging) is the moving image; the fixed image is
   the template T1 on its 2 mm grid (:func:`mri_slice_transfer.template.template_nifti`), with the
   template brain mask dilated by 8 mm as fixed mask;
3. initialisation: centres of mass (``CenteredTransformInitializer`` MOMENTS) of the template and of the
   scan's foreground. Everything happens in physical (world) space, so the storage orientation of the
   file (RAS, LPS, PIR, oblique, DICOM) does not matter as long as its header is right;
4. rigid stage (``VersorRigid3DTransform``, shrink 4-2, Mattes mutual information, 32 bins, 15 % random
   samples with a fixed seed), then, for 9 or 12 degrees of freedom, a second stage
   (``ScaleVersor3DTransform``: rotation, translation and one scale per axis; or ``AffineTransform``)
   started from the rigid result (shrink 2-1);
5. quality: the final Mattes value, the correlation of the resampled scan with the template T1 inside the
   brain mask, and the scales of the transform; a poor value sets a flag (see :data:`MIN_CORRELATION`).

Transforms follow ITK's convention: they map *template* physical points (LPS mm) to *scan* physical
points (LPS mm), which is what :func:`SimpleITK.Resample` needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from mri_slice_transfer.template import template_nifti

__all__ = [
    "DOF_CHOICES",
    "DEFAULT_DOF",
    "MIN_CORRELATION",
    "Registration",
    "register_to_template",
    "resample_to_template_grid",
    "n4_correct",
    "template_images",
    "transform_to_ras_matrix",
]

log = logging.getLogger(__name__)

#: Degrees of freedom: 6 = rigid, 9 = rotation + translation + per-axis scale, 12 = full affine.
DOF_CHOICES: tuple[int, ...] = (6, 9, 12)
#: Default degrees of freedom (chosen by measurement, see ``docs/prepare.md``).
DEFAULT_DOF = 9
#: Pearson correlation of the prepared scan with the template T1 inside the brain mask below which a
#: registration is flagged (good registrations of T1 scans give > 0.8, see ``docs/prepare.md``).
MIN_CORRELATION = 0.65
#: Plausible range of the per-axis scale of the template-to-scan transform (head size).
SCALE_RANGE = (0.75, 1.35)
MOVING_SPACING_MM = 3.0
SEED = 20260
_SAMPLING = 0.15


@dataclass
class Registration:
    """Result of :func:`register_to_template`.

    Attributes:
        transform: template physical point (LPS mm) -> scan physical point (LPS mm), an
            ``sitk.AffineTransform`` whatever the degrees of freedom.
        dof: degrees of freedom used (6, 9 or 12).
        metric: final Mattes mutual information (negative; lower is better).
        correlation: correlation of the resampled scan with the template T1 inside the brain mask.
        scales: singular values of the transform's matrix (template -> scan size ratio per axis).
        flags: reasons the registration looks poor (empty if it looks fine).
    """

    transform: sitk.Transform
    dof: int
    metric: float
    correlation: float = float("nan")
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
    flags: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


@lru_cache(maxsize=1)
def template_images() -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """``(t1, mask, registration_mask)`` of the template on its 2 mm grid as SimpleITK images."""
    t1 = sitk.Cast(sitk.ReadImage(str(template_nifti("t1"))), sitk.sitkFloat32)
    mask = sitk.Cast(sitk.ReadImage(str(template_nifti("mask"))) > 0, sitk.sitkUInt8)
    reg_mask = sitk.BinaryDilate(mask, [4, 4, 4])
    return t1, mask, reg_mask


def _shrink_to(img: sitk.Image, spacing_mm: float) -> sitk.Image:
    factors = [max(1, int(round(spacing_mm / s))) for s in img.GetSpacing()]
    return sitk.BinShrink(img, factors) if any(f > 1 for f in factors) else img


def _foreground(img: sitk.Image) -> sitk.Image:
    """Voxels above a robust background level (Otsu on the positive part), as a uint8 mask."""
    arr = sitk.GetArrayViewFromImage(img)
    hi = float(np.percentile(arr, 99.5))
    if hi <= 0:
        hi = float(arr.max())
    clipped = sitk.Clamp(img, sitk.sitkFloat32, 0.0, hi)
    return sitk.OtsuThreshold(clipped, 0, 1, 128)


def n4_correct(img: sitk.Image, shrink_mm: float = 6.0, iterations: int = 30) -> sitk.Image:
    """N4 bias-field correction estimated on a ~``shrink_mm`` copy and applied to the full image."""
    positive = sitk.Clamp(img, sitk.sitkFloat32, 0.0, float(np.finfo(np.float32).max))
    small = _shrink_to(positive, shrink_mm)
    mask = _foreground(small)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([iterations] * 3)
    n4.Execute(small, mask)
    # The field is smooth: evaluate it on the coarse grid and interpolate (much cheaper than evaluating
    # the B-spline at every voxel of a 1 mm image).
    resample = sitk.ResampleImageFilter()
    resample.SetReferenceImage(positive)
    resample.SetInterpolator(sitk.sitkLinear)
    resample.SetUseNearestNeighborExtrapolator(True)  # the coarse grid ends half a block inside the image
    log_field = resample.Execute(sitk.Cast(n4.GetLogBiasFieldAsImage(small), sitk.sitkFloat32))
    return sitk.Cast(positive / sitk.Exp(log_field), sitk.sitkFloat32)


def _method(
    shrink: list[int], sigmas: list[float], iterations: int, step: float
) -> sitk.ImageRegistrationMethod:
    _, _, reg_mask = template_images()
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(_SAMPLING, SEED)
    r.SetMetricFixedMask(reg_mask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step,
        minStep=0.01,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(shrink)
    r.SetSmoothingSigmasPerLevel(sigmas)
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def _to_affine(tx: sitk.Transform) -> sitk.AffineTransform:
    tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    out = sitk.AffineTransform(3)
    out.SetCenter(tx.GetCenter())
    out.SetMatrix(tx.GetMatrix())
    out.SetTranslation(tx.GetTranslation())
    return out


def _correlation(small: sitk.Image, transform: sitk.Transform) -> float:
    """Correlation of the scan resampled by ``transform`` with the template T1 inside the brain mask."""
    fixed, mask, _ = template_images()
    resampled = sitk.Resample(small, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    a = sitk.GetArrayViewFromImage(resampled)[inside]
    b = sitk.GetArrayViewFromImage(fixed)[inside]
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0


def _rotations() -> list[tuple[tuple[float, float, float], float]]:
    """Start rotations (axis, angle) tried when the plain start fails: 45-180 degrees about each axis."""
    out = []
    for axis in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)):
        for deg in (45, -45, 90, -90, 180):
            out.append((axis, float(np.deg2rad(deg))))
    return out


def _matrix(tx: sitk.Transform) -> np.ndarray:
    a = _to_affine(tx)
    m = np.array(a.GetMatrix()).reshape(3, 3)
    c = np.array(a.GetCenter())
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = np.array(a.GetTranslation()) + c - m @ c
    return out


def _compose(outer: sitk.Transform | None, inner: sitk.Transform) -> sitk.AffineTransform:
    """``outer(inner(x))`` as one affine transform (``outer=None``: just ``inner``)."""
    if outer is None:
        return _to_affine(inner)
    m = _matrix(outer) @ _matrix(inner)
    out = sitk.AffineTransform(3)
    out.SetMatrix(tuple(m[:3, :3].ravel()))
    out.SetTranslation(tuple(m[:3, 3]))
    return out


def _register(
    fixed: sitk.Image,
    small: sitk.Image,
    start: sitk.VersorRigid3DTransform,
    dof: int,
    turn: sitk.Transform | None = None,
) -> tuple[sitk.AffineTransform, float]:
    """Rigid then ``dof`` stage from ``start``; ``turn``: a fixed transform applied after (moving side).

    A large start rotation is passed as ``turn`` (ITK's moving initial transform) rather than inside the
    versor, whose parameterisation breaks down near 180 degrees.
    """
    rigid = sitk.VersorRigid3DTransform(start)
    r = _method([4, 2], [4.0, 2.0], 100, 2.0)
    if turn is not None:
        r.SetMovingInitialTransform(turn)
    r.SetInitialTransform(rigid, inPlace=True)
    r.Execute(fixed, small)
    metric = r.GetMetricValue()
    final: sitk.Transform = rigid
    if dof != 6:
        if dof == 9:
            tx = sitk.ScaleVersor3DTransform()
            tx.SetCenter(rigid.GetCenter())
            tx.SetRotation(rigid.GetVersor())
            tx.SetTranslation(rigid.GetTranslation())
        else:
            tx = _to_affine(rigid)
        r = _method([2, 1], [2.0, 0.0], 100, 1.0)
        if turn is not None:
            r.SetMovingInitialTransform(turn)
        r.SetInitialTransform(tx, inPlace=True)
        r.Execute(fixed, small)
        metric = r.GetMetricValue()
        final = tx
    return _compose(turn, final), float(metric)


def register_to_template(moving: sitk.Image, dof: int = DEFAULT_DOF) -> Registration:
    """Register a 3D scan (float32 SimpleITK image, any orientation) to the template T1.

    If the result matches the template poorly (correlation below :data:`MIN_CORRELATION`), the
    registration is tried again from 15 start rotations of the scan about its centre of mass (45, 90 and
    180 degrees about each axis; the one that correlates best after a short coarse rigid run is refined)
    and the better of the two results is kept. A result that is still poor is returned with ``flags`` set.

    Args:
        moving: the scan (full resolution; it is block-averaged to ~3 mm here).
        dof: 6 (rigid), 9 (rigid + per-axis scale) or 12 (affine).

    Returns:
        a :class:`Registration` (transform template -> scan, metric, correlation and flags).
    """
    if dof not in DOF_CHOICES:
        raise ValueError(f"dof must be one of {DOF_CHOICES}, not {dof!r}")
    fixed, _, _ = template_images()
    small = _shrink_to(moving, MOVING_SPACING_MM)
    # Centre of mass of the foreground only (scanner background noise would pull it to the FOV centre).
    fg = _foreground(small)
    weights = sitk.Mask(sitk.Clamp(small, sitk.sitkFloat32, 0.0), fg)
    start = sitk.CenteredTransformInitializer(
        fixed, weights, sitk.VersorRigid3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    start = sitk.VersorRigid3DTransform(start)
    affine, metric = _register(fixed, small, start, dof)
    corr = _correlation(small, affine)
    if not corr >= MIN_CORRELATION:
        log.info("poor registration (correlation %.2f); trying other start rotations", corr)
        best = None
        moving_centre = start.TransformPoint(start.GetCenter())
        for axis, angle in _rotations():
            turn = sitk.VersorRigid3DTransform()
            turn.SetCenter(moving_centre)
            turn.SetRotation(axis, angle)  # rotation of the scan about its centre of mass
            cand = sitk.VersorRigid3DTransform(start)
            r = _method([4], [4.0], 40, 2.0)
            r.SetMovingInitialTransform(turn)
            r.SetInitialTransform(cand, inPlace=True)
            r.Execute(fixed, small)
            score = _correlation(small, _compose(turn, cand))
            if best is None or score > best[0]:
                best = (score, cand, turn)
        assert best is not None
        affine2, metric2 = _register(fixed, small, best[1], dof, turn=best[2])
        corr2 = _correlation(small, affine2)
        if corr2 > corr:
            affine, metric, corr = affine2, metric2, corr2
    scales = tuple(
        float(s) for s in np.linalg.svd(np.array(affine.GetMatrix()).reshape(3, 3), compute_uv=False)
    )
    result = Registration(transform=affine, dof=dof, metric=metric, correlation=corr, scales=scales)  # type: ignore[arg-type]
    if not result.correlation >= MIN_CORRELATION:
        result.flags.append(
            f"poor match with the template (correlation {result.correlation:.2f} < {MIN_CORRELATION}); "
            "check the QC image"
        )
    if min(scales) < SCALE_RANGE[0] or max(scales) > SCALE_RANGE[1]:
        result.flags.append(
            f"implausible scaling {', '.join(f'{s:.2f}' for s in scales)}; check the QC image"
        )
    return result


def resample_to_template_grid(img: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Anti-aliased linear resampling of ``img`` onto the 91x109x91 2 mm template grid.

    The image is cropped to the region that maps into the template first, then smoothed with a Gaussian
    of ``sqrt(2**2 - spacing**2) / 2`` mm per axis (as the template itself was derived), then sampled.
    """
    fixed, _, _ = template_images()
    img = _crop_to_template(img, transform)
    sigma = [float(np.sqrt(max(4.0 - s * s, 0.0)) / 2.0) for s in img.GetSpacing()]
    if max(sigma) > 0.05:
        img = sitk.SmoothingRecursiveGaussian(img, sigma)
    return sitk.Resample(img, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _crop_to_template(img: sitk.Image, transform: sitk.Transform, margin: int = 6) -> sitk.Image:
    fixed, _, reg_mask = template_images()
    idx = np.argwhere(sitk.GetArrayViewFromImage(reg_mask) > 0)[:, ::-1]  # (x, y, z)
    lo, hi = idx.min(0), idx.max(0)
    corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    pts = [
        img.TransformPhysicalPointToContinuousIndex(
            transform.TransformPoint(
                fixed.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
            )
        )
        for corner in corners
    ]
    pts = np.array(pts)
    size = np.array(img.GetSize())
    start = np.clip(np.floor(pts.min(0)).astype(int) - margin, 0, size - 1)
    stop = np.clip(np.ceil(pts.max(0)).astype(int) + margin + 1, start + 1, size)
    if np.all(start == 0) and np.all(stop == size):
        return img
    return sitk.RegionOfInterest(img, [int(v) for v in stop - start], [int(v) for v in start])


def transform_to_ras_matrix(transform: sitk.Transform) -> np.ndarray:
    """4x4 matrix mapping template world RAS mm to scan world RAS mm (the NIfTI convention)."""
    a = _to_affine(transform)
    m = np.array(a.GetMatrix()).reshape(3, 3)
    c = np.array(a.GetCenter())
    t = np.array(a.GetTranslation())
    lps = np.eye(4)
    lps[:3, :3] = m
    lps[:3, 3] = t + c - m @ c
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip
