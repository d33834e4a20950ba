"""Interpret a trained model on a list of scans: per-scan outputs, a summary CSV and group maps.

``out/`` gets, for each scan ``<name>`` (the file name without its ending, made unique)::

    <name>/slices.csv, slices.png          slice importance (slice-set networks)
    <name>/gradcam.nii.gz, gradcam.png     Grad-CAM on the template grid, [0, 1]
    <name>/occlusion.nii.gz, occlusion.png occlusion sensitivity (if asked for)
    group/...                              the same files, averaged over the scans that worked
    interpret.csv                          one row per scan: output, status, error, files

A scan that cannot be read or explained gets ``status=error`` and the reason in ``error``; the other
scans are processed. Every NIfTI is on the template grid with the template affine.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_slice_transfer.engine.io import write_csv
from mri_slice_transfer.interpret.geometry import save_template_nifti
from mri_slice_transfer.interpret.methods import DEFAULT_METHODS, METHODS
from mri_slice_transfer.interpret.slices import SliceImportance, slice_importances, write_slice_csv
from mri_slice_transfer.networks.planes import MultiPlaneNet
from mri_slice_transfer.networks.slice_set import SliceSetNet
from mri_slice_transfer.vocabulary import IMAGE_SUFFIXES

__all__ = ["InterpretResult", "interpret_scans", "scan_names"]

logger = logging.getLogger(__name__)

#: Name of the per-scan summary in the output folder.
SUMMARY_CSV = "interpret.csv"
#: Scans between progress log lines when standard error is not a terminal (no bar).
LOG_EVERY = 10
#: Sub-folder of the group averages.
GROUP = "group"


@dataclass
class InterpretResult:
    """What :func:`interpret_scans` did.

    Attributes:
        rows: one dict per scan (the rows of ``interpret.csv``).
        summary_csv: path of ``interpret.csv``.
        group: method -> group-average file (NIfTI or slice CSV).
    """

    rows: list[dict] = field(default_factory=list)
    summary_csv: Path | None = None
    group: dict[str, Path] = field(default_factory=dict)

    @property
    def n_errors(self) -> int:
        return sum(r["status"] != "ok" for r in self.rows)


def scan_names(images: Sequence[str]) -> list[str]:
    """Unique output names: each file name without its image ending (``-2``, ``-3`` for repeats)."""
    names, seen = [], {}
    for image in images:
        base = Path(image).name
        for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        base = base or "scan"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def _check_methods(
    methods: Sequence[str] | None, net: torch.nn.Module, gradcam_layer: str | None
) -> tuple[str, ...]:
    """The methods to run: the named ones (an error if one cannot run) or the defaults that can."""
    from mri_slice_transfer.interpret.gradcam import gradcam_unsupported

    explicit = methods is not None
    methods = list(methods if explicit else DEFAULT_METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be some of {', '.join(METHODS)}, not {', '.join(bad) or 'none'}")
    reason = gradcam_unsupported(net) if "gradcam" in methods else None
    if reason and (isinstance(net, MultiPlaneNet) or gradcam_layer is None):
        if explicit:
            raise ValueError(f"methods: gradcam: {reason}")
        logger.warning("Grad-CAM skipped (not asked for by name): %s", reason)
        methods = [m for m in methods if m != "gradcam"]
    if "slices" in methods and not isinstance(net, (SliceSetNet, MultiPlaneNet)):
        logger.warning("slice importance skipped: %s is not a slice-set network", type(net).__name__)
        methods = [m for m in methods if m != "slices"]
    return tuple(dict.fromkeys(methods))


class _Group:
    """Running sums of per-scan maps and slice importances, for the group average."""

    def __init__(self) -> None:
        self.maps: dict[str, np.ndarray] = {}
        self.slices: list[tuple[SliceImportance, ...]] = []  # per scan: one per plane
        self.count: dict[str, int] = {}

    def add(self, method: str, value: Any) -> None:
        if method == "slices":
            self.slices.append(value)
            return
        self.maps[method] = self.maps.get(method, 0.0) + value
        self.count[method] = self.count.get(method, 0) + 1

    def write(self, out: Path) -> dict[str, Path]:
        from mri_slice_transfer.interpret.plots import plot_overlay, plot_slice_importance

        files: dict[str, Path] = {}
        for method, total in self.maps.items():
            n = self.count[method]
            nii = save_template_nifti(total / n, out / f"{method}.nii.gz", f"group mean {method}, {n} scans")
            plot_overlay(
                nii, out / f"{method}.png", f"group mean {method} ({n} scans)", method == "occlusion"
            )
            files[method] = nii
        if self.slices:
            mean = tuple(
                _mean_importance([scan[i] for scan in self.slices]) for i in range(len(self.slices[0]))
            )
            files["slices"] = write_slice_csv(mean, out / "slices.csv")
            plot_slice_importance(
                mean, out / "slices.png", f"group mean slice importance ({len(self.slices)} scans)"
            )
        return files


def _mean_importance(results: list[SliceImportance]) -> SliceImportance:
    """The group mean of one plane's slice importance over scans."""
    first = results[0]
    return replace(
        first,
        output=float(np.mean([s.output for s in results])),
        importance=np.mean([s.importance for s in results], axis=0),
        attention=None if first.attention is None else np.mean([s.attention for s in results], axis=0),
    )


