"""The ``mri-slice-transfer`` command line: one entry point, one sub-command per job.

Sub-commands are registered in :data:`COMMANDS`: a help text and the module that implements it with
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mri_slice_transfer import __version__

__all__ = ["main", "build_parser"]


# name -> (help, module). Each module defines ``add_arguments(parser)`` and ``run(args) -> int``. They are
# imported when the parser is built, so keep their top-level imports light (heavy ones inside ``run``).
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("print versions, device, and where weights and caches live", "mri_slice_transfer.info"),
    "demo-data": (
        "generate a synthetic demo cohort (AD vs CN or brain age) with train/val/test data lists",
        "mri_slice_transfer.data.cli_demo",
    ),
    "prepare": (
        "register raw T1 scans (NIfTI/MGZ/NRRD/MHA/DICOM, any orientation) to the template grid, with QC",
        "mri_slice_transfer.prepare.cli",
    ),
    "split": (
        "split one CSV of all scans into train/val/test data lists by subject (stratified, leakage-checked)",
        "mri_slice_transfer.split",
    ),
    "grid": (
        "run an experiment grid (encoders x settings x seeds) through a bundle; resumable; paper tables",
        "mri_slice_transfer.grid.cli",
    ),
    "bench": (
        "measure training / inference / data-pipeline speed: reference-style baseline vs the fast path",
        "mri_slice_transfer.bench",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="mri-slice-transfer",
        description="2D-slice set networks for 3D brain MRI: AD detection and brain age.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, module_name) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
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
