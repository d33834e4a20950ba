"""Quality-control pictures: one PNG per prepared scan and an HTML overview of a batch.

:func:`qc_png` draws the prepared scan (template grid) in three orthogonal views through the template's
brain centre, with the outline of the template brain mask in colour: if registration worked, the outline
follows the edge of the brain. :func:`write_overview` writes ``qc.html``: every QC image of a batch,
flagged and failed scans first.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from mri_slice_transfer.fileio import atomic_write_text
from mri_slice_transfer.plotting import pyplot, save_figure

__all__ = ["qc_png", "write_overview"]


def qc_png(
    data: np.ndarray, mask: np.ndarray, path: str | PathLike, title: str = "", flagged: bool = False
) -> Path:
    """Write a QC PNG of ``data`` (x, y, z on the template grid, L-A-S voxel axes) with ``mask``'s outline.

    Args:
        data: registered scan on the template grid, shape (91, 109, 91), best before masking.
        mask: template brain mask, same shape.
        path: PNG file to write (atomically).
        title: text over the picture (file name, metric, status).
        flagged: draw the title in red.
    """
    plt = pyplot()
    path = Path(path)
    idx = np.argwhere(mask)
    cx, cy, cz = (idx.min(0) + idx.max(0)) // 2
    inside = data[mask] if mask.any() else data.ravel()
    vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    vmax = vmax if vmax > 0 else float(data.max() or 1.0)
    # Voxel axis 0 runs right -> left (L-A-S grid); flip it so the subject's left is on the left of the
    # coronal and axial views (neurological convention).
    views = [
        ("sagittal", data[cx, :, :].T, mask[cx, :, :].T),
        ("coronal", data[::-1, cy, :].T, mask[::-1, cy, :].T),
        ("axial", data[::-1, :, cz].T, mask[::-1, :, cz].T),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=80)
    fig.patch.set_facecolor("black")
    for ax, (name, img, m) in zip(axes, views, strict=True):
        ax.imshow(img, cmap="gray", origin="lower", vmin=0, vmax=vmax, interpolation="nearest")
        ax.contour(
            m.astype(float), levels=[0.5], colors=["#ff3030" if flagged else "#30ff60"], linewidths=0.8
        )
        ax.set_title(name, color="white", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, color="#ff5050" if flagged else "white", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, format="png", facecolor=fig.get_facecolor())


_ORDER = {"error": 0, "flagged": 1, "ok": 2, "skipped": 3}


def write_overview(rows: Sequence[dict], path: str | PathLike) -> Path:
    """Write an HTML contact sheet of a batch's QC images (errors and flagged scans first).

    Args:
        rows: manifest rows (dicts with ``input``, ``qc``, ``status``, ``metric``, ``error`` and optionally
            ``note`` / ``quality``).
        path: the HTML file (QC image links are made relative to its folder).
    """
    path = Path(path)

    def verdict(r: dict) -> str:  # a skipped scan is shown with the verdict of its earlier preparation
        status = str(r.get("status") or "ok")
        return str(r.get("quality") or status) if status == "skipped" else status

    def key(r: dict) -> tuple:
        return (_ORDER.get(verdict(r), 9), str(r.get("input")))

    cards = []
    counts: dict[str, int] = {}
    for r in sorted(rows, key=key):
        status = verdict(r)
        counts[status] = counts.get(status, 0) + 1
        colour = {"error": "#c00", "flagged": "#d60"}.get(status, "#2a2")
        text = html.escape(str(r.get("error") or r.get("note") or ""))
        metric = r.get("metric")
        metric_s = f"metric {float(metric):.3f}" if metric is not None and metric == metric else ""
        img = ""
        if r.get("qc") and isinstance(r.get("qc"), str) and Path(r["qc"]).is_file():
            rel = os.path.relpath(r["qc"], path.parent)
            img = f'<a href="{html.escape(rel)}"><img src="{html.escape(rel)}" loading="lazy"></a>'
        cards.append(
            f'<div class="card" style="border-color:{colour}">'
            f'<b style="color:{colour}">{html.escape(status)}</b> '
            f"{html.escape(Path(str(r.get('input'))).name)} {metric_s}<br>{img}"
            f"<div class=msg>{text}</div></div>"
        )
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: _ORDER.get(kv[0], 9)))
    page = (
        "<!doctype html><meta charset=utf-8><title>prepare QC</title><style>"
        "body{font-family:sans-serif;background:#111;color:#ddd}"
        ".card{display:inline-block;vertical-align:top;border:3px solid;margin:4px;padding:4px;width:560px}"
        ".card img{width:100%}.msg{font-size:12px;white-space:pre-wrap}</style>"
        f"<h1>Prepared scans: {html.escape(summary)}</h1>"
        "<p>Each image shows the prepared scan with the template brain outline; "
        "it should follow the brain's edge. "
        "Errors and flagged registrations come first.</p>" + "\n".join(cards)
    )
    atomic_write_text(path, page)
    return path
