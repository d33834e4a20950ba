"""Measure ``mri-slice-transfer prepare`` on a raw-space demo cohort whose true transforms are known.

Usage (the numbers in docs/prepare.md come from such commands)::

    mri-slice-transfer demo-data --task adni_ad --space raw --n 20 --seed 0 --out /tmp/prep_raw20 --workers 1
    python scripts/measure_prepare.py /tmp/prep_raw20 --out /tmp/prep_measure --dof 6 9 12 --threads 1
    python scripts/measure_prepare.py /tmp/prep_raw100 --out /tmp/prep_m100 --dof 9 --threads 1 --workers 2

For every scan and every ``--dof`` the scan is prepared (one process, ``--threads`` SimpleITK threads) and
the estimated template -> scan map is compared with the truth over the template brain voxels (2 mm grid):
the error of a voxel is the distance in mm between where the two maps send its centre.

Two truths are reported:

- ``pose``: the generator's ``raw_from_template`` (the scanner pose only; the subject keeps its own head
  size, as in the template-space demo scans);
- ``anatomy``: the pose composed with the subject's head scale (``participants.csv`` ``head_scale``, about
  the generator's brain centre), i.e. where the *template's* anatomy lies in the scan, which is what an
  affine registration to the template with scaling (9 or 12 DOF) is supposed to find.

Speed: per scan, wall-clock ``seconds`` and the CPU seconds of the process that prepared it (read, N4 if
asked, register, resample, write, QC; without Python start-up), reported separately for 1 mm scans and
for scans with anisotropic voxels. With one SimpleITK thread the CPU time is what one dedicated core
needs, even when the machine is shared. ``--workers N`` prepares N scans at a time in N processes; each
scan is still prepared by one process, so its CPU time keeps that meaning (the wall-clock time does not:
the workers compete for the cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BRAIN_CENTRE = np.array([0.0, -18.0, 18.0])  # mri_slice_transfer.data.anatomy.BRAIN_CENTRE


def brain_points() -> np.ndarray:
    from mri_slice_transfer.template import TEMPLATE_AFFINE, load_template

    t = load_template()
    ijk = np.argwhere(t.mask).T.astype(float)
    return TEMPLATE_AFFINE[:3, :3] @ ijk + TEMPLATE_AFFINE[:3, 3:4]


def mean_error(
    est: np.ndarray, true: np.ndarray, pts: np.ndarray, true_pts: np.ndarray | None = None
) -> float:
    q_est = est[:3, :3] @ pts + est[:3, 3:4]
    tp = pts if true_pts is None else true_pts
    q_true = true[:3, :3] @ tp + true[:3, 3:4]
    return float(np.linalg.norm(q_est - q_true, axis=0).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohort", type=Path, help="raw-space demo cohort folder (participants.csv, images/)")
    ap.add_argument("--out", type=Path, required=True, help="work folder (one sub-folder per dof)")
    ap.add_argument("--dof", type=int, nargs="+", default=[6, 9, 12])
    ap.add_argument("--n", type=int, default=None, help="only the first N scans")
    ap.add_argument("--threads", type=int, default=1, help="SimpleITK threads (default 1 = one core)")
    ap.add_argument("--workers", type=int, default=1, help="scans prepared in parallel (processes)")
    ap.add_argument("--n4", action="store_true")
    ap.add_argument("--redo", action="store_true", help="prepare again even if done")
    args = ap.parse_args(argv)

    import SimpleITK as sitk

    from mri_slice_transfer.prepare.batch import prepare_scans

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    parts = pd.read_csv(args.cohort / "participants.csv")
    if args.n:
        parts = parts.head(args.n)
    images = [args.cohort / p for p in parts["image"]]
    truths = [json.loads((args.cohort / t).read_text(encoding="utf-8")) for t in parts["transform"]]
    pts = brain_points()
    rows = []
    for dof in args.dof:
        table = prepare_scans(
            images, args.out / f"dof{dof}", workers=args.workers, threads=args.threads, dof=dof, n4=args.n4,
            skip_existing=not args.redo, progress=True,
        )  # fmt: skip
        records = table.to_dict("records")
        for img, truth, head, row in zip(images, truths, parts["head_scale"], records, strict=True):
            rec = {
                "dof": dof,
                "scan": img.name,
                "status": row["status"],
                "quality": row["quality"],
                "orientation": truth["orientation"],
                "voxel_mm": "x".join(f"{v:g}" for v in truth["voxel_size_mm"]),
                "head_scale": head,
                "metric": row["metric"],
                "correlation": row["correlation"],
                "seconds": row["seconds"],
            }
            if row["status"] in ("ok", "flagged", "skipped") and row["output"]:
                record = json.loads(
                    Path(row["output"])
                    .with_name(Path(row["output"]).name[:-7] + ".json")
                    .read_text(encoding="utf-8")
                )
                est = np.array(record["template_to_scan_ras"])
                true = np.array(truth["raw_from_template"])
                rec["seconds"] = record["seconds"]
                rec["cpu_seconds"] = record.get("cpu_seconds", float("nan"))
                rec["err_pose_mm"] = mean_error(est, true, pts)
                anat_pts = BRAIN_CENTRE[:, None] + head * (pts - BRAIN_CENTRE[:, None])
                rec["err_anatomy_mm"] = mean_error(est, true, pts, anat_pts)
            rows.append(rec)
    res = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    res.to_csv(args.out / "measure_prepare.csv", index=False, float_format="%.4f")
    print(f"\nper-scan results: {args.out / 'measure_prepare.csv'}")
    print(
        f"machine: {platform.processor() or platform.machine()}, SimpleITK threads {args.threads}, "
        f"workers {args.workers}\n"
    )
    print(
        "| dof | scans | truth | mean err (mm) | max err (mm) | <= 2 mm | > 5 mm | > 5 mm not flagged "
        "| flagged | errors | wall s/scan 1 mm (mean / max) | CPU s/scan 1 mm (mean / max) "
        "| CPU s/scan anisotropic (mean / max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dof, g in res.groupby("dof"):
        iso = g["voxel_mm"] == "1x1x1"
        one_mm, cpu, cpu_aniso = g[iso]["seconds"], g[iso]["cpu_seconds"], g[~iso]["cpu_seconds"]
        flagged = int((g["quality"] == "flagged").sum())
        errors = int((g["status"] == "error").sum())
        for truth in ("pose", "anatomy"):
            e = g[f"err_{truth}_mm"]  # NaN for a scan that failed: counted in "errors", not here
            silent = int(((e > 5) & (g["quality"] != "flagged")).sum())
            print(
                f"| {dof} | {len(g)} | {truth} | {e.mean():.2f} | {e.max():.2f} "
                f"| {int((e <= 2).sum())} / {len(g)} ({(e <= 2).mean() * 100:.0f} %) "
                f"| {int((e > 5).sum())} | {silent} | {flagged} | {errors} "
                f"| {one_mm.mean():.1f} / {one_mm.max():.1f} (n={len(one_mm)}) "
                f"| {cpu.mean():.1f} / {cpu.max():.1f} "
                f"| {cpu_aniso.mean():.1f} / {cpu_aniso.max():.1f} (n={len(cpu_aniso)}) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
