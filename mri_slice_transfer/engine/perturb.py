"""Robustness evaluation: the test split under scanner-like perturbations at fixed severities.

Each perturbation is applied to the *preprocessed* image (after resampling, normalisation and input
scaling, just before the network), at severities 0-3; severity 0 is the identity (the image object is
returned untouched), so its metrics are the clean evaluation's. Parameters per severity
(:data:`SEVERITY_PARAMETERS`, documented in ``docs/bundles.md``):

===========  ===============================================================  =====  =====  =====
name         what (MONAI transform)                                            1      2      3
===========  ===============================================================  =====  =====  =====
bias_field   ``RandBiasField(degree=3, coeff_range=(-c, c))``, c =              0.1    0.2    0.3
gibbs        ``GibbsNoise(alpha)`` (k-space truncation ringing), alpha =       0.3    0.5    0.7
noise        additive Gaussian noise, std = k x the scan's intensity std, k =  0.05   0.1    0.2
contrast     ``AdjustContrast(gamma)`` (gamma curve on the scan's range), g =  1.25   1.5    2.0
motion       TorchIO ``Motion``: 2 rigid movements at random times during the    1      2      4
             k-space readout, each rotating up to m degrees and translating
             up to m voxels per axis, m =
===========  ===============================================================  =====  =====  =====

Randomness (bias-field coefficients, noise, motion directions and times) is seeded per scan from
``seed``, the perturbation's name and a CRC-32 of the clean image, never from the severity or from
the order in which scans are loaded: a rerun repeats every number, and the severities of one scan
share their random draws (coefficients, noise and movements are scaled copies of each other), so
the distance from the clean image grows with the severity. Motion uses TorchIO (MONAI has no motion
transform): its ``Motion`` resamples the image at each pose and stitches their k-space segments
(Shaw et al., MIDL 2019), on the model's input grid (voxels as the unit).
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.transforms import AdjustContrast, GibbsNoise, RandBiasField

from mri_slice_transfer.engine.io import write_csv
from mri_slice_transfer.plotting import pyplot, save_figure
from mri_slice_transfer.vocabulary import Perturbation, look_up, task_spec

__all__ = [
    "Perturbation",
    "SEVERITIES",
    "SEVERITY_PARAMETERS",
    "ROBUSTNESS_CSV",
    "ROBUSTNESS_PNG",
    "parse_perturbations",
    "parse_severities",
    "perturb_image",
    "PerturbImaged",
    "run_robustness",
    "plot_robustness",
]

logger = logging.getLogger(__name__)

ROBUSTNESS_CSV = "robustness.csv"
ROBUSTNESS_PNG = "robustness.png"


#: The severities; 0 is the identity.
SEVERITIES: tuple[int, ...] = (0, 1, 2, 3)

#: The parameter of severities 1, 2, 3 of each perturbation (see the module docstring).
SEVERITY_PARAMETERS: dict[Perturbation, tuple[float, float, float]] = {
    Perturbation.BIAS_FIELD: (0.1, 0.2, 0.3),
    Perturbation.GIBBS: (0.3, 0.5, 0.7),
    Perturbation.NOISE: (0.05, 0.1, 0.2),
    Perturbation.CONTRAST: (1.25, 1.5, 2.0),
    Perturbation.MOTION: (1.0, 2.0, 4.0),
}
#: Rigid movements of the ``motion`` perturbation (TorchIO's ``RandomMotion`` default).
MOTION_MOVEMENTS = 2


def parse_perturbations(perturb: str | Sequence[str]) -> list[Perturbation]:
    """The perturbations a comma list (``"bias_field,gibbs"``) or a list names, in order, once each.

    Raises:
        ValueError: an unknown name (with "did you mean" for a close spelling), or an empty list.
    """
    items = perturb.split(",") if isinstance(perturb, str) else list(perturb)
    names = [str(p).strip() for p in items if str(p).strip()]
    if not names:
        raise ValueError(f"perturb: name at least one of {', '.join(p.value for p in Perturbation)}")
    out: list[Perturbation] = []
    for name in names:
        member = look_up(name, Perturbation, "perturbation")
        if member not in out:
            out.append(member)
    return out


def parse_severities(severities: str | int | Sequence[int] | None) -> list[int]:
    """The perturbed severities a comma list (``"2"``, ``"1,2,3"``), a number or a list names; None: 1-3.

    Raises:
        ValueError: a severity that is not 1, 2 or 3.
    """
    if severities is None or (isinstance(severities, str) and severities.strip().lower() in ("", "all")):
        return list(SEVERITIES[1:])
    if isinstance(severities, str):
        items: list[Any] = severities.split(",")
    elif isinstance(severities, Sequence):
        items = list(severities)
    else:
        items = [severities]
    allowed = {str(s) for s in SEVERITIES[1:]}
    bad = [item for item in items if str(item).strip() not in allowed]
    if bad or not items:
        raise ValueError(f"perturb_severities must be 1, 2 or 3 (comma-separated), not {severities!r}")
    return sorted({int(str(item).strip()) for item in items})


def _scan_seed(image: torch.Tensor, perturbation: Perturbation, seed: int) -> int:
    """A seed from ``seed``, the perturbation and the clean image's bytes (not its load order)."""
    data = image.detach().cpu().contiguous().numpy().tobytes()
    return (zlib.crc32(data, zlib.crc32(perturbation.value.encode(), int(seed) & 0xFFFFFFFF))) & 0x7FFFFFFF


