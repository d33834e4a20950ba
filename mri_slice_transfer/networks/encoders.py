"""2D slice encoders: the 5-layer CNN ("cnn5") and torchvision ResNet-18/34/50.

Every encoder maps a batch of single-channel slices ``[N, 1, H, W]`` to one feature vector per slice
``[N, out_features]`` (after global average pooling). The projection to the slice embedding size
(32), the positional encoding and the aggregation live in :class:`~.slice_set.SliceSetNet`, because
where the positional encoding is added differs between the encoders (before the last 1x1 layer for
cnn5, after the projection for the ResNets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from mri_slice_transfer.vocabulary import PRETRAINABLE_ENCODERS, SLICE_ENCODERS

__all__ = [
    "ENCODERS",
    "RESNET_ENCODERS",
    "IN_CHANNELS_MODES",
    "min_pool_max",
    "CNN5Encoder",
    "ResNetEncoder",
    "build_encoder",
    "fold_conv1_weight",
    "repeat_conv1_weight",
    "convert_in_channels_mode",
]

#: Names accepted for the 2D slice encoder.
ENCODERS: tuple[str, ...] = tuple(e.value for e in SLICE_ENCODERS)
#: The torchvision ResNets and the width of their pooled output.
RESNET_ENCODERS: dict[str, int] = dict(
    zip((e.value for e in PRETRAINABLE_ENCODERS), (512, 512, 2048), strict=True)
)
#: How a 1-channel slice enters a ResNet built for 3-channel (RGB) images.
IN_CHANNELS_MODES: tuple[str, ...] = ("fold", "repeat")


def min_pool_max(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Max pooling by 2 that never shrinks a side below 2 voxels.

    On the MNI 2 mm grid (91 x 109 x 91) every side is still >= 4 before the last pooling, so this is
    exactly ``MaxPool(2)`` there. On small test volumes it keeps at least 2 elements per side, so the
    following InstanceNorm (which needs more than one spatial element) stays well defined instead of
    failing or normalising a single value to 0.

    Args:
        x: ``[N, C, *spatial]`` with ``spatial_dims`` (2 or 3) spatial dimensions.
        spatial_dims: 2 for slices, 3 for volumes.
    """
    kernel = tuple(2 if s >= 4 else 1 for s in x.shape[-spatial_dims:])
    if all(k == 1 for k in kernel):
        return x
    pool = F.max_pool2d if spatial_dims == 2 else F.max_pool3d
    # Max pooling only selects values, so it is exact in the input's precision. CPU autocast would
    # cast a bf16 input of max_pool3d to fp32 first: a copy of the largest activation of the 3D-CNN.
    with torch.autocast(x.device.type, enabled=False):
        return pool(x, kernel_size=kernel, stride=kernel)


