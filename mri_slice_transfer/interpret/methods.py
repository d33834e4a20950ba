"""Names of the interpretation methods (standard library only: the command line's choices use them)."""

from __future__ import annotations

__all__ = ["METHODS", "DEFAULT_METHODS"]

#: ``slices``: leave-one-slice-out importance (slice-set networks); ``gradcam``: Grad-CAM on the
#: template grid; ``occlusion``: occlusion sensitivity on the template grid.
METHODS: tuple[str, ...] = ("slices", "gradcam", "occlusion")
#: Methods run when none are named (occlusion needs many forward passes per scan).
DEFAULT_METHODS: tuple[str, ...] = ("slices", "gradcam")
