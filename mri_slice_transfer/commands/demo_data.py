"""``mri-slice-transfer demo-data``: write a synthetic demo cohort and its data lists."""

from __future__ import annotations

import argparse
import time

from mri_slice_transfer.vocabulary import Task, names, task_spec

__all__ = ["HELP", "add_arguments", "run"]

HELP = "generate a synthetic demo cohort (AD vs CN or brain age) with train/val/test data lists"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer demo-data``."""
    parser.add_argument(
        "--task",
        choices=names(Task),
        default=Task.ADNI_AD.value,
        help="which task (default: %(default)s)",
    )
    parser.add_argument(
        "--space",
        choices=("template", "raw"),
        default="template",
        help="template: 91x109x91 MNI152 2 mm grid; raw: scanner-like 1-1.2 mm grids with random pose "
        "and the true transform beside each scan (default: %(default)s)",
    )
    parser.add_argument("--n", type=int, default=100, help="number of scans (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--out", required=True, help="output folder (re-running with the same settings resumes)"
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the cohort and print where it went and its site balance; returns the exit code."""
    import pandas as pd

    from mri_slice_transfer.data.synthetic import generate_cohort, site_summary

    if args.n < 1:
        raise SystemExit("demo-data: --n must be at least 1")
    start = time.perf_counter()
    out = generate_cohort(
        task=args.task,
        space=args.space,
        n=args.n,
        seed=args.seed,
        out=args.out,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(
        f"wrote {args.n} {args.space}-space scans for {args.task} to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    print(
        f"data lists: {out / 'train.csv'}, {out / 'val.csv'}, {out / 'test.csv'} "
        "(ground truth: participants.csv)"
    )
    label = "diagnosis (sites are balanced by diagnosis)" if task_spec(args.task).is_binary else "age"
    print(f"site x {label}:")
    print(site_summary(pd.read_csv(out / "participants.csv"), args.task).to_string())
    return 0