def perturb_image(
    image: torch.Tensor, perturbation: str | Perturbation, severity: int, seed: int = 0
) -> torch.Tensor:
    """``image`` (channel-first, ``[C, *spatial]``) under ``perturbation`` at ``severity``.

    Severity 0 returns ``image`` itself. The result has ``image``'s dtype and device.

    Raises:
        ValueError: an unknown perturbation or a severity outside :data:`SEVERITIES`.
    """
    kind = look_up(perturbation, Perturbation, "perturbation")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, not {severity!r}")
    if severity == 0:
        return image
    value = SEVERITY_PARAMETERS[kind][severity - 1]
    rng = np.random.RandomState(_scan_seed(image, kind, seed))
    x = torch.as_tensor(image).detach().cpu().float()
    if kind is Perturbation.BIAS_FIELD:
        field = RandBiasField(degree=3, coeff_range=(-value, value), prob=1.0)
        field.set_random_state(state=rng)
        out = torch.as_tensor(field(x))
    elif kind is Perturbation.GIBBS:
        out = torch.as_tensor(GibbsNoise(alpha=value)(x))
    elif kind is Perturbation.NOISE:
        noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
        out = x + value * float(x.std()) * noise
    elif kind is Perturbation.MOTION:
        out = _motion(x, value, rng)
    else:
        out = torch.as_tensor(AdjustContrast(gamma=value)(x))
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return out.to(dtype=image.dtype, device=image.device)


def _motion(x: torch.Tensor, extent: float, rng: np.random.RandomState) -> torch.Tensor:
    """``x`` ([C, X, Y, Z]) under TorchIO's ``Motion``: :data:`MOTION_MOVEMENTS` movements of up to
    ``extent`` degrees and voxels per axis. Directions and times come from ``rng`` before ``extent``
    scales them, so one scan's severities share them."""
    import torchio

    directions = rng.uniform(-1.0, 1.0, size=(2, MOTION_MOVEMENTS, 3))
    times = np.sort(rng.uniform(0.1, 0.9, size=MOTION_MOVEMENTS))
    motion = torchio.transforms.Motion(
        degrees=extent * directions[0],
        translation=extent * directions[1],
        times=times,
        image_interpolation="linear",
    )
    return torch.as_tensor(motion(torchio.ScalarImage(tensor=x, affine=np.eye(4))).data).float()


class PerturbImaged:
    """A dict transform: ``data["image"]`` under the current :attr:`condition` (identity until set).

    It sits after the preprocessing (and its :class:`~mri_slice_transfer.engine.SafeTransform`), so
    the network sees the perturbed image; a scan that failed to load (``status == "error"``) is left
    alone.

    Args:
        seed: the base seed of :func:`perturb_image`.
        key: the image key.
    """

    def __init__(self, seed: int = 0, key: str = "image") -> None:
        self.seed = int(seed)
        self.key = key
        self.condition: tuple[Perturbation, int] | None = None

    def set(self, perturbation: str | Perturbation, severity: int) -> None:
        """Perturb by ``perturbation`` at ``severity`` from now on."""
        self.condition = (look_up(perturbation, Perturbation, "perturbation"), int(severity))

    def __call__(self, data: dict) -> dict:
        if self.condition is None or self.condition[1] == 0 or data.get("status") == "error":
            return data
        out = dict(data)
        out[self.key] = perturb_image(data[self.key], *self.condition, seed=self.seed)
        return out


def _metrics_row(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def run_robustness(
    evaluator: Any,
    perturber: PerturbImaged,
    perturb: str | Sequence[str],
    task: str,
    output_dir: str | os.PathLike,
    severities: str | int | Sequence[int] | None = None,
) -> pd.DataFrame:
    """Run ``evaluator`` once clean and once per perturbation and severity; write CSV and plot.

    Args:
        evaluator: an Ignite/MONAI evaluator whose data loader's transform ends in ``perturber``; its
            ``state.metrics`` after a run are the row's metrics.
        perturber: the :class:`PerturbImaged` of that data loader.
        perturb: the perturbations, a comma list or a list (:func:`parse_perturbations`).
        task: the task (its key metric is plotted).
        output_dir: where ``robustness.csv`` and ``robustness.png`` go.
        severities: the severities to run (:func:`parse_severities`; default 1, 2, 3), e.g. ``"2"`` for
            the middle one only (``grid --preset architectures``).

    Returns:
        The table: ``perturbation``, ``severity``, ``parameter`` then the evaluator's metrics. Severity
        0 is one clean run, repeated as the first row of every perturbation.
    """
    kinds = parse_perturbations(perturb)
    levels = parse_severities(severities)
    key = task_spec(task).key_metric
    perturber.condition = None
    evaluator.run()
    clean = _metrics_row(evaluator.state.metrics)
    rows = []
    for kind in kinds:
        rows.append({"perturbation": kind.value, "severity": 0, "parameter": math.nan, **clean})
        for severity in levels:
            perturber.set(kind, severity)
            evaluator.run()
            metrics = _metrics_row(evaluator.state.metrics)
            logger.info(
                "robustness %s severity %d: %s = %.4g", kind.value, severity, key, metrics.get(key, math.nan)
            )
            rows.append(
                {
                    "perturbation": kind.value,
                    "severity": severity,
                    "parameter": SEVERITY_PARAMETERS[kind][severity - 1],
                    **metrics,
                }
            )
    perturber.condition = None
    table = pd.DataFrame(rows)
    write_csv(rows, Path(output_dir) / ROBUSTNESS_CSV)
    plot_robustness(table, key, Path(output_dir) / ROBUSTNESS_PNG)
    return table


def plot_robustness(table: pd.DataFrame, metric: str, path: str | os.PathLike) -> Path:
    """``metric`` against severity, one line per perturbation, as a PNG at ``path``."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    for name, part in table.groupby("perturbation", sort=False):
        ax.plot(part["severity"], part[metric] if metric in part else np.nan, marker="o", label=str(name))
    ax.set_xticks(list(SEVERITIES))
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, format="png")
