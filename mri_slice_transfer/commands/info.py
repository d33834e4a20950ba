"""``mri-slice-transfer info``: print versions, device, and where weights and caches live."""

from __future__ import annotations

import argparse
import json

__all__ = ["HELP", "add_arguments", "run"]

HELP = "print versions, device, and where weights and caches live"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mri-slice-transfer info``."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    """Print the information; returns the exit code."""
    from mri_slice_transfer.info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
