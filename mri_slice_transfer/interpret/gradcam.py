"""Grad-CAM (Selvaraju et al. 2017) on the template grid, with MONAI's :class:`monai.visualize.GradCAM`.

- **3D-CNN**: MONAI's Grad-CAM on the last conv block (``blocks.<last>``), upsampled to the input grid.
- **Slice-set networks**: the target layer is the 2D encoder's last conv maps (ResNet ``layer4``, cnn5's
  last conv block), which see ``B * K`` slices. MONAI's ``compute_map`` gives one Grad-CAM map per
  slice (channel weights = the gradient of the scan's output averaged over that slice's map); each is
  resized to its slice and the slices are stacked back along the model's axis. Maps are not normalised
  per slice, so a slice that matters little stays faint.

Each scan's map is resampled to the template grid (:func:`~.geometry.to_template_grid`, undoing a model's
``input_scale``), set to 0 outside the template brain mask (the scans are skull-stripped: what lies
outside is the upsampling's spill of coarse maps, not evidence) and divided by its maximum (values in
[0, 1]; all zero if no positive evidence raises the output).

The last conv maps of a ResNet are coarse (stride 32: 2 x 2 per axial slice at the demo's input scale
0.5, 3 x 4 at full scale), so within a slice a ResNet's map is nearly flat and the volume mostly shows
which slices matter; ``layer="encoder.backbone.layer3"`` (stride 16) gives finer maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from mri_slice_transfer.interpret.geometry import stack_slice_maps, to_template_grid
from mri_slice_transfer.networks.conv3d import Conv3DNet
from mri_slice_transfer.networks.encoders import CNN5Encoder, ResNetEncoder, TorchvisionEncoder
from mri_slice_transfer.networks.planes import MultiPlaneNet
from mri_slice_transfer.networks.slice_set import SliceSetNet
from mri_slice_transfer.template import load_template

__all__ = ["target_layer", "gradcam_unsupported", "GradCAMMap"]

#: Torchvision backbone children whose output is the last conv feature map [N, C, H, W], in the order
#: they are looked for (most CNN families: ``features``; RegNet: ``trunk_output``; ResNet-like: ``layer4``).
_CNN_FEATURE_MODULES = ("features", "trunk_output", "layer4")
#: Torchvision families whose feature maps are tokens or channels-last (no default Grad-CAM layer).
_TOKEN_MODELS = ("vit_", "swin_", "maxvit_")


def target_layer(net: nn.Module) -> str:
    """Name of the layer whose maps Grad-CAM uses: the last conv block of the (slice) encoder.

    Args:
        net: a :class:`~mri_slice_transfer.networks.SliceSetNet` or
            :class:`~mri_slice_transfer.networks.Conv3DNet`.

    Returns:
        a module name of ``net`` (``dict(net.named_modules())`` has it).
    """
    if isinstance(net, Conv3DNet):
        return f"blocks.{len(net.blocks) - 1}"
    if isinstance(net, SliceSetNet) and isinstance(net.encoder, ResNetEncoder):
        return "encoder.backbone.layer4"
    if isinstance(net, SliceSetNet) and isinstance(net.encoder, CNN5Encoder):
        return f"encoder.blocks.{len(net.encoder.blocks) - 1}"
    if isinstance(net, SliceSetNet) and isinstance(net.encoder, TorchvisionEncoder):
        children = dict(net.encoder.backbone.named_children())
        found = [name for name in _CNN_FEATURE_MODULES if name in children]
        if found and not net.encoder.arch.startswith(_TOKEN_MODELS):
            return f"encoder.backbone.{found[0]}"
    if isinstance(net, MultiPlaneNet):
        raise TypeError(
            f"Grad-CAM is not supported for a several-plane model (MultiPlaneNet, axis {net.axis}): its "
            "encoder sees the slices of every plane; use slice importance or occlusion"
        )
    encoder = getattr(net, "encoder", None)
    raise TypeError(
        f"no Grad-CAM target layer known for {type(net).__name__} with {type(encoder).__name__}; name a "
        "conv layer with --gradcam-layer, or use slice importance or occlusion"
    )


def gradcam_unsupported(net: nn.Module) -> str | None:
    """Why Grad-CAM has no default target layer in ``net`` (None: it has one, :func:`target_layer`)."""
    try:
        target_layer(net)
    except TypeError as err:
        return str(err)
    return None


def _normalise(volume: np.ndarray) -> np.ndarray:
    peak = float(volume.max()) if volume.size else 0.0
    return volume / peak if peak > 0 else np.zeros_like(volume)


class GradCAMMap:
    """Grad-CAM maps of one network, on the template grid.

    Build one per network (MONAI registers its hooks on the network when it is built).

    Args:
        net: the trained network (eval mode is set by MONAI on each call).
        output_index: which output to explain (0: the AD logit or the age).
        layer: name of the conv layer (a module name of ``net``); None: :func:`target_layer`.
    """

    def __init__(self, net: nn.Module, output_index: int = 0, layer: str | None = None) -> None:
        from monai.visualize import GradCAM

        if isinstance(net, MultiPlaneNet):
            target_layer(net)  # raises: the encoder of several planes has no single slice stack
        self.net = net
        self.output_index = int(output_index)
        self.layer = layer or target_layer(net)
        if self.layer not in dict(net.named_modules()):
            raise ValueError(f"Grad-CAM layer must be a module of {type(net).__name__}, not {self.layer!r}")
        self.cam = GradCAM(nn_module=net, target_layers=self.layer, postprocessing=lambda m: m)

    def model_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of one scan ``[1, 1, X, Y, Z]`` on the network's input grid ``[X, Y, Z]`` (unscaled)."""
        if x.ndim != 5 or x.shape[0] != 1:
            raise ValueError(f"expected one scan [1, 1, X, Y, Z], not shape {tuple(x.shape)}")
        with torch.enable_grad():
            if isinstance(self.net, SliceSetNet):
                maps = self.cam.compute_map(x, class_idx=self.output_index)  # [K, 1, h, w]
                return stack_slice_maps(maps[:, 0].detach(), self.net.axis, x.shape[2:])
            return self.cam(x, class_idx=self.output_index)[0, 0].detach()

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Grad-CAM of one scan on the template grid (91 x 109 x 91), in the brain, scaled to [0, 1]."""
        return _normalise(to_template_grid(self.model_grid(x)) * load_template().mask)
