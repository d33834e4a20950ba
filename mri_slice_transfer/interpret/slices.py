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
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mri_slice_transfer.fileio import atomic_write_text
from mri_slice_transfer.interpret.geometry import slice_mni_coordinates, slice_template_voxels
from mri_slice_transfer.networks.slice_set import AttentionAggregation, SliceSetNet

__all__ = ["SLICE_COLUMNS", "SliceImportance", "slice_importance", "write_slice_csv"]

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


def write_slice_csv(result: SliceImportance, path: str | os.PathLike) -> Path:
    """Write one scan's slice importance as CSV (:data:`SLICE_COLUMNS`; ``attention`` empty if none).

    Args:
        result: from :func:`slice_importance`.
        path: output file, written atomically.

    Returns:
        ``path``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SLICE_COLUMNS)
    for i in range(len(result.importance)):
        att = "" if result.attention is None else f"{result.attention[i]:.6g}"
        row = (
            i,
            f"{result.template_voxel[i]:.4g}",
            f"{result.mni_mm[i]:.4g}",
            f"{result.importance[i]:.6g}",
            att,
        )
        writer.writerow(row)
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path