def _explainers(
    net: torch.nn.Module, methods: Sequence[str], occlusion_mask: int, gradcam_layer: str | None
) -> dict[str, Any]:
    from mri_slice_transfer.interpret.gradcam import GradCAMMap
    from mri_slice_transfer.interpret.occlusion import OcclusionMap

    made: dict[str, Any] = {}
    if "slices" in methods:
        made["slices"] = lambda x: slice_importances(net, x)
    if "gradcam" in methods:
        made["gradcam"] = GradCAMMap(net, layer=gradcam_layer)
    if "occlusion" in methods:
        made["occlusion"] = OcclusionMap(net, mask_size=occlusion_mask)
    return made


def _explain_scan(
    x: torch.Tensor, explainers: dict[str, Any], folder: Path, title: str, plots: bool = True
) -> tuple[dict, dict]:
    """Run every method on one scan and write its files; returns (row fields, values for the group)."""
    from mri_slice_transfer.interpret.plots import plot_overlay, plot_slice_importance

    fields: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for method, explain in explainers.items():
        value = explain(x)
        values[method] = value
        if method == "slices":
            fields["slices_csv"] = str(write_slice_csv(value, folder / "slices.csv"))
            if plots:
                plot_slice_importance(value, folder / "slices.png", f"{title}: slice importance")
            continue
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(f"the {method} map has non-finite values (non-finite network output?)")
        nii = save_template_nifti(value, folder / f"{method}.nii.gz", f"{method} {title}")
        if plots:
            plot_overlay(nii, folder / f"{method}.png", f"{title}: {method}", signed=method == "occlusion")
        fields[f"{method}_nii"] = str(nii)
    return fields, values


def _explain_into(
    row: dict,
    x: torch.Tensor,
    net: torch.nn.Module,
    explainers: dict[str, Any],
    folder: Path,
    group: _Group,
    plots: bool = True,
) -> None:
    """Explain one loaded scan into ``row`` and ``group``; a failure becomes the row's error."""
    try:
        with torch.no_grad():
            row["output"] = float(net(x)[0, 0])
        fields, values = _explain_scan(x, explainers, folder, folder.name, plots)
    except Exception as exc:  # noqa: BLE001 - one scan's failure becomes its error row
        row.update(status="error", error=f"{type(exc).__name__}: {exc}".replace("\n", " "))
        logger.warning("%s: %s", row["image"], row["error"])
        return
    row.update(fields)
    for method, value in values.items():
        group.add(method, value)


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="interpret", unit="scan", disable=None, file=sys.stderr)


def interpret_scans(
    bundle: str | os.PathLike,
    source: str,
    out_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    dataset_dir: str | None = None,
    occlusion_mask: int = 8,
    architecture: dict[str, Any] | None = None,
    gradcam_layer: str | None = None,
    scan_plots: bool = True,
) -> InterpretResult:
    """Explain a trained model's output on every scan of ``source``; see the module docstring for files.

    Args:
        bundle: the trained bundle folder (``models/model.pt`` + ``models/model.json``).
        source: a folder, a glob or a CSV with an ``image`` column (as for inference).
        out_dir: output folder (created).
        methods: some of :data:`METHODS`; None: :data:`DEFAULT_METHODS` less Grad-CAM where the model has no
            default Grad-CAM layer (a several-plane model, a ViT / Swin encoder; a warning says so).
        dataset_dir: base folder of a CSV's relative image paths (default: the CSV's folder).
        occlusion_mask: occlusion patch size in voxels of the model's input grid.
        architecture: explicit architecture options for a model record without them (0.5.0), see
            :func:`~mri_slice_transfer.interpret.model.load_trained_model`.
        gradcam_layer: Grad-CAM's conv layer (a module name); None: the encoder's last conv block.
        scan_plots: write each scan's PNGs (the group's are always written).

    Returns:
        the :class:`InterpretResult`; ``interpret.csv`` and the group files are written.
    """
    from mri_slice_transfer.engine.inputs import resolve_inputs
    from mri_slice_transfer.engine.predictions import SafeTransform
    from mri_slice_transfer.engine.resize import with_resize
    from mri_slice_transfer.interpret.model import load_trained_model
    from mri_slice_transfer.transforms import get_inference_transforms

    net, record = load_trained_model(bundle, architecture)
    explainers = _explainers(net, _check_methods(methods, net, gradcam_layer), occlusion_mask, gradcam_layer)
    transform = SafeTransform(
        with_resize(get_inference_transforms(), record.input_scale), record.spatial_size
    )
    items = resolve_inputs(source, dataset_dir)
    out, group, result = Path(out_dir), _Group(), InterpretResult()
    with _progress(len(items)) as bar:
        for item, name in zip(items, scan_names([i["image"] for i in items]), strict=True):
            row = {k: item[k] for k in ("image", "subject_id", "session_id")}
            row.update(name=name, output=np.nan, status="ok", error="")
            data = transform(item)  # an unreadable scan: status "error", logged there
            if data["status"] != "ok":
                row.update(status="error", error=data["error"])
            else:
                _explain_into(
                    row, data["image"][None].float(), net, explainers, out / name, group, scan_plots
                )
            result.rows.append(row)
            bar.update(1)
            if bar.disable and (len(result.rows) % LOG_EVERY == 0 or len(result.rows) == len(items)):
                logger.info("interpret: %d/%d scans", len(result.rows), len(items))
    n_ok = len(result.rows) - result.n_errors
    result.group = group.write(out / GROUP) if n_ok else {}
    result.summary_csv = write_csv(result.rows, out / SUMMARY_CSV)
    logger.info("interpreted %d scans (%d errors) -> %s", len(result.rows), result.n_errors, out)
    return result
