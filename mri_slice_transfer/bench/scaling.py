"""Throughput against batch size and input scale (slice count), drawn as a PNG with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = ["plot_scaling"]


def plot_scaling(points: Sequence[dict[str, Any]], path: str | PathLike, title: str = "") -> Path:
    """Draw scans/s and slices/s against batch size, one line per input scale, to ``path`` (PNG).

    Args:
        points: dicts with ``batch_size``, ``input_scale``, ``slices``, ``spatial_size`` and
            ``scans_per_s`` (the median); points with ``error`` are left out.
        path: output file.
        title: figure title.

    Returns:
        the written path.
    """
    from matplotlib.figure import Figure

    good = [p for p in points if not p.get("error") and p.get("scans_per_s")]
    fig = Figure(figsize=(10, 4.2), dpi=110)
    ax_scans, ax_slices = fig.subplots(1, 2)
    for scale in sorted({p["input_scale"] for p in good}):
        line = sorted((p for p in good if p["input_scale"] == scale), key=lambda p: p["batch_size"])
        size = "x".join(str(s) for s in line[0]["spatial_size"])
        label = f"scale {scale:g}: {size}, {line[0]['slices']} slices"
        bs = [p["batch_size"] for p in line]
        ax_scans.plot(bs, [p["scans_per_s"] for p in line], marker="o", label=label)
        ax_slices.plot(bs, [p["scans_per_s"] * p["slices"] for p in line], marker="o", label=label)
    ticks = sorted({p["batch_size"] for p in good})
    for ax, what in ((ax_scans, "scans/s"), (ax_slices, "slices/s (scans/s x slices per scan)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("batch size (scans)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    ax_scans.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
