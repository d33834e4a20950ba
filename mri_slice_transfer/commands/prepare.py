"""``mri-slice-transfer prepare``: register raw scans to the template, with QC and a manifest."""

from __future__ import annotations

import argparse

from mri_slice_transfer.commands.grid import parse_override

__all__ = ["HELP", "add_arguments", "run"]

HELP = "register raw T1 scans (NIfTI/MGZ/NRRD/MHA/DICOM, any orientation) to the template grid, with QC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer prepare``."""
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively; BIDS *_T1w files; DICOM series folders) or CSVs "
        "with an 'image' column",
    )
    parser.add_argument("--out", required=True, help="output folder (manifest.csv, qc.html, prepared scans)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=None, help="SimpleITK threads per worker (default: cores / workers)"
    )
    parser.add_argument("--n4", action="store_true", help="N4 bias-field correction before registration")
    parser.add_argument(
        "--dof",
        type=int,
        choices=(6, 9, 12),
        default=None,
        help="degrees of freedom: 6 rigid, 9 rigid + per-axis scale, 12 affine (default: 9)",
    )
    parser.add_argument(
        "--engine",
        choices=("processes", "submitit"),
        default="processes",
        help="processes: a process pool here (default); submitit: --workers jobs, local processes or a SLURM "
        "job array when sbatch is on the PATH (docs/cluster.md)",
    )
    parser.add_argument(
        "--slurm-option",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --engine submitit (repeatable): cluster=local|slurm, or submitit parameters such as "
        "slurm_partition=cpu timeout_min=600 cpus_per_task=4 mem_gb=8",
    )
    parser.add_argument("--redo", action="store_true", help="prepare again scans that are already done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Prepare the scans; exit code 0 if none failed, 1 if any has status ``error``."""
    from mri_slice_transfer.prepare.batch import prepare_scans

    if args.workers < 1:
        raise SystemExit("prepare: --workers must be at least 1")
    options = {"n4": args.n4, "dof": args.dof, "skip_existing": not args.redo, "threads": args.threads}
    if args.engine == "submitit":
        from mri_slice_transfer.prepare.jobs import prepare_scans_as_jobs

        parameters = dict(args.slurm_option)
        cluster = parameters.pop("cluster", None)
        table = prepare_scans_as_jobs(
            args.inputs, args.out, args.workers, cluster, parameters, progress=not args.no_progress, **options
        )
    elif args.slurm_option:
        raise SystemExit("prepare: --slurm-option needs --engine submitit")
    else:
        table = prepare_scans(
            args.inputs, args.out, workers=args.workers, progress=not args.no_progress, **options
        )
    counts = table["status"].value_counts()
    summary = ", ".join(f"{int(counts[s])} {s}" for s in ("ok", "flagged", "skipped", "error") if s in counts)
    print(f"prepared {len(table)} scan(s) into {args.out}: {summary or 'nothing found'}")
    print(f"manifest: {args.out}/manifest.csv   QC overview: {args.out}/qc.html")
    # errors and flagged scans by name, including flagged scans skipped now (prepared by an earlier run)
    attention = (table["status"] == "error") | (table["quality"] == "flagged")
    for row in table[attention].itertuples():
        what = "error" if row.status == "error" else "flagged"
        if row.status == "skipped":
            what += " (prepared earlier)"
        print(f"  {what}: {row.input}: {row.error or row.note}")
    if table.empty:
        print("no scans found in the inputs")
        return 1
    return 1 if (table["status"] == "error").any() else 0
