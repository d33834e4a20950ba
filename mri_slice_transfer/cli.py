"""The ``mri-slice-transfer`` command line: one entry point, one sub-command per job.

Sub-commands are registered in :data:`COMMANDS`: each is a module of :mod:`mri_slice_transfer.commands`
with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from mri_slice_transfer import __version__
from mri_slice_transfer.commands import (
    bench,
    datalist,
    demo_data,
    grid,
    info,
    interpret,
    merge_shards,
    prepare,
    split,
)

__all__ = ["main", "build_parser", "COMMANDS"]

#: Sub-command name -> its module, in ``--help`` order.
COMMANDS: dict[str, ModuleType] = {
    "info": info,
    "demo-data": demo_data,
    "prepare": prepare,
    "datalist": datalist,
    "split": split,
    "grid": grid,
    "bench": bench,
    "interpret": interpret,
    "merge-shards": merge_shards,
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered sub-command.

    Returns:
        the parser; a parsed sub-command carries its ``run`` function as ``args._run``.
    """
    parser = argparse.ArgumentParser(
        prog="mri-slice-transfer",
        description="2D-slice set networks for 3D brain MRI: AD detection and brain age.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        the process exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
