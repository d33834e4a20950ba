"""Synthetic subject anatomy and acquisition, derived from the ICBM152 2009a template.

A subject's brain is the template warped and re-shaded as a function of age and diagnosis:

- **ventricles** expand: a displacement field along the gradient of the smoothed ventricle mask
  (lateral + third ventricles, from the template's CSF inside a central box);
- **medial temporal lobe** (hippocampus, amygdala, entorhinal cortex; ellipsoids at their MNI
  coordinates) contracts: the opposite displacement around a smooth MTL region, plus grey matter
  there giving way to CSF (intensity moves from GM toward CSF);
- **cortex** thins: grey matter next to CSF / the brain surface gives way to CSF (sulci widen);

with age effects for everyone and extra, faster MTL and ventricular atrophy for AD (scaled by a
per-subject disease severity). Nuisance that hides the label from trivial rules: head size (global
scaling), natural variation of ventricle and hippocampus size, a smooth random deformation, a smooth
multiplicative bias field, a gamma (contrast) change, a site-dependent intensity scale and Rician noise.

All randomness comes from the integer seeds in :class:`ScanParams`, so a scan is a pure function of
its parameters. Displacements are *backward* maps in template world mm: the subject's image at
position ``x`` shows the template at ``x + u(x)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from mri_slice_transfer.template import TEMPLATE_AFFINE, Template, load_template, load_template_1mm

__all__ = [
    "ScanParams",
    "Anatomy",
    "Acquisition",
    "subject_anatomy",
    "scan_acquisition",
    "render",
    "BRAIN_CENTRE",
    "SITES",
]

#: Centre (template world mm) about which head size scales and poses rotate.
BRAIN_CENTRE = np.array([0.0, -18.0, 18.0])

#: Sites: (gamma, intensity scale, noise sd relative to white matter ~0.86).
SITES: dict[str, tuple[float, float, float]] = {
    "site-A": (1.00, 1000.0, 0.015),
    "site-B": (0.88, 700.0, 0.025),
    "site-C": (1.12, 1300.0, 0.020),
}

# --- effect sizes (calibrated; see docs/demo_data.md) ---------------------------------------
REF_AGE = 65.0  # age at which the age terms are zero
# ventricle expansion (mm of peak displacement)
K_V0, K_V_AGE, K_V_AD, K_V_SD = 3.0, 2.0, 3.5, 1.0  # per decade / per unit severity / natural sd
K_V_MIN, K_V_MAX = -1.0, 10.0
# medial temporal contraction (mm of peak displacement)
K_H0, K_H_AGE, K_H_AD, K_H_SD = 0.5, 0.35, 3.5, 0.45
K_H_MIN, K_H_MAX = -0.5, 4.5
# MTL grey matter -> CSF fraction
D_M0, D_M_AGE, D_M_AD, D_M_SD = 0.05, 0.04, 0.95, 0.05
# cortical grey matter -> CSF fraction (sulcal widening)
D_G0, D_G_AGE, D_G_AD, D_G_SD = 0.15, 0.12, 0.20, 0.06
# nuisance
HEAD_SCALE_SEX = {"M": 1.035, "F": 0.965}
HEAD_SCALE_SD = 0.035
# mm, per component at the control points; 3 mm is the residual local misalignment of brains after an
# affine registration to MNI space, which block-wise (voxel-aligned) baselines suffer from and CNNs do not
RANDOM_FIELD_SD = 3.0
RANDOM_FIELD_GRID = (6, 7, 6)
BIAS_WAVES = 3  # the bias field is exp of a sum of this many cosine waves
BIAS_WAVELENGTH_MM = (200.0, 400.0)  # uniform range of their wavelengths
BIAS_AMP_SD = 0.08  # sd of each wave's amplitude (in log intensity)
I_CSF, I_GM = 0.31, 0.64  # template T1 intensities of pure CSF and grey matter


@dataclass(frozen=True)
class ScanParams:
    """Everything that determines one synthetic scan.

    Attributes:
        age: age in years at this scan.
        dx: ``"CN"`` or ``"AD"``.
        sex: ``"M"`` or ``"F"``.
        site: a key of :data:`SITES`.
        subject_seed: seeds the subject's own anatomy (head size, natural variation, random warp);
            shared by all sessions of a subject.
        scan_seed: seeds the acquisition (bias field, contrast, noise) and, in raw space, the pose,
            orientation and field of view.
        severity: AD disease severity (multiplies the AD effects; ignored for CN).
    """

    age: float
    dx: str
    sex: str
    site: str
    subject_seed: int
    scan_seed: int
    severity: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Anatomy:
    """A subject's anatomy parameters (derived from :class:`ScanParams`)."""

    head_scale: float
    k_vent: float
    k_mtl: float
    d_mtl: float
    d_cortex: float
    random_field: np.ndarray  # (3, *RANDOM_FIELD_GRID) control-point displacements in mm


