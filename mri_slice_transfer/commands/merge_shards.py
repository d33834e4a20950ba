"""``mri-slice-transfer merge-shards``: the merge step after ``inference.json --shard i/n`` (SLURM arrays)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "merge the CSVs of 'inference.json --shard i/n' runs into one predictions CSV (input order)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer merge-shards``."""
    parser.add_argument(
        "target",
        metavar="CSV",
        help="the merged file, e.g. bundles/adni_ad/eval/predictions-scans.csv; its shards "
        "predictions-scans.shard-<i>-of-<n>.csv are found beside it",
    )
    parser.add_argument(
        "--shards",
        nargs="+",
        default=None,
        metavar="SHARD",
        help="the shard CSVs in shard order (default: found beside CSV)",
    )


def run(args: argparse.Namespace) -> int:
    """Merge; exit code 2 when shards are missing or do not fit together."""
    from mri_slice_transfer.engine.shards import ShardError, find_shards, merge_shards

    try:
        shards = args.shards or [str(p) for p in find_shards(args.target)]
        out = merge_shards(args.target, shards)
    except ShardError as err:
        print(f"merge-shards: {err}")
        return 2
    print(f"merged {len(shards)} shard(s) into {out}")
    return 0