class ConvNormPoolBlock(nn.Module):
    """Conv (3x3[x3], pad 1, bias) -> InstanceNorm (no affine) -> MaxPool(2) -> ReLU.

    The order (pool before ReLU) follows the SFCN-style blocks of the reference; both commute for
    max pooling, so it only saves work.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        spatial_dims: 2 (slice encoder) or 3 (3D-CNN baseline).
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        self.spatial_dims = spatial_dims
        self.conv = conv(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.norm = norm(out_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.relu(min_pool_max(x, self.spatial_dims))


def kaiming_init_(module: nn.Module) -> None:
    """He init (normal, fan_out, relu) on every conv/linear weight and zero biases (reference init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class CNN5Encoder(nn.Module):
    """The 5-layer 2D CNN slice encoder (adapted from the SFCN 3D baseline of Peng et al. 2021).

    Five :class:`ConvNormPoolBlock` with channels 1 -> 32 -> 64 -> 128 -> 256 -> 256, then
    Conv2d(256, 64, 1) -> InstanceNorm2d -> ReLU -> global average pooling. The reference pools with a
    fixed window equal to what is left of a 91 x 109 x 91 slice (3x2 / 2x2 / 2x3), which is the global
    average there; global pooling also works for other slice sizes.

    Args:
        channels: output channels of the five conv blocks.
        out_features: channels of the final 1x1 conv (the pooled feature size, 64).

    Shapes:
        input ``[N, 1, H, W]`` -> output ``[N, out_features]``.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256, 256), out_features: int = 64) -> None:
        super().__init__()
        chans = [1, *channels]
        self.blocks = nn.Sequential(
            *[ConvNormPoolBlock(chans[i], chans[i + 1], spatial_dims=2) for i in range(len(channels))]
        )
        self.conv_out = nn.Conv2d(chans[-1], out_features, kernel_size=1)
        self.norm_out = nn.InstanceNorm2d(out_features, affine=False)
        self.out_features = out_features
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm_out(self.conv_out(self.blocks(x))))
        return x.mean(dim=(-2, -1))


def fold_conv1_weight(weight: torch.Tensor) -> torch.Tensor:
    """Fold a conv weight ``[O, 3, kh, kw]`` to ``[O, 1, kh, kw]`` by summing the input channels.

    Convolving a slice repeated to 3 identical channels equals convolving the slice once with the
    channel-summed kernel, so a folded conv1 is the same function at a third of the cost.
    """
    return weight.sum(dim=1, keepdim=True)


def repeat_conv1_weight(weight: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`fold_conv1_weight`: ``[O, 1, kh, kw]`` -> ``[O, channels, kh, kw]`` (w / channels).

    Exact for inputs with identical channels (which is how 1-channel slices are fed in "repeat" mode).
    """
    return weight.repeat(1, channels, 1, 1) / channels


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its ``fc`` layer: slices -> pooled features (512 or 2048).

    Args:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        in_channels_mode: ``"repeat"`` feeds the slice as 3 identical channels to the standard RGB
            ``conv1`` (the paper's reference); ``"fold"`` uses a 1-channel ``conv1`` whose weight is
            the channel sum of the RGB one (same function, cheaper). Both start from the same
            torchvision initialisation, so for a given seed the two modes build the same function.

    Shapes:
        input ``[N, 1, H, W]`` -> output ``[N, out_features]``.
    """

    def __init__(self, arch: str = "resnet18", in_channels_mode: str = "fold") -> None:
        super().__init__()
        if arch not in RESNET_ENCODERS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {', '.join(RESNET_ENCODERS)}")
        if in_channels_mode not in IN_CHANNELS_MODES:
            raise ValueError(
                f"unknown in_channels_mode {in_channels_mode!r}; choose one of {', '.join(IN_CHANNELS_MODES)}"
            )
        self.arch = arch
        self.in_channels_mode = in_channels_mode
        self.out_features = RESNET_ENCODERS[arch]
        backbone = getattr(torchvision.models, arch)(weights=None)
        backbone.fc = nn.Identity()  # keep the global average pool output as the slice feature
        if in_channels_mode == "fold":
            # Fold the initialised RGB kernel in place (no new Conv2d: that would draw fresh random
            # numbers, and a seeded "fold" model would no longer equal the seeded "repeat" model).
            conv1 = backbone.conv1
            conv1.weight = nn.Parameter(fold_conv1_weight(conv1.weight.detach()))
            conv1.in_channels = 1
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels_mode == "repeat":
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)


def build_encoder(name: str, in_channels_mode: str = "fold") -> nn.Module:
    """Build the 2D slice encoder ``name`` (one of :data:`ENCODERS`); it has ``out_features``."""
    if name == "cnn5":
        return CNN5Encoder()
    if name in RESNET_ENCODERS:
        return ResNetEncoder(name, in_channels_mode=in_channels_mode)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


def convert_in_channels_mode(state_dict: dict[str, torch.Tensor], to: str) -> dict[str, torch.Tensor]:
    """Convert a model/encoder state dict between ``in_channels_mode`` "repeat" and "fold".

    Every ``*conv1.weight`` of a ResNet stem (``...backbone.conv1.weight`` or a bare ``conv1.weight``)
    with 3 (-> "fold") or 1 (-> "repeat") input channels is summed or repeated / 3; everything else is
    copied unchanged. The result loads into a model built with ``in_channels_mode=to`` and computes the
    same outputs.

    Args:
        state_dict: e.g. ``model.state_dict()``.
        to: ``"fold"`` or ``"repeat"``.
    """
    if to not in IN_CHANNELS_MODES:
        raise ValueError(f"unknown in_channels_mode {to!r}; choose one of {', '.join(IN_CHANNELS_MODES)}")
    out = dict(state_dict)
    for key, value in state_dict.items():
        stem = key == "conv1.weight" or key.endswith("backbone.conv1.weight")
        if not stem or value.ndim != 4:
            continue
        if to == "fold" and value.shape[1] == 3:
            out[key] = fold_conv1_weight(value)
        elif to == "repeat" and value.shape[1] == 1:
            out[key] = repeat_conv1_weight(value)
    return out
