"""``mri-slice-transfer datalist``: one CSV of all scans (the input of ``split``) from a real folder.

The work is :mod:`mri_slice_transfer.data.sources`.
"""

from __future__ import annotations

import argparse

from mri_slice_transfer.vocabulary import Task, names

__all__ = ["HELP", "add_arguments", "run"]

HELP = "one CSV of all scans for split, from a BIDS dataset, prepare's manifest or a folder, + clinical table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer datalist``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--bids",
        metavar="DIR",
        help="BIDS dataset: sub-*/[ses-*/]anat/*_T1w.nii[.gz], participants.tsv, sessions",
    )
    source.add_argument("--manifest", metavar="CSV", help="prepare's manifest.csv (the prepared scans)")
    source.add_argument("--folder", metavar="DIR", help="any folder; needs --pattern")
    parser.add_argument(
        "--pattern",
        help="with --folder: path template of the scans, e.g. "
        "'{subject}_20252_{session}/T1/T1_brain_to_MNI.nii.gz' ({subject} required, {session}, "
        "* within a name, **/ any folders)",
    )
    parser.add_argument("--out", required=True, help="the data-list CSV to write (input of split)")
    parser.add_argument(
        "--task", choices=names(Task), default=Task.ADNI_AD.value, help="task (default: %(default)s)"
    )
    parser.add_argument("--clinical", metavar="TABLE", help="clinical CSV/TSV to join (e.g. ADNIMERGE.csv)")
    parser.add_argument(
        "--subject-column",
        help="subject id column of --clinical (default: participant_id, subject_id, PTID, eid)",
    )
    parser.add_argument(
        "--session-column", help="session column of --clinical, to join per session (e.g. VISCODE)"
    )
    parser.add_argument(
        "--max-days",
        type=int,
        help="--session-column holds dates (e.g. ADNIMERGE EXAMDATE): join each scan (session = its date, "
        "e.g. ses-20060418) to its subject's row with the nearest date at most this many days away",
    )
    parser.add_argument(
        "--label-column", help="column with the label (default: dx for adni_ad, age for brain_age)"
    )
    parser.add_argument("--map", dest="mapping", help="label values to classes, e.g. Dementia=AD,CN=CN")
    parser.add_argument(
        "--age-column", help="age column (the label for brain_age; copied as age for adni_ad)"
    )
    parser.add_argument("--sex-column", default="sex", help="sex column, M/F or Male/Female (default: sex)")
    parser.add_argument("--dropped", metavar="CSV", help="CSV of dropped scans (default: <out>_dropped.csv)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    """Run ``mri-slice-transfer datalist``; prints the summary of kept and dropped scans."""
    from mri_slice_transfer.data import sources
    from mri_slice_transfer.errors import DataListError

    try:
        if args.folder and not args.pattern:
            raise ValueError("--folder needs --pattern (e.g. '{subject}/{session}/*_T1w_mni.nii.gz')")
        dropped = None
        if args.bids:
            scans = sources.scans_from_bids(args.bids)
        elif args.manifest:
            scans, dropped = sources.scans_from_manifest(args.manifest)
        else:
            scans = sources.scans_from_pattern(args.folder, args.pattern)
        clinical = None
        if args.clinical:
            clinical = sources.clinical_table(
                args.clinical, args.subject_column, args.session_column, args.max_days
            )
        result = sources.build_datalist(
            scans,
            args.out,
            args.task,
            clinical=clinical,
            label_column=args.label_column,
            mapping=sources.parse_mapping(args.mapping),
            age_column=args.age_column,
            sex_column=args.sex_column,
            dropped=dropped,
            dropped_csv=args.dropped,
            overwrite=args.force,
        )
    except (DataListError, FileExistsError, ValueError) as err:
        print(f"datalist: {err}")
        return 1
    print(sources.format_datalist_summary(result))
    print(
        f"next: mri-slice-transfer split {args.out} --task {args.task} --out <folder for train/val/test.csv>"
    )
    return 0