@dataclass(frozen=True)
class Acquisition:
    """Scan-level nuisance (derived from :class:`ScanParams`)."""

    gamma: float
    scale: float
    noise: float
    bias_freq: np.ndarray  # (K, 3) cycles per mm
    bias_phase: np.ndarray  # (K,)
    bias_amp: np.ndarray  # (K,)


def subject_anatomy(p: ScanParams) -> Anatomy:
    """Anatomy of the subject at this scan: natural variation from ``subject_seed``, plus age and AD."""
    rng = np.random.default_rng([p.subject_seed, 1])
    z = rng.standard_normal(6)
    field = rng.standard_normal((3, *RANDOM_FIELD_GRID)) * RANDOM_FIELD_SD
    head = HEAD_SCALE_SEX.get(p.sex, 1.0) * float(np.exp(HEAD_SCALE_SD * z[0]))
    a = (p.age - REF_AGE) / 10.0
    ad = float(p.severity) if p.dx == "AD" else 0.0
    return Anatomy(
        head_scale=head,
        k_vent=float(np.clip(K_V0 + K_V_AGE * a + K_V_AD * ad + K_V_SD * z[1], K_V_MIN, K_V_MAX)),
        k_mtl=float(np.clip(K_H0 + K_H_AGE * a + K_H_AD * ad + K_H_SD * z[2], K_H_MIN, K_H_MAX)),
        d_mtl=float(np.clip(D_M0 + D_M_AGE * a + D_M_AD * ad + D_M_SD * z[3], 0.0, 1.0)),
        d_cortex=float(np.clip(D_G0 + D_G_AGE * a + D_G_AD * ad + D_G_SD * z[4], 0.0, 0.6)),
        random_field=field.astype(np.float32),
    )


