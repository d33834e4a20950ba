"""Optional down-scaling of the template-grid input (used by the demo to fit a 2-core CPU budget).

``input_scale = 1`` (the default for real data) keeps the 91 x 109 x 91 grid. The demo uses 0.5:
46 x 55 x 46 voxels (area-averaged), i.e. half as many slices of a quarter of the pixels, about
8x less compute. A model must be used at the scale it was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from monai.transforms import Compose, MapTransform, Resized

from mri_slice_transfer.template import TEMPLATE_SHAPE
from mri_slice_transfer.transforms.chains import ScanCompose

__all__ = ["ScaleInputd", "scaled_size", "with_resize"]


def scaled_size(scale: float = 1.0, base: tuple[int, ...] = TEMPLATE_SHAPE) -> tuple[int, ...]:
    """Grid size at ``scale`` (each axis rounded, at least 1)."""
    scale = float(scale)
    if scale <= 0:
        raise ValueError(f"input_scale must be > 0, got {scale}")
    return tuple(max(1, round(s * scale)) for s in base)


def with_resize(transform: Callable, scale: float = 1.0, keys: str = "image") -> Callable:
    """``transform`` followed by an area resize to :func:`scaled_size` (unchanged when scale is 1).

    A ``Compose`` is extended flat (its transforms, then the resize) rather than nested: MONAI's
    ``CacheDataset`` caches the leading deterministic transforms only and treats a nested ``Compose``
    as random, so a nested chain would leave the cache empty and re-decode every scan every epoch.
    """
    if float(scale) == 1.0:
        return transform
    resize = Resized(keys=keys, spatial_size=scaled_size(scale), mode="area")
    if isinstance(transform, Compose):
        return ScanCompose([*transform.transforms, resize])
    return Compose([transform, resize])


class ScaleInputd(MapTransform):
    """Area-resize the images to :func:`scaled_size` of ``input_scale``; nothing at scale 1.

    The last transform of the bundles' preprocessing chain (``train.json``, ``inference.json``). It is
    deterministic, so ``CacheDataset`` caches its output with the rest of the chain.

    Args:
        keys: image keys (``[C, X, Y, Z]`` on the template grid).
        input_scale: the scale (a number or its command-line string); 1 keeps 91 x 109 x 91.
        allow_missing_keys: do not raise if a key is absent.
    """

    def __init__(self, keys: Any, input_scale: float | str = 1.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.input_scale = float(input_scale)
        self.spatial_size = scaled_size(self.input_scale)
        self.resize = None
        if self.input_scale != 1.0:
            self.resize = Resized(
                keys, spatial_size=self.spatial_size, mode="area", allow_missing_keys=allow_missing_keys
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return dict(data) if self.resize is None else self.resize(data)
