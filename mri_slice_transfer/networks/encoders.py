"""2D slice encoders: the 5-layer CNN ("cnn5"), torchvision ResNet-18/34/50, any other torchvision
classification model and (optional extra) any timm model; names in :mod:`~.registry`.

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

from mri_slice_transfer.networks.registry import TIMM, TIMM_PREFIX, TORCHVISION, encoder_family, require_timm
from mri_slice_transfer.vocabulary import PRETRAINABLE_ENCODERS, SLICE_ENCODERS

__all__ = [
    "ENCODERS",
    "RESNET_ENCODERS",
    "IN_CHANNELS_MODES",
    "min_pool_max",
    "CNN5Encoder",
    "ResNetEncoder",
    "TorchvisionEncoder",
    "TimmEncoder",
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
        c = self.conv(x)
        y = self.norm(c)
        if _channels_last(c) and not _channels_last(y):
            # InstanceNorm returns NCHW whatever its input: back to channels-last before pooling, or
            # max pooling (3-4x slower on NCHW here) and the next conv's layout conversion dominate
            # the step (cnn5 bf16 training step, docs/benchmarks.md "Profile")
            y = y.contiguous(memory_format=torch.channels_last)
        return F.relu(min_pool_max(y, self.spatial_dims))


def _channels_last(x: torch.Tensor) -> bool:
    """A 4D tensor stored channels-last (and not also plain contiguous, as 1-channel tensors are)."""
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


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


def _first_conv_key(model: nn.Module) -> str | None:
    """State-dict key of the weight of the first 3-channel ``Conv2d`` of ``model`` (None: there is none)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            return f"{name}.weight"
    return None


def _fold_first_conv(model: nn.Module) -> None:
    """Fold the first 3-channel ``Conv2d`` of ``model`` to 1 channel in place (no-op if there is none)."""
    key = _first_conv_key(model)
    if key is None:
        return
    module = model.get_submodule(key.removesuffix(".weight"))
    # in place, no new Conv2d: a seeded "fold" model then equals the seeded "repeat" one
    module.weight = nn.Parameter(fold_conv1_weight(module.weight.detach()))
    module.in_channels = 1


