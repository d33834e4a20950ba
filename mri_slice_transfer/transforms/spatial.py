"""Putting a scan on the template grid (FSL MNI152 2 mm, 91 x 109 x 91, voxel axes L-A-S).

:func:`resample_to_template` uses only the image's voxel-to-world affine, so it handles any voxel size,
storage orientation (RAS, LAS, LPS, PIR, ...), oblique rotation and field of view. It does **not**
register: the scan must already be in MNI space (world coordinates), e.g. after
``mri-slice-transfer prepare`` or FSL ``flirt``/ANTs.

Three paths, chosen from ``M = inv(src_affine) @ TEMPLATE_AFFINE`` (template voxel -> source voxel):

- *exact*: ``M`` is a signed axis permutation with integer offsets (every template voxel centre within
  1e-4 voxel of a source centre, same voxel size): voxels are copied by index (flip / transpose / crop /
  zero-pad). No interpolation, bit-exact. Covers a file already on the grid and the same 2 mm grid
  stored RAS (x flipped) or in any other axis order.
- *strided*: ``M`` is a signed permutation times integer strides with integer offsets, i.e. every
  template voxel centre is a source voxel centre of a finer grid (FSL ``MNI152_T1_1mm`` / UK Biobank
  ``T1_brain_to_MNI`` 182 x 218 x 182 1 mm grid). Trilinear sampling there reduces to picking voxels,
  so the anti-alias filter below is applied separably and the voxels picked: same result as the
  interpolated path, about 3x faster.
- *interpolated*: otherwise (other voxel sizes, half-voxel shifts, oblique rotations). When the source
  is finer than 2 mm along an axis, a Gaussian anti-alias pre-filter is applied along it, sigma (in
  source voxels) ``sqrt((2 / spacing)**2 - 1) / 2`` (the rule that derived the template from the 1 mm
  ICBM152 images, see :mod:`mri_slice_transfer.template`; truncated at 3 sigma); then trilinear sampling
  at the template voxel centres (``torch.nn.functional.grid_sample``, ``align_corners=True``).

Template voxels outside the source field of view are 0. Background stays exactly 0: a template voxel is
set to 0 when trilinear interpolation of the source's non-zero mask there is below 0.5, so the pre-filter
does not bleed signal into the (skull-stripped) background or outside the field of view.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE, TEMPLATE_SPACING

__all__ = [
    "EXACT_TOLERANCE",
    "exact_index_map",
    "lattice_index_map",
    "resample_to_template",
    "ResampleToTemplated",
]

#: Largest offset (source voxels) of any template voxel centre from a source voxel centre for the grids to
#: count as lined up (exact / strided paths).
EXACT_TOLERANCE = 1e-4
_MODES = ("bilinear", "nearest")
# Gaussian kernel truncation, in sigmas (radius = ceil(truncate * sigma) voxels).
_TRUNCATE = 3.0


def lattice_index_map(
    src_affine: np.ndarray,
    dst_affine: np.ndarray = TEMPLATE_AFFINE,
    dst_shape: tuple[int, ...] = TEMPLATE_SHAPE,
    tol: float = EXACT_TOLERANCE,
) -> list[tuple[int, int, int]] | None:
    """How destination voxels map onto source voxels, if every destination centre is a source centre.

    That is the case when ``inv(src_affine) @ dst_affine`` is a signed axis permutation times integer
    strides with an integer shift, e.g. the template grid itself, the same grid stored RAS, or a 1 mm grid
    whose voxel centres include the 2 mm ones (FSL ``MNI152_T1_1mm``, UK Biobank ``T1_brain_to_MNI``).

    Args:
        src_affine: 4x4 voxel-to-world affine of the source image (mm).
        dst_affine: 4x4 voxel-to-world affine of the destination grid (default: the template).
        dst_shape: shape of the destination grid, to bound the deviation over the whole grid.
        tol: allowed deviation, in source voxels, of any destination voxel centre from a source centre.

    Returns:
        ``None`` if the grids do not line up; else, for each destination axis ``a``, a tuple
        ``(source_axis, step, offset)`` of ints such that destination index ``j`` along ``a`` is source
        index ``step * j + offset`` along ``source_axis`` (``step`` is a non-zero signed stride).
    """
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    rot, shift = m[:3, :3], m[:3, 3]
    rot_int, shift_int = np.round(rot), np.round(shift)
    extent = np.asarray(dst_shape, dtype=np.float64) - 1.0
    deviation = np.abs(rot - rot_int) @ extent + np.abs(shift - shift_int)
    if np.any(deviation > tol):
        return None
    nonzero = rot_int != 0
    if not (np.all(nonzero.sum(axis=0) == 1) and np.all(nonzero.sum(axis=1) == 1)):
        return None
    mapping = []
    for a in range(3):
        p = int(np.argmax(np.abs(rot_int[:, a])))
        mapping.append((p, int(rot_int[p, a]), int(shift_int[p])))
    return mapping


def exact_index_map(
    src_affine: np.ndarray,
    dst_affine: np.ndarray = TEMPLATE_AFFINE,
    dst_shape: tuple[int, ...] = TEMPLATE_SHAPE,
    tol: float = EXACT_TOLERANCE,
) -> list[tuple[int, int, int]] | None:
    """Like :func:`lattice_index_map` but only for unit strides (same voxel size): a pure index copy.

    Returns:
        ``None`` or, for each destination axis, ``(source_axis, sign, offset)`` with ``sign`` = +-1.
    """
    mapping = lattice_index_map(src_affine, dst_affine, dst_shape, tol)
    if mapping is None or any(abs(step) != 1 for _, step, _ in mapping):
        return None
    return mapping


def _take_lattice(
    data: np.ndarray,
    mapping: list[tuple[int, int, int]],
    shape: tuple[int, ...],
    sigma: np.ndarray | None = None,
) -> np.ndarray:
    """Pick the source voxels ``mapping`` names (flip / transpose / stride / crop / zero-pad).

    With ``sigma`` (per source axis, source voxels), each axis is Gaussian-filtered just before its voxels
    are picked (separable, so later axes filter only the picked planes), and picked voxels that are 0 in
    the source stay 0. Without it the copy is bit-exact.
    """
    by_source = {p: (a, step, offset) for a, (p, step, offset) in enumerate(mapping)}
    index, valid = {}, {}
    for p, (a, step, offset) in by_source.items():
        idx = step * np.arange(shape[a]) + offset
        ok = (idx >= 0) & (idx < data.shape[p])
        index[p], valid[a] = idx[ok], np.flatnonzero(ok)
    out = np.zeros(shape, dtype=np.float32)
    if not all(len(i) for i in index.values()):
        return out  # the grids do not overlap
    picked_src = data[np.ix_(index[0], index[1], index[2])]
    if sigma is not None and np.any(sigma > 0.05):
        arr = data
        for p in (2, 1, 0):  # contiguous axis first, while the array is largest
            if sigma[p] > 0.05:
                arr = ndimage.gaussian_filter1d(
                    arr, float(sigma[p]), axis=p, mode="constant", cval=0.0, truncate=_TRUNCATE
                )
            arr = np.take(arr, index[p], axis=p)
        picked = np.where(picked_src != 0, arr, np.float32(0.0))
    else:
        picked = picked_src
    out[np.ix_(valid[0], valid[1], valid[2])] = np.transpose(picked, [p for p, _, _ in mapping])
    return out


def _anti_alias_sigma(src_affine: np.ndarray) -> np.ndarray:
    """Gaussian sigma (source voxels) per source axis so the 2 mm grid does not alias finer detail."""
    src_spacing = np.linalg.norm(src_affine[:3, :3], axis=0)
    dst_spacing = float(np.mean(TEMPLATE_SPACING))  # template is isotropic: direction does not matter
    ratio = dst_spacing / src_spacing
    return np.sqrt(np.maximum(ratio**2 - 1.0, 0.0)) / 2.0


@lru_cache(maxsize=1)
def _template_indices() -> torch.Tensor:
    """Homogeneous voxel indices ``[N, 4]`` (float32, C order) of the template grid, computed once."""
    idx = np.indices(TEMPLATE_SHAPE, dtype=np.float32).reshape(3, -1).T
    out = np.concatenate([idx, np.ones((idx.shape[0], 1), np.float32)], axis=1)
    return torch.from_numpy(out)


def _interpolate(data: np.ndarray, src_affine: np.ndarray, mode: str, anti_alias: bool) -> np.ndarray:
    shape = TEMPLATE_SHAPE
    vox = np.linalg.inv(src_affine) @ TEMPLATE_AFFINE  # template voxel -> source voxel
    sigma = _anti_alias_sigma(src_affine) if (anti_alias and mode == "bilinear") else np.zeros(3)
    margin = np.ceil(_TRUNCATE * sigma).astype(int) + 2

    # Crop the source to the part the template grid can reach (plus filter margin): less to filter.
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    reach = vox[:3, :3] @ corners + vox[:3, 3:4]
    lo = np.maximum(np.floor(reach.min(axis=1)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(reach.max(axis=1)).astype(int) + margin + 1, data.shape)
    if np.any(hi - lo < 2):  # the template grid does not overlap the image
        return np.zeros(shape, dtype=np.float32)
    crop = np.ascontiguousarray(data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)

    src = crop
    if np.any(sigma > 0.05):
        src = ndimage.gaussian_filter(crop, sigma=sigma, mode="constant", cval=0.0, truncate=_TRUNCATE)

    # Sampling positions for every template voxel: source voxel of the crop, normalised to [-1, 1]
    # (align_corners=True: -1 and 1 are the centres of the first and last voxel). One float32 matmul
    # of the homogeneous template indices with the (normalising) 4x3 matrix, in float64 until then.
    to_crop = vox[:3].copy()
    to_crop[:, 3] -= lo
    scale = 2.0 / (np.asarray(crop.shape, dtype=np.float64) - 1.0)
    to_norm = to_crop * scale[:, None]
    to_norm[:, 3] -= 1.0
    # grid_sample's last dim is (W, H, D) order = (source axis 2, 1, 0).
    mat = torch.from_numpy(np.ascontiguousarray(to_norm[::-1].T, dtype=np.float32))
    grid = (_template_indices() @ mat).reshape(1, *shape, 3)

    def sample(vol: np.ndarray, how: str) -> torch.Tensor:
        inp = torch.from_numpy(vol)[None, None]
        return F.grid_sample(inp, grid, mode=how, padding_mode="zeros", align_corners=True)[0, 0]

    out = sample(src, mode)
    if mode == "bilinear":
        support = sample((crop != 0).astype(np.float32), "bilinear")
        out = torch.where(support >= 0.5, out, torch.zeros((), dtype=out.dtype))
    return out.numpy()


def resample_to_template(img: MetaTensor, mode: str = "bilinear", anti_alias: bool = True) -> MetaTensor:
    """Put a channel-first image on the template grid using its affine (no registration).

    Orientation: output voxel axes are L-A-S (the template's); spacing: 2 mm isotropic; shape
    ``TEMPLATE_SHAPE`` = (91, 109, 91). See the module docstring for the exact and interpolated paths.

    Args:
        img: MetaTensor ``[C, X, Y, Z]`` (usually C = 1) whose ``.affine`` maps voxels to RAS+ mm world
            coordinates in MNI space (as :class:`~mri_slice_transfer.transforms.io.LoadScand` gives).
        mode: ``"bilinear"`` (trilinear for 3D; for images) or ``"nearest"`` (for label maps; no
            anti-aliasing, no background masking).
        anti_alias: Gaussian pre-filter when downsampling (``"bilinear"`` only).

    Returns:
        float32 MetaTensor ``[C, 91, 109, 91]`` with ``.affine == TEMPLATE_AFFINE``; meta keeps the input's
        entries (``filename_or_obj``, ``original_affine``, ...) and adds ``resample_path``
        (``"exact"``, ``"strided"`` or ``"interpolated"``).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(img, MetaTensor):
        raise TypeError(
            "resample_to_template needs a monai.data.MetaTensor carrying the voxel-to-world affine "
            f"(got {type(img).__name__}); load the file with LoadScand / load_scan first"
        )
    if img.ndim != 4:
        raise ValueError(f"expected a channel-first [C, X, Y, Z] image, got shape {tuple(img.shape)}")
    src_affine = img.affine.detach().cpu().numpy().astype(np.float64)
    array = img.detach().cpu().numpy()
    if array.dtype != np.float32:
        array = array.astype(np.float32)

    mapping = lattice_index_map(src_affine)
    if mapping is not None and all(abs(step) == 1 for _, step, _ in mapping):
        channels = [_take_lattice(ch, mapping, TEMPLATE_SHAPE) for ch in array]
        path = "exact"
    elif mapping is not None:
        # every template voxel centre is a source voxel centre (e.g. 1 mm MNI grid): trilinear sampling
        # there is picking that voxel, so filter separably and pick, without grid_sample.
        sigma = _anti_alias_sigma(src_affine) if (anti_alias and mode == "bilinear") else None
        channels = [_take_lattice(ch, mapping, TEMPLATE_SHAPE, sigma) for ch in array]
        path = "strided"
    else:
        channels = [_interpolate(ch, src_affine, mode, anti_alias) for ch in array]
        path = "interpolated"
    out = torch.from_numpy(np.stack(channels).astype(np.float32, copy=False))

    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    meta.setdefault("original_affine", src_affine)
    meta["spatial_shape"] = np.asarray(TEMPLATE_SHAPE, dtype=np.int64)
    meta["resample_path"] = path
    return MetaTensor(out, affine=torch.tensor(np.array(TEMPLATE_AFFINE), dtype=torch.float64), meta=meta)


class ResampleToTemplated(MapTransform):
    """Resample each key's image onto the FSL MNI152 2 mm template grid using its affine.

    Orientation: any storage orientation (RAS, LAS, LPS, PIR, oblique, ...) becomes the template's L-A-S
    voxel axes. Spacing: any voxel size becomes 2 mm isotropic (Gaussian anti-aliasing when finer).
    Field of view: output is always 91 x 109 x 91; template voxels outside the image are 0. The scan
    must already be registered to MNI space (this is a resampling, not a registration). Bit-exact copy
    when the grids coincide up to axis flips / permutations / integer shifts; no ``grid_sample`` when the
    template voxel centres are a subset of the source's (e.g. the 1 mm MNI grid).

    Args:
        keys: keys of MetaTensors ``[C, X, Y, Z]`` with a voxel-to-world (RAS+ mm) ``.affine``.
        mode: ``"bilinear"`` (trilinear, images) or ``"nearest"`` (label maps).
        anti_alias: Gaussian pre-filter when the source voxels are finer than 2 mm.
        allow_missing_keys: do not raise if a key is absent.

    Output: float32 MetaTensor ``[C, 91, 109, 91]`` with ``.affine`` = ``TEMPLATE_AFFINE``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "bilinear",
        anti_alias: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.anti_alias = anti_alias

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = resample_to_template(d[key], mode=self.mode, anti_alias=self.anti_alias)  # type: ignore[arg-type]
        return d
