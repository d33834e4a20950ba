"""Find the bundle folder from the config file the running MONAI parser was given.

MONAI's ``ConfigParser`` has no ``__file__``: a config cannot see where it lives. ``bundle_root()``
looks, in order, at

1. the ``ConfigWorkflow`` being run (``monai.bundle run`` and ``ConfigWorkflow(...)`` in Python),
   whose ``config_root_path`` is the folder of the first config file;
2. the ``config_file_`` local of ``monai.bundle`` scripts (``verify_net_in_out``, ``ckpt_export``);
3. ``--config_file`` on the command line;

and returns the parent of that folder when it is called ``configs`` (the model-zoo layout), else the
folder itself. It falls back to the current directory. ``--bundle_root /path`` still overrides.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from monai.bundle import ConfigWorkflow

__all__ = ["bundle_root", "root_from_config_file"]


def root_from_config_file(config_file: str | os.PathLike | Sequence[str]) -> Path:
    """Bundle folder for a config file path (or the first of a list, or a string holding a list)."""
    if isinstance(config_file, str) and config_file.strip().startswith("["):
        config_file = ast.literal_eval(config_file.strip())
    if isinstance(config_file, (list, tuple)):
        config_file = config_file[0]
    folder = Path(config_file).expanduser().resolve().parent
    return folder.parent if folder.name == "configs" else folder


def _from_stack(frame: FrameType | None) -> Path | None:
    while frame is not None:
        local = frame.f_locals
        owner = local.get("self")
        if isinstance(owner, ConfigWorkflow) and getattr(owner, "config_root_path", None) is not None:
            folder = Path(owner.config_root_path).expanduser().resolve()
            return folder.parent if folder.name == "configs" else folder
        if frame.f_globals.get("__name__") == "monai.bundle.scripts" and local.get("config_file_"):
            return root_from_config_file(local["config_file_"])
        frame = frame.f_back
    return None


def _from_argv(argv: Sequence[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            return root_from_config_file(argv[i + 1])
        if arg.startswith("--config_file="):
            return root_from_config_file(arg.split("=", 1)[1])
    return None


def bundle_root() -> str:
    """The running bundle's root folder as an absolute path string (see the module docstring)."""
    found = _from_stack(sys._getframe(1)) or _from_argv(sys.argv)
    return str(found if found is not None else Path.cwd())