def scan_acquisition(p: ScanParams) -> Acquisition:
    """Acquisition nuisance of this scan (site + ``scan_seed``)."""
    rng = np.random.default_rng([p.scan_seed, 2])
    gamma0, scale0, noise0 = SITES[p.site]
    k = BIAS_WAVES
    direction = rng.standard_normal((k, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavelength = rng.uniform(*BIAS_WAVELENGTH_MM, size=k)
    return Acquisition(
        gamma=gamma0 * float(np.exp(0.06 * rng.standard_normal())),
        scale=scale0 * float(rng.uniform(0.9, 1.1)),
        noise=noise0 * float(rng.uniform(0.8, 1.2)),
        bias_freq=direction / wavelength[:, None],
        bias_phase=rng.uniform(0, 2 * np.pi, size=k),
        bias_amp=rng.normal(0.0, BIAS_AMP_SD, size=k),
    )


# --- static maps, computed once per process -------------------------------------------------


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape(3, *shape)


def _ellipsoid(xyz: np.ndarray, centre, radii, axis=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Soft ellipsoid (1 inside, smooth edge) with its long axis (radii[1]) along ``axis``."""
    e1 = np.asarray(axis, float) / np.linalg.norm(axis)
    e0 = np.array([1.0, 0.0, 0.0])
    e2 = np.cross(e0, e1)
    e2 /= np.linalg.norm(e2)
    d = xyz - np.asarray(centre, np.float32).reshape(3, 1, 1, 1)
    q = sum(
        (np.tensordot(e.astype(np.float32), d, axes=(0, 0)) / r) ** 2
        for e, r in zip((e0, e1, e2), radii, strict=True)
    )
    return np.clip(1.5 - q, 0.0, 1.0).astype(np.float32) ** 2


def mtl_region(xyz: np.ndarray) -> np.ndarray:
    """Medial temporal lobe (hippocampus, amygdala, entorhinal) of both hemispheres, soft in [0, 1]."""
    out = np.zeros(xyz.shape[1:], np.float32)
    for sign in (-1.0, 1.0):
        parts = (
            # hippocampus: head ~(26,-10,-18) to tail ~(24,-38,-2); long axis tilts up posteriorly
            _ellipsoid(xyz, (sign * 27, -22, -12), (6.0, 17.0, 6.0), axis=(0.0, 1.0, -0.45)),
            _ellipsoid(xyz, (sign * 23, -4, -18), (7.0, 7.0, 6.0)),  # amygdala
            _ellipsoid(xyz, (sign * 24, -10, -30), (7.0, 10.0, 5.0)),  # entorhinal / parahippocampal
        )
        for part in parts:
            out = np.maximum(out, part)
    return out


def ventricle_mask(t: Template) -> np.ndarray:
    """Lateral + third ventricles: template CSF inside a central box (largest components)."""
    x, y, z = _world(t.shape, t.affine)
    csf = np.clip(t.mask.astype(np.float32) - t.gm - t.wm, 0.0, 1.0)
    box = (np.abs(x) < 30) & (y > -45) & (y < 30) & (z > -5) & (z < 35)
    v = (csf > 0.5) & box & t.mask
    lab, n = ndimage.label(v)
    sizes = ndimage.sum(v, lab, range(1, n + 1))
    keep = [i + 1 for i, s in enumerate(sizes) if s * np.prod(np.abs(np.diag(t.affine)[:3])) > 500.0]
    return np.isin(lab, keep)


@dataclass(frozen=True)
class StaticMaps:
    t1: np.ndarray
    mask: np.ndarray
    w_cortex: np.ndarray  # T1 drop per unit of cortical thinning
    w_mtl: np.ndarray  # T1 drop per unit of MTL GM loss
    affine: np.ndarray


@lru_cache(maxsize=1)
def _smooth_factors_2mm() -> tuple[np.ndarray, np.ndarray]:
    """On the 2 mm grid: "near CSF / brain surface" (where sulci widen) and the soft MTL region."""
    t = load_template()
    mask = t.mask.astype(np.float32)
    csf = np.clip(mask - t.gm - t.wm, 0.0, 1.0)
    outside = ndimage.gaussian_filter(np.maximum(csf, 1.0 - mask), sigma=1.0)
    vent = ndimage.gaussian_filter(ventricle_mask(t).astype(np.float32), sigma=2.0)
    near = np.clip(2.5 * outside, 0.0, 1.0) * (1.0 - np.clip(3 * vent, 0, 1))
    return near.astype(np.float32), mtl_region(_world(t.shape, t.affine))


def _static_maps(t: Template) -> StaticMaps:
    near, mtl = _smooth_factors_2mm()
    if t.shape != near.shape:  # 1 mm: bring the smooth 2 mm factors over (they carry no fine detail)
        m = np.linalg.inv(TEMPLATE_AFFINE) @ t.affine
        ijk = np.indices(t.shape, dtype=np.float32).reshape(3, -1)
        ijk = m[:3, :3].astype(np.float32) @ ijk + m[:3, 3:4].astype(np.float32)
        near, mtl = (
            ndimage.map_coordinates(f, ijk, order=1, mode="nearest").reshape(t.shape) for f in (near, mtl)
        )
    w_cortex = (t.gm * near * (I_GM - I_CSF)).astype(np.float32)
    w_mtl = (np.clip(t.gm + 0.5 * t.wm, 0, 1) * mtl * (I_GM - I_CSF)).astype(np.float32)
    mask = t.mask.astype(np.float32)
    return StaticMaps(t1=t.t1.astype(np.float32), mask=mask, w_cortex=w_cortex, w_mtl=w_mtl, affine=t.affine)


@lru_cache(maxsize=2)
def static_maps(resolution: int = 2) -> StaticMaps:
    """Template images and thinning maps on the 2 mm (``resolution=2``) or 1 mm grid."""
    return _static_maps(load_template() if resolution == 2 else load_template_1mm())


@lru_cache(maxsize=1)
def displacement_bases() -> tuple[np.ndarray, np.ndarray]:
    """Unit displacement fields on the 2 mm grid: ventricle expansion and MTL contraction (3, X, Y, Z)."""
    t = load_template()
    out = []
    for region, sigma_mm in (
        (ventricle_mask(t).astype(np.float32), 8.0),
        (mtl_region(_world(t.shape, t.affine)), 4.0),
    ):
        phi = ndimage.gaussian_filter(region, sigma=sigma_mm / 2.0)
        grad = np.stack(np.gradient(phi, 2.0))  # d/d(voxel index) per mm
        # voxel axes -> world axes (TEMPLATE_AFFINE is diagonal: x axis flipped)
        grad = grad * np.sign(np.diag(TEMPLATE_AFFINE)[:3]).reshape(3, 1, 1, 1)
        grad /= np.linalg.norm(grad, axis=0).max()
        out.append(grad.astype(np.float32))
    return out[0], out[1]


@lru_cache(maxsize=8)
def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) cubic-spline interpolation matrix (zoom of each unit vector; zoom is linear)."""
    eye = np.eye(n_in, dtype=np.float64)
    m = ndimage.zoom(eye, (n_out / n_in, 1.0), order=3, mode="nearest", grid_mode=True)
    return m[:n_out].astype(np.float32)


def _upsample_field(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Separable cubic upsampling of a coarse control-point grid to ``shape`` (fast: three matmuls)."""
    bx, by, bz = (_upsample_matrix(s, c) for s, c in zip(shape, coarse.shape, strict=True))
    return np.einsum("ia,jb,kc,abc->ijk", bx, by, bz, coarse, optimize=True).astype(np.float32)


def displacement_field(anat: Anatomy) -> np.ndarray:
    """The subject's backward displacement (3, 91, 109, 91) on the 2 mm grid, in world mm."""
    g_vent, g_mtl = displacement_bases()
    shape = g_vent.shape[1:]
    u = anat.k_vent * g_vent - anat.k_mtl * g_mtl
    for c in range(3):
        u[c] += _upsample_field(anat.random_field[c], shape)
    return u


# --- rendering -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _candidate_region() -> np.ndarray:
    """Template brain mask dilated by ~10 mm (2 mm grid): the only place a subject's brain can come from."""
    return ndimage.binary_dilation(load_template().mask, iterations=5)


def source_points(points: np.ndarray, anat: Anatomy, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Template world mm shown at subject (template-space) world ``points`` (3, N).

    Returns:
        ``(keep, src)``: indices of the points that can show brain, and their (3, len(keep)) sources.
    """
    c = BRAIN_CENTRE.reshape(3, 1)
    unscaled = c + (points - c) / anat.head_scale
    vox = np.linalg.inv(TEMPLATE_AFFINE)
    ijk = vox[:3, :3] @ unscaled + vox[:3, 3:4]
    near = np.rint(ijk).astype(np.int64)
    shape = np.array(u.shape[1:]).reshape(3, 1)
    ok = np.all((near >= 0) & (near < shape), axis=0)
    keep = np.flatnonzero(ok)
    keep = keep[_candidate_region()[tuple(near[:, keep])]]
    ijk = ijk[:, keep]
    disp = np.stack([ndimage.map_coordinates(u[k], ijk, order=1, mode="nearest") for k in range(3)])
    return keep, unscaled[:, keep] + disp


def render(p: ScanParams, points: np.ndarray, resolution: int = 2, rng_stream: int = 3) -> np.ndarray:
    """Intensities (float32, scanner units, 0 outside the brain) of scan ``p`` at template world ``points``.

    Args:
        p: the scan.
        points: (3, N) template-space world coordinates (mm) to sample.
        resolution: 2 or 1: which template grid to sample (1 mm for raw-space scans).
        rng_stream: noise stream (the noise realisation depends on it and on ``p.scan_seed``).
    """
    anat = subject_anatomy(p)
    acq = scan_acquisition(p)
    maps = static_maps(resolution)
    u = displacement_field(anat)
    points = points.astype(np.float64)
    keep, src = source_points(points, anat, u)
    vox = np.linalg.inv(maps.affine)
    ijk = vox[:3, :3] @ src + vox[:3, 3:4]
    inside = ndimage.map_coordinates(maps.mask, ijk, order=1, mode="constant", cval=0.0) > 0.5
    keep, ijk = keep[inside], ijk[:, inside]
    t1 = maps.t1 - anat.d_cortex * maps.w_cortex - anat.d_mtl * maps.w_mtl
    val = np.clip(ndimage.map_coordinates(t1, ijk, order=1, mode="constant", cval=0.0), 0.0, None)
    # bias field (a smooth function of position), contrast, Rician noise
    phase = acq.bias_freq @ points[:, keep] * (2 * np.pi) + acq.bias_phase[:, None]
    bias = np.exp(acq.bias_amp @ np.cos(phase))
    val = (val**acq.gamma * bias).astype(np.float32)
    rng = np.random.default_rng([p.scan_seed, rng_stream])
    n1 = rng.standard_normal(val.shape, dtype=np.float32)
    n2 = rng.standard_normal(val.shape, dtype=np.float32)
    val = np.sqrt((val + acq.noise * n1) ** 2 + (acq.noise * n2) ** 2)  # Rician magnitude
    out = np.zeros(points.shape[1], np.float32)
    out[keep] = val * acq.scale
    return out
