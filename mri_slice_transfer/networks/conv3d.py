"""The 3D-CNN baseline (SFCN-like, Peng et al. 2021, as adapted by the paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mri_slice_transfer.networks.encoders import ConvNormPoolBlock, kaiming_init_
from mri_slice_transfer.networks.precision import full_precision, to_full

__all__ = ["Conv3DNet"]


class Conv3DNet(nn.Module):
    """3D-CNN baseline: five Conv3d-InstanceNorm-MaxPool-ReLU blocks, 1x1x1 conv, pooling, 1x1x1 conv.

    Blocks with channels ``in_channels -> 32 -> 64 -> 128 -> 256 -> 256`` (3x3x3, pad 1, bias), then
    Conv3d(256, 64, 1) -> InstanceNorm3d -> ReLU -> global average pooling -> Conv3d(64, num_outputs, 1).
    The reference pools with a fixed (2, 3, 2) window, which is the global average on the 91 x 109 x 91
    grid; global pooling gives the same result there and also works for small test volumes. No dropout
    (none in the reference description). He (Kaiming normal, fan_out) init, zero biases.

    Args:
        num_outputs: size of the output (1 for an AD logit or an age).
        in_channels: input channels (1 for a T1 volume).
        channels: output channels of the five conv blocks.
        output_bias: initial value of the last bias (e.g. the training mean age); None keeps 0.

    Shapes:
        input ``[B, in_channels, X, Y, Z]`` -> output ``[B, num_outputs]``.
    """

    def __init__(
        self,
        num_outputs: int = 1,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        output_bias: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
        chans = [in_channels, *channels]
        self.blocks = nn.Sequential(
            *[ConvNormPoolBlock(chans[i], chans[i + 1], spatial_dims=3) for i in range(len(channels))]
        )
        self.conv_out = nn.Conv3d(chans[-1], 64, kernel_size=1)
        self.norm_out = nn.InstanceNorm3d(64, affine=False)
        self.classifier = nn.Conv3d(64, num_outputs, kernel_size=1)
        self.num_outputs = num_outputs
        kaiming_init_(self)
        if output_bias is not None:
            nn.init.constant_(self.output_layer.bias, float(output_bias))
        #: The 3D-CNN is always trained from scratch.
        self.encoder_init = "scratch"

    @property
    def output_layer(self) -> nn.Module:
        """The last layer (the 1x1x1 ``classifier`` conv): its bias is the output bias."""
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self._pooled(x)
        with full_precision(pooled):
            return self.classifier(pooled).flatten(1)

    def pooled_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features the classifier reads: ``[B, C, X, Y, Z]`` -> ``[B, 64]``."""
        return self._pooled(x).flatten(1)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected input [B, C, X, Y, Z], got {tuple(x.shape)}")
        x = F.relu(self.norm_out(self.conv_out(self.blocks(x))))
        with full_precision(x):
            return to_full(x).mean(dim=(-3, -2, -1), keepdim=True)
