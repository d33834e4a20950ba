"""Where the project keeps files it derives at run time (template, demo cohorts, weights).

Everything lives under one cache directory so a cluster user can point it at scratch space:

- ``$MRI_SLICE_TRANSFER_CACHE`` if set,
- else ``$XDG_CACHE_HOME/mri_slice_transfer``,
- else ``~/.cache/mri_slice_transfer``.

Pretrained ImageNet weights are *not* kept here: torchvision keeps them in
``$TORCH_HOME/hub/checkpoints`` (see :func:`torch_weights_dir`), and we follow it so that weights a
user already has are found.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.hub

__all__ = ["CACHE_ENV_VAR", "cache_dir", "torch_weights_dir"]

CACHE_ENV_VAR = "MRI_SLICE_TRANSFER_CACHE"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Return the project's cache directory (or a sub-directory of it).

    Args:
        parts: optional sub-directory names, e.g. ``cache_dir("template")``.
        create: make the directory if it does not exist.
    """
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mri_slice_transfer"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def torch_weights_dir() -> Path:
    """Directory where torchvision looks for (and downloads) pretrained weights.

    This is ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default).
    """
    return Path(torch.hub.get_dir()) / "checkpoints"
