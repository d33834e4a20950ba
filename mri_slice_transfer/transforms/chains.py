"""The preprocessing chain from a NIfTI path to a ``[1, 91, 109, 91]`` float32 tensor.

``LoadScand -> ResampleToTemplated -> NormalizeBraind -> EnsureTyped(float32)``. The chain is
deterministic (the paper uses no augmentation), so MONAI's ``CacheDataset`` / ``PersistentDataset`` can
cache its whole output.

MONAI wraps any exception raised inside a ``Compose`` (and inside ``Dataset.__getitem__``) in a
``RuntimeError("applying transform ...")``. The chains returned here are :class:`ScanCompose`, which
re-raises a :class:`~mri_slice_transfer.errors.ScanError` unwrapped when called directly; for errors
that come through a MONAI ``Dataset`` / ``DataLoader``, use :func:`find_scan_error` to recover it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from os import PathLike

import torch
from monai.transforms import Compose, EnsureTyped

from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.transforms.intensity import NormalizeBraind
from mri_slice_transfer.transforms.io import LoadScand
from mri_slice_transfer.transforms.spatial import ResampleToTemplated

__all__ = [
    "ScanCompose",
    "find_scan_error",
    "get_transforms",
    "get_train_transforms",
    "get_inference_transforms",
    "load_scan_tensor",
]


_WORKER_SCAN_ERROR = re.compile(
    r"Caught ScanError in DataLoader worker.*\n(?:[\w.]+\.)?ScanError: (?P<path>.+?): (?P<problem>.*)\Z",
    re.DOTALL,
)


def find_scan_error(exc: BaseException | None) -> ScanError | None:
    """Return the :class:`ScanError` behind ``exc`` (itself, or along ``__cause__`` / ``__context__``).

    Also recognises the ``RuntimeError("Caught ScanError in DataLoader worker process ...")`` that a
    ``torch.utils.data.DataLoader`` with ``num_workers > 0`` raises in place of the worker's ScanError,
    and rebuilds an equivalent ScanError (path and problem parsed from its text).

    Args:
        exc: an exception, e.g. the ``RuntimeError`` MONAI raises from a ``Compose`` or ``Dataset``.

    Returns:
        the first ScanError found walking the chain, or ``None``.
    """
    seen: set[int] = set()
    stack = [exc]
    chain = []
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ScanError):
            return e
        chain.append(e)
        stack.extend([e.__context__, e.__cause__])  # cause popped first
    # A DataLoader worker re-raises a ScanError as RuntimeError holding only the formatted traceback
    # (torch cannot rebuild a two-argument exception); recover path and problem from that text.
    for e in chain:
        match = _WORKER_SCAN_ERROR.search(str(e))
        if match:
            return ScanError(match.group("path"), match.group("problem").rstrip())
    return None


class ScanCompose(Compose):
    """A MONAI ``Compose`` that lets a :class:`ScanError` raised by one of its transforms propagate as is.

    Plain ``Compose`` would raise ``RuntimeError("applying transform ...")`` with the ScanError only as
    its cause; here ``except ScanError`` works around a direct call. Behaviour is otherwise identical
    (``CacheDataset``'s ``start`` / ``end`` / ``threading`` arguments are passed through).
    """

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except ScanError:
            raise
        except Exception as exc:
            scan_error = find_scan_error(exc)
            if scan_error is None:
                raise
            raise scan_error from None


def get_transforms(keys: Sequence[str] = ("image",), extra_keys: Sequence[str] = ()) -> ScanCompose:
    """The deterministic chain: load -> template grid -> brain z-score -> float32 tensor.

    Orientation/spacing: output on the FSL MNI152 2 mm grid (91 x 109 x 91, voxel axes L-A-S).

    Args:
        keys: keys whose values are NIfTI paths; each becomes a float32 MetaTensor ``[1, 91, 109, 91]``
            with ``.affine`` = ``TEMPLATE_AFFINE`` and brain voxels z-scored (background 0).
        extra_keys: non-image keys (e.g. ``"label"``, ``"age"``) converted to float32 tensors by the final
            ``EnsureTyped``; they may be missing from a sample. Other keys pass through unchanged.

    Returns:
        a :class:`ScanCompose` (a ``monai.transforms.Compose``) applying, per sample dictionary,
        ``LoadScand -> ResampleToTemplated -> NormalizeBraind -> EnsureTyped(float32)``.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    extra_keys = [extra_keys] if isinstance(extra_keys, str) else list(extra_keys)
    chain = [
        LoadScand(keys),
        ResampleToTemplated(keys, mode="bilinear"),
        NormalizeBraind(keys),
        EnsureTyped(keys, dtype=torch.float32),
    ]
    if extra_keys:
        chain.append(EnsureTyped(extra_keys, dtype=torch.float32, allow_missing_keys=True))
    return ScanCompose(chain)


def get_train_transforms(keys: Sequence[str] = ("image",), extra_keys: Sequence[str] = ()) -> ScanCompose:
    """Training chain: today the same as :func:`get_transforms` (the paper uses no augmentation).

    Kept as a separate name so augmentation can be added to training without touching inference.
    """
    return get_transforms(keys, extra_keys)


def get_inference_transforms(keys: Sequence[str] = ("image",), extra_keys: Sequence[str] = ()) -> ScanCompose:
    """Evaluation / inference chain: the deterministic :func:`get_transforms`."""
    return get_transforms(keys, extra_keys)


def load_scan_tensor(path: str | PathLike) -> torch.Tensor:
    """Run the inference chain on one NIfTI file.

    Args:
        path: ``.nii`` / ``.nii.gz`` T1 scan registered to MNI space (any voxel size / orientation).

    Returns:
        float32 tensor ``[1, 91, 109, 91]`` on the MNI152 2 mm grid (axes L-A-S), brain z-scored. Add the
        batch dimension with ``x[None]``.

    Raises:
        ScanError: naming the file, when it cannot be used (see :func:`~.io.load_scan`).
    """
    out = get_inference_transforms(keys=("image",))({"image": os.fspath(path)})["image"]
    return out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