def _remove_head(model: nn.Module) -> tuple[str, nn.Module]:
    """Replace the classification layer (the last ``nn.Linear``; squeezenet: the last ``Conv2d``) of a
    torchvision model by ``nn.Identity``; returns its module name and the removed layer."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:  # squeezenet: a 1x1 conv to the classes, then ReLU and global average pooling
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    name = layers[-1][0]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return name, layers[-1][1]


class TorchvisionEncoder(nn.Module):
    """Any torchvision classification model without its classification layer: slices -> pooled features.

    The model is built by ``torchvision.models.get_model(arch, weights=None)``; its last ``nn.Linear``
    (the classifier: ``fc``, ``classifier[-1]``, ``head``, ``heads.head``) becomes ``nn.Identity`` and
    ``out_features`` is that layer's ``in_features`` (derived, not tabled; squeezenet, which has no
    Linear, by a forward pass). A 1-channel slice enters as with the ResNets: ``"fold"`` sums the first
    conv's RGB kernel (every torchvision classifier has one), ``"repeat"`` feeds 3 identical channels.
    Models that need a fixed input size (the ViTs: ``image_size``) get the slice resized to it
    (bilinear); all others take the slice as it is (at least 32 x 32 pixels for most of them).

    Args:
        arch: a torchvision classification model name (``torchvision.models.list_models()``).
        in_channels_mode: ``"fold"`` or ``"repeat"``.

    Attributes:
        stem_key: state-dict key of the first conv's weight (folded in ``"fold"`` mode).
        head_keys: prefixes of ImageNet-file keys the encoder does not have (the removed classifier,
            googlenet / inception auxiliary heads); dropped when weights are loaded.

    Shapes:
        input ``[N, 1, H, W]`` -> output ``[N, out_features]``.
    """

    def __init__(self, arch: str, in_channels_mode: str = "fold") -> None:
        super().__init__()
        if in_channels_mode not in IN_CHANNELS_MODES:
            raise ValueError(
                f"in_channels_mode must be one of {', '.join(IN_CHANNELS_MODES)}, not {in_channels_mode!r}"
            )
        self.arch = arch
        self.in_channels_mode = in_channels_mode
        aux = arch in _AUX_HEADS
        backbone = torchvision.models.get_model(arch, weights=None, **({"aux_logits": False} if aux else {}))
        head, removed = _remove_head(backbone)
        self.head_keys: tuple[str, ...] = (f"{head}.", *_AUX_HEADS.get(arch, ()))
        self.image_size: int | None = getattr(backbone, "image_size", None)
        #: key of the first conv's weight: folded in "fold" mode, found by the same rule in "repeat"
        self.stem_key = _first_conv_key(backbone)
        if in_channels_mode == "fold" and self.stem_key is not None:
            _fold_first_conv(backbone)
        elif self.stem_key is None:  # no RGB conv to fold: repeat the slice to 3 channels
            self.in_channels_mode = "repeat"
        self.backbone = backbone
        if isinstance(removed, nn.Linear):
            self.out_features = removed.in_features
        else:  # a conv classifier (squeezenet): measure the pooled width on a dummy slice
            with torch.no_grad():
                self.out_features = int(self.eval()(torch.zeros(1, 1, 64, 64)).shape[-1])
            self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        if self.in_channels_mode == "repeat":
            x = x.expand(-1, 3, -1, -1)
        out = self.backbone(x)
        return out[0] if isinstance(out, tuple) else out


#: Auxiliary classifiers that ImageNet files of these models contain (built here without them).
_AUX_HEADS: dict[str, tuple[str, ...]] = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


class TimmEncoder(nn.Module):
    """A timm model (``timm:<model>``) without its classifier (``num_classes=0``): slices -> pooled features.

    Built with ``timm.create_model(model, pretrained=False, num_classes=0, in_chans=1 or 3)``:
    ``"fold"`` gives a 1-channel stem (timm sums the RGB kernel when it loads weights, the same fold),
    ``"repeat"`` feeds 3 identical channels. ``out_features`` is timm's ``num_features``. Models with a
    fixed input size (``pretrained_cfg["input_size"]``, e.g. DINOv2 ViT-S/14 at 518 unless
    ``dynamic_img_size``) get the slice resized to it. Needs the optional extra ``timm``.

    Args:
        arch: ``"timm:<model>"`` or the bare timm model name.
        in_channels_mode: ``"fold"`` or ``"repeat"``.

    Shapes:
        input ``[N, 1, H, W]`` -> output ``[N, out_features]``.
    """

    def __init__(self, arch: str, in_channels_mode: str = "fold") -> None:
        super().__init__()
        timm = require_timm()
        self.arch = arch if arch.startswith(TIMM_PREFIX) else TIMM_PREFIX + arch
        self.in_channels_mode = in_channels_mode
        chans = 1 if in_channels_mode == "fold" else 3
        model = timm.create_model(
            self.arch[len(TIMM_PREFIX) :], pretrained=False, num_classes=0, in_chans=chans
        )
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        self.stem_key = f"{cfg.get('first_conv', 'conv1')}.weight"
        self.head_keys: tuple[str, ...] = tuple(f"{c}." for c in _as_tuple(cfg.get("classifier")))
        size = tuple(cfg.get("input_size", ()))[-2:]
        fixed = not getattr(model, "dynamic_img_size", True) and hasattr(model, "patch_embed")
        self.image_size: tuple[int, int] | None = (int(size[0]), int(size[1])) if fixed and size else None
        self.backbone = model
        self.out_features = int(model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if self.in_channels_mode == "repeat":
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)


def _as_tuple(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (str(value),)


def build_encoder(name: str, in_channels_mode: str = "fold") -> nn.Module:
    """Build the 2D slice encoder ``name``; it has ``out_features``.

    Args:
        name: ``"cnn5"``, a ResNet of :data:`RESNET_ENCODERS`, any other torchvision classification model
            or ``"timm:<model>"`` (:mod:`~.registry`).
        in_channels_mode: ``"fold"`` or ``"repeat"`` (ignored by cnn5).

    Returns:
        the encoder module.
    """
    if name == "cnn5":
        return CNN5Encoder()
    if name in RESNET_ENCODERS:
        return ResNetEncoder(name, in_channels_mode=in_channels_mode)
    family = encoder_family(name)  # raises "unknown encoder ... did you mean" for other names
    if family == TORCHVISION:
        return TorchvisionEncoder(str(name).lower(), in_channels_mode=in_channels_mode)
    if family == TIMM:
        return TimmEncoder(str(name), in_channels_mode=in_channels_mode)
    raise ValueError(f"encoder must be a 2D slice encoder, not {name!r} (the 3D-CNN has no slices)")


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
