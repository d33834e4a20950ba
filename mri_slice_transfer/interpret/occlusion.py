"""Occlusion sensitivity on the template grid, with MONAI's :class:`monai.visualize.OcclusionSensitivity`.

A patch of ``mask_size`` voxels (on the model's input grid) slides over the scan and is replaced by a
Gaussian-weighted blend towards 0 (MONAI's ``"gaussian"`` mode; 0 is the brain mean after
z-scoring and the background value); the map is ``f(x) - f(x occluded)`` averaged over the patches
covering each voxel: positive where the scan's content raises the output (towards AD / an older age).
Works for every network (it only calls ``forward``); costs about ``(size / (mask_size (1 - overlap)))^3``
forward passes per scan, so it is opt-in in ``mri-slice-transfer interpret``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from mri_slice_transfer.interpret.geometry import to_template_grid

__all__ = ["OcclusionMap"]


class OcclusionMap:
    """Occlusion sensitivity maps of one network, on the template grid.

    Args:
        net: the trained network.
        mask_size: occluding patch size in voxels of the network's input grid (int or per axis).
        overlap: overlap of neighbouring patches, in [0, 1).
        n_batch: occluded copies per forward pass.
        output_index: which output to explain.
    """

    def __init__(
        self,
        net: nn.Module,
        mask_size: int | Sequence[int] = 8,
        overlap: float = 0.5,
        n_batch: int = 8,
        output_index: int = 0,
    ) -> None:
        from monai.visualize import OcclusionSensitivity

        self.net = net
        self.output_index = int(output_index)
        self.occ = OcclusionSensitivity(
            nn_module=net,
            mask_size=mask_size,
            n_batch=n_batch,
            overlap=overlap,
            activate=False,
            verbose=False,
        )

    @torch.no_grad()
    def model_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x) - f(x occluded)`` of one scan ``[1, 1, X, Y, Z]`` on the network's input grid."""
        if x.ndim != 5 or x.shape[0] != 1:
            raise ValueError(f"expected one scan [1, 1, X, Y, Z], not shape {tuple(x.shape)}")
        self.net.eval()
        full = self.net(x)[0, self.output_index]
        with warnings.catch_warnings():  # MONAI 1.6 indexes with lists (a torch deprecation warning)
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            occluded, _ = self.occ(x)
        return full - occluded[0, self.output_index]

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Occlusion sensitivity of one scan on the template grid (output units, signed)."""
        return to_template_grid(self.model_grid(x))
