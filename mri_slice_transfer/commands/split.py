"""``mri-slice-transfer split``: train / val / test data lists from one CSV of all scans, by subject.

The splitting itself is :func:`mri_slice_transfer.split.split_datalist`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mri_slice_transfer.split import STRATIFY_CHOICES, UNITS
from mri_slice_transfer.vocabulary import Task, names

__all__ = ["HELP", "add_arguments", "run"]

HELP = "split one CSV of all scans into train/val/test data lists by subject (stratified, leakage-checked)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer split``."""
    parser.add_argument("csv", help="CSV of all scans (data-list format: subject_id, image, dx/age, ...)")
    parser.add_argument("--out", required=True, help="output folder for train.csv, val.csv, test.csv")
    parser.add_argument(
        "--task", choices=names(Task), default=Task.ADNI_AD.value, help="task (default: %(default)s)"
    )
    parser.add_argument(
        "--fractions",
        default=None,
        help="train,val,test proportions, e.g. 70,15,15 or 0.6,0.2,0.2 or scan counts 2372,873,916 "
        "(default: the paper's split of the task: ADNI 2372/873/916, UK Biobank 7312/2194/940 scans)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--stratify",
        choices=STRATIFY_CHOICES,
        default="auto",
        help="stratify subjects by diagnosis, age bins, both or nothing; auto = dx for adni_ad, age for "
        "brain_age (default: %(default)s)",
    )
    parser.add_argument(
        "--age-bins", type=int, default=4, help="age bins (quantiles) for age stratification (default: 4)"
    )
    parser.add_argument(
        "--unit",
        choices=UNITS,
        default="scans",
        help="what the fractions count; the paper's split sizes are scans (default: %(default)s)",
    )
    parser.add_argument(
        "--dataset-dir",
        default=None,
        help="folder relative image paths start from (default: the CSV's folder)",
    )
    parser.add_argument("--no-check-files", action="store_true", help="do not check that the images exist")
    parser.add_argument("--force", action="store_true", help="replace existing data lists in --out")


def run(args: argparse.Namespace) -> int:
    """Run ``mri-slice-transfer split``; prints the report."""
    from mri_slice_transfer.errors import DataListError
    from mri_slice_transfer.split import format_split_report, split_datalist

    try:
        result = split_datalist(
            args.csv,
            args.out,
            args.task,
            fractions=args.fractions,
            seed=args.seed,
            stratify=args.stratify,
            age_bins=args.age_bins,
            unit=args.unit,
            dataset_dir=args.dataset_dir,
            check_files=not args.no_check_files,
            overwrite=args.force,
        )
    except (DataListError, FileExistsError, ValueError) as err:
        print(f"split: {err}")
        return 1
    print(format_split_report(result.report))
    out = Path(args.out)
    print(f"wrote {out / 'train.csv'}, {out / 'val.csv'}, {out / 'test.csv'} and {out / 'split_report.md'}")
    root = Path(args.dataset_dir) if args.dataset_dir else Path(args.csv).parent
    if root.resolve() != out.resolve():
        print(f"relative image paths start from {root}: train with --dataset_dir {root} --datalist_dir {out}")
    return 0
