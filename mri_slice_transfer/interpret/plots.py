"""Pictures: a saliency map over the MNI152 template in three views, and slice importance vs position.

matplotlib (Agg backend) and nilearn are imported here only (the import rule's optional plotting
dependencies); the overlay background is the MNI152 template shipped with nilearn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from mri_slice_transfer.interpret.slices import SliceImportance
from mri_slice_transfer.plotting import pyplot, save_figure

__all__ = ["plot_overlay", "plot_slice_importance"]

_AXIS_LABEL = {"sagittal": "x", "coronal": "y", "axial": "z"}


@lru_cache(maxsize=1)
def _background():
    """nilearn's MNI152 template (1 mm), loaded once per process."""
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=1)


def plot_overlay(
    nifti: str | os.PathLike, path: str | os.PathLike, title: str = "", signed: bool = False
) -> Path:
    """PNG of a template-grid map over the MNI152 template: sagittal, coronal and axial views.

    Args:
        nifti: the map (NIfTI on the template grid).
        path: output PNG, written atomically.
        title: the figure title.
        signed: a signed map (occlusion sensitivity: red up, blue down); else a [0, 1] map whose lowest
            fifth is left transparent.

    Returns:
        ``path``.
    """
    plt = pyplot()
    import nibabel as nib
    from nilearn import plotting

    img = nib.load(os.fspath(nifti))
    data = np.asarray(img.dataobj, dtype=np.float32)
    peak = float(np.abs(data).max()) or 1.0
    cut = plotting.find_xyz_cut_coords(nib.Nifti1Image(np.abs(data), img.affine))
    fig = plt.figure(figsize=(9, 3.2))
    plotting.plot_stat_map(
        img,
        bg_img=_background(),
        display_mode="ortho",
        cut_coords=cut,
        threshold=0.0 if signed else 0.2 * peak,
        vmax=peak,
        symmetric_cbar=signed,
        cmap="cold_hot" if signed else "hot",
        title=title or None,
        figure=fig,
        draw_cross=False,
        annotate=True,
    )
    return save_figure(fig, path, dpi=100)


def plot_slice_importance(
    result: SliceImportance | Sequence[SliceImportance], path: str | os.PathLike, title: str = ""
) -> Path:
    """PNG of slice importance (and attention weights, if any) against the slices' MNI coordinate.

    Args:
        result: from :func:`~.slices.slice_importance` (or a group average of them), or one per plane
            (:func:`~.slices.slice_importances`): one panel per plane, stacked.
        path: output PNG, written atomically.
        title: the figure title.

    Returns:
        ``path``.
    """
    plt = pyplot()
    results = (result,) if isinstance(result, SliceImportance) else tuple(result)
    fig, axes = plt.subplots(len(results), 1, figsize=(7, 3.2 * len(results)), squeeze=False)
    for ax, res in zip(axes[:, 0], results, strict=True):
        _importance_panel(ax, res, title if len(results) == 1 else f"{title} ({res.axis})".strip())
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _importance_panel(ax, result: SliceImportance, title: str) -> None:  # noqa: ANN001 - a matplotlib Axes
    """One plane's importance (and attention) curve on ``ax``."""
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.plot(result.mni_mm, result.importance, color="C0", lw=1.5, label="importance (drop the slice)")
    ax.set_xlabel(f"{result.axis} slice position: MNI {_AXIS_LABEL[result.axis]} (mm)")
    ax.set_ylabel("output - output without slice")
    if result.attention is not None:
        twin = ax.twinx()
        twin.plot(result.mni_mm, result.attention, color="C1", lw=1.0, ls="--", label="attention weight")
        twin.set_ylabel("attention weight", color="C1")
    ax.set_title(title or f"slice importance ({result.axis})")
