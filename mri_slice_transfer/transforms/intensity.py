"""Intensity normalisation: z-score over the brain (non-zero voxels) of a template-grid image."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from mri_slice_transfer.errors import ScanError

__all__ = ["normalize_brain", "NormalizeBraind"]


def _filename(img: torch.Tensor) -> str | None:
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        return None if name is None else str(name)
    return None


def normalize_brain(img: torch.Tensor) -> torch.Tensor:
    """Z-score an image over its non-zero ("brain") voxels; zero voxels stay exactly 0.

    ``out = (x - mean) / std`` where mean and (population) std are computed in float64 over the voxels
    ``x != 0`` (all channels together); voxels equal to 0 are left at 0. Orientation, spacing, affine and
    meta are unchanged.

    Args:
        img: image ``[C, X, Y, Z]`` (usually on the template grid, after resampling). The brain is assumed
            skull-stripped with background exactly 0; for images without zero background this is a plain
            whole-volume z-score.

    Returns:
        float32 tensor of the same shape and type (a MetaTensor stays a MetaTensor).

    Raises:
        ScanError: (naming ``meta["filename_or_obj"]``) when no voxel is non-zero, e.g. the image lies
            outside template space, or when all non-zero voxels have the same value.
    """
    x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    x = x.to(torch.float32)
    brain = x != 0
    n = int(brain.sum())
    if n == 0:
        raise ScanError(
            _filename(img),
            "no non-zero voxel on the MNI152 2 mm template grid after resampling: the image lies outside "
            "template space, so the scan is probably not in MNI space. Register it to MNI space first, "
            "e.g. with `mri-slice-transfer prepare`.",
        )
    values = x[brain].to(torch.float64)
    mean = values.mean()
    std = values.std(unbiased=False)
    if not torch.isfinite(std) or float(std) == 0.0:
        raise ScanError(
            _filename(img),
            f"all {n} non-zero voxels on the template grid have the same value ({float(mean):g}), so the "
            "image cannot be normalised; check the file holds a T1 image registered to MNI space "
            "(e.g. `mri-slice-transfer prepare`).",
        )
    out = torch.where(brain, ((x.to(torch.float64) - mean) / std).to(torch.float32), torch.zeros_like(x))
    if isinstance(img, MetaTensor):
        meta = {k: v for k, v in img.meta.items() if k != "affine"}
        result = MetaTensor(out, affine=img.affine.clone(), meta=meta)
        result.applied_operations = list(img.applied_operations)
        return result
    return out


class NormalizeBraind(MapTransform):
    """Z-score each key's image over its brain (non-zero) voxels; background (0) stays 0.

    Orientation and spacing: unchanged (affine and meta are kept). Intensities: brain voxels get mean 0
    and standard deviation 1 (population std, float64 statistics).

    Args:
        keys: keys of images ``[C, X, Y, Z]``, usually after
            :class:`~mri_slice_transfer.transforms.spatial.ResampleToTemplated`.
        allow_missing_keys: do not raise if a key is absent.

    Raises:
        ScanError: naming the file, if an image has no non-zero voxel (probably not in MNI space) or a
            constant brain.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_brain(d[key])  # type: ignore[arg-type]
        return d
