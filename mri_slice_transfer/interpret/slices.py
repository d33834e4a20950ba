"""Slice importance of a slice-set network: drop one slice's embedding, see how the output moves.

For a scan ``x`` with slice embeddings ``e_1 .. e_K`` (after positional encoding) the importance of
slice ``k`` is ``f(x) - f_{-k}(x)``: the network's output (AD logit or age) minus its output when
slice ``k`` is left out of the aggregated set. Dropping (rather than zeroing the embedding or blanking
the slice's pixels) is the natural occlusion for a set function: mean, max and attention pooling are
all defined on any number of slices, so ``f_{-k}`` is exactly "the model shown every slice but one",
with no out-of-distribution input (a blank slice still has an embedding, which a mean would average
in). It costs one encoder pass and ``K`` cheap aggregation + head passes. A slice the network ignores
(zero attention weight, never the max) gets importance 0.

For attention aggregation the attention weights ``a_k`` are reported too.

A several-plane model (:class:`~mri_slice_transfer.networks.planes.MultiPlaneNet`, ``axis all``) gets one
:class:`SliceImportance` per plane (:func:`plane_slice_importance`): slice ``k`` of plane ``p`` is left
out of that plane's set, the other planes' embeddings stay, and the fused output is compared.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mri_slice_transfer.fileio import atomic_write_text
from mri_slice_transfer.interpret.geometry import slice_mni_coordinates, slice_template_voxels
from mri_slice_transfer.networks.planes import MultiPlaneNet
from mri_slice_transfer.networks.slice_set import AttentionAggregation, SliceSetNet

__all__ = [
    "SLICE_COLUMNS",
    "SliceImportance",
    "plane_slice_importance",
    "slice_importance",
    "slice_importances",
    "write_slice_csv",
]

#: Columns of a per-scan slice-importance CSV.
SLICE_COLUMNS: tuple[str, ...] = ("slice", "template_voxel", "mni_mm", "importance", "attention")


@dataclass(frozen=True)
class SliceImportance:
    """Per-slice importance of one scan.

    Attributes:
        axis: the model's slicing axis.
        output: the network output on the whole scan.
        importance: ``[K]``, output minus the output without that slice (output units).
        mni_mm: ``[K]``, MNI coordinate of each slice's centre along ``axis``.
        template_voxel: ``[K]``, the same as a template voxel coordinate.
        attention: ``[K]`` attention weights (attention aggregation), else None.
    """

    axis: str
    output: float
    importance: np.ndarray
    mni_mm: np.ndarray
    template_voxel: np.ndarray
    attention: np.ndarray | None = None


@torch.no_grad()
def slice_importance(net: SliceSetNet, x: torch.Tensor, output_index: int = 0) -> SliceImportance:
    """Leave-one-slice-out importance of every slice of one scan.

    Args:
        net: a slice-set network (put in eval mode here).
        x: one scan ``[1, 1, X, Y, Z]`` on the network's grid.
        output_index: which output to explain.

    Returns:
        the :class:`SliceImportance` of the scan.
    """
    if not isinstance(net, SliceSetNet):
        raise TypeError(f"slice importance needs a slice-set network, not {type(net).__name__}")
    if x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(f"expected one scan [1, 1, X, Y, Z], not shape {tuple(x.shape)}")
    net.eval()
    emb = net.embed(x)  # [1, K, d]
    full = net.head(net.aggregate(emb))[0, output_index]
    attention = None
    if isinstance(net.aggregate, AttentionAggregation):
        attention = net.aggregate.last_weights[0].float().cpu().numpy()
    k = emb.shape[1]
    keep = ~torch.eye(k, dtype=torch.bool, device=emb.device)  # row j: every slice but j
    # slice j masked out (not removed), so the others keep their positions (transformer rotary)
    without = net.head(net.aggregate(emb.expand(k, -1, -1), mask=keep))[:, output_index]
    return SliceImportance(
        axis=net.axis,
        output=float(full),
        importance=(full - without).float().cpu().numpy(),
        mni_mm=slice_mni_coordinates(net.axis, k),
        template_voxel=slice_template_voxels(net.axis, k),
        attention=attention,
    )


@torch.no_grad()
def plane_slice_importance(
    net: MultiPlaneNet, x: torch.Tensor, output_index: int = 0
) -> tuple[SliceImportance, ...]:
    """Leave-one-slice-out importance of every slice of every plane of one scan (several-plane model).

    Args:
        net: a :class:`~mri_slice_transfer.networks.planes.MultiPlaneNet` (put in eval mode here).
        x: one scan ``[1, 1, X, Y, Z]`` on the network's grid.
        output_index: which output to explain.

    Returns:
        one :class:`SliceImportance` per plane, in the model's plane order: slice ``k`` of plane ``p``
        left out of that plane's set, the other planes' pooled embeddings unchanged.
    """
    if x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(f"expected one scan [1, 1, X, Y, Z], not shape {tuple(x.shape)}")
    net.eval()
    embs, pooled, attention = {}, {}, {}
    for p in net.axes:
        branch = net.planes[p]
        embs[p] = branch.embed(x)  # [1, K_p, d]
        pooled[p] = branch.aggregate(embs[p])
        last = branch.aggregate.last_weights if isinstance(branch.aggregate, AttentionAggregation) else None
        attention[p] = None if last is None else last[0].float().cpu().numpy()
    full = net.head(net.fuse(list(pooled.values())))[0, output_index]
    results = []
    for p in net.axes:
        k = embs[p].shape[1]
        keep = ~torch.eye(k, dtype=torch.bool, device=x.device)  # row j: every slice of p but j
        without_p = net.planes[p].aggregate(embs[p].expand(k, -1, -1), mask=keep)
        fused = net.fuse([without_p if q == p else pooled[q].expand(k, -1) for q in net.axes])
        without = net.head(fused)[:, output_index]
        results.append(
            SliceImportance(
                axis=p,
                output=float(full),
                importance=(full - without).float().cpu().numpy(),
                mni_mm=slice_mni_coordinates(p, k),
                template_voxel=slice_template_voxels(p, k),
                attention=attention[p],
            )
        )
    return tuple(results)


def slice_importances(
    net: torch.nn.Module, x: torch.Tensor, output_index: int = 0
) -> tuple[SliceImportance, ...]:
    """Slice importance per plane: one entry for a ``SliceSetNet``, one per plane for a ``MultiPlaneNet``.

    Args:
        net: a slice-set network of either kind.
        x: one scan ``[1, 1, X, Y, Z]`` on the network's grid.
        output_index: which output to explain.

    Returns:
        the :class:`SliceImportance` of each plane.
    """
    if isinstance(net, MultiPlaneNet):
        return plane_slice_importance(net, x, output_index)
    return (slice_importance(net, x, output_index),)


def write_slice_csv(result: SliceImportance | Sequence[SliceImportance], path: str | os.PathLike) -> Path:
    """Write one scan's slice importance as CSV (:data:`SLICE_COLUMNS`; ``attention`` empty if none).

    Args:
        result: from :func:`slice_importance`, or :func:`slice_importances`' per-plane results: one
            plane gives the same file; several add a first column ``axis`` (the plane of each row).
        path: output file, written atomically.

    Returns:
        ``path``.
    """
    results = (result,) if isinstance(result, SliceImportance) else tuple(result)
    several = len(results) > 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow((("axis",) if several else ()) + SLICE_COLUMNS)
    for res in results:
        for i in range(len(res.importance)):
            att = "" if res.attention is None else f"{res.attention[i]:.6g}"
            row = (
                i,
                f"{res.template_voxel[i]:.4g}",
                f"{res.mni_mm[i]:.4g}",
                f"{res.importance[i]:.6g}",
                att,
            )
            writer.writerow(((res.axis,) if several else ()) + row)
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path
