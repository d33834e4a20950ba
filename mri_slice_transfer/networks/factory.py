"""Build any model of the package from plain (JSON-friendly) arguments."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from mri_slice_transfer.networks.conv3d import Conv3DNet
from mri_slice_transfer.networks.planes import MultiPlaneNet
from mri_slice_transfer.networks.pretrained import PretrainedSpec, normalise_pretrained
from mri_slice_transfer.networks.registry import encoder_name
from mri_slice_transfer.networks.slice_set import SliceSetNet
from mri_slice_transfer.vocabulary import (
    ALIASES,
    Encoder,
    PlaneEncoder,
    PlaneFusion,
    look_up,
    names,
    parse_axis,
)

__all__ = ["CONV3D_NAMES", "MODEL_NAMES", "build_model", "count_parameters"]

#: Names that select the 3D-CNN baseline (``conv3d`` and its :data:`~mri_slice_transfer.vocabulary.ALIASES`).
CONV3D_NAMES: tuple[str, ...] = (
    Encoder.CONV3D.value,
    *(k for k, v in ALIASES[Encoder].items() if v is Encoder.CONV3D),
)
#: Every accepted ``encoder`` value of :func:`build_model`: the
#: :class:`~mri_slice_transfer.vocabulary.Encoder` names and their aliases.
MODEL_NAMES: tuple[str, ...] = names(Encoder, aliases=True)


def build_model(
    encoder: str = "resnet18",
    axis: str = "axial",
    aggregation: str = "mean",
    position_encoding: str = "none",
    pretrained: PretrainedSpec = False,
    num_outputs: int = 1,
    spatial_size: Sequence[int] = (91, 109, 91),
    output_bias: float | None = None,
    in_channels_mode: str = "fold",
    slice_chunk_size: int | None = None,
    pretrained_strict: bool = True,
    transformer_layers: int = 1,
    transformer_heads: int = 4,
    transformer_width: int = 64,
    transformer_readout: str = "cls",
    transformer_rotary: bool = False,
    slice_keep: float = 1.0,
    slice_keep_style: str = "random",
    plane_encoder: str = "shared",
    plane_fusion: str = "concat",
) -> nn.Module:
    """Build a :class:`~.slice_set.SliceSetNet`, for several planes (``axis="all"``, ``"sagittal,axial"``)
    a :class:`~.planes.MultiPlaneNet`, or for ``encoder="conv3d"`` (aliases ``"3dcnn"``, ``"3d-cnn"``) a
    :class:`~.conv3d.Conv3DNet`.

    Args:
        encoder: an :class:`~mri_slice_transfer.vocabulary.Encoder`: ``"cnn5"``, ``"resnet18"``,
            ``"resnet34"``, ``"resnet50"`` or ``"conv3d"`` (or an alias; case-insensitive), any other
            torchvision classification model (``"convnext_tiny"``, ...) or ``"timm:<model>"``
            (:mod:`~.registry`).
        axis, aggregation, position_encoding, in_channels_mode, slice_chunk_size, transformer_layers,
            transformer_heads, transformer_width, transformer_readout, transformer_rotary, slice_keep,
            slice_keep_style: see :class:`~.slice_set.SliceSetNet`; ignored for the 3D-CNN (it has no
            slices).
        pretrained: False, True, "auto" or a path (see :mod:`~.pretrained`). The 3D-CNN and cnn5 have no
            ImageNet weights: the 3D-CNN accepts only False and "auto" (which then means from scratch),
            cnn5 also a weights file (e.g. from ``pretrain.json``).
        num_outputs: output size (1 for an AD logit or an age).
        spatial_size: ``(x, y, z)`` of the input volumes, ``[B, 1, *spatial_size]``.
        output_bias: initial value of the last bias (e.g. the training mean age).
        pretrained_strict: refuse a weights file of which only some tensors match the encoder
            (default); False loads the matching ones and ``encoder_init`` records the partial load.
        plane_encoder, plane_fusion: several planes only (see :class:`~.planes.MultiPlaneNet`): one
            encoder for all planes (``"shared"``) or one per plane (``"separate"``); ``"concat"`` or
            ``"attention"`` fusion of the plane embeddings. Other values with one plane are errors.

    Returns:
        the model; its ``encoder_init`` attribute says how the encoder was initialised.
    """
    encoder = encoder_name(encoder)
    if encoder is Encoder.CONV3D:
        spec = normalise_pretrained(pretrained)
        if spec not in (False, "auto"):
            raise ValueError(
                f"conv3d has no pretrained weights; use pretrained=False or 'auto', got {pretrained!r}"
            )
        return Conv3DNet(num_outputs=num_outputs, in_channels=1, output_bias=output_bias)
    planes = parse_axis(axis)
    multi = {
        "plane_encoder": look_up(plane_encoder, PlaneEncoder),
        "plane_fusion": look_up(plane_fusion, PlaneFusion),
    }
    if len(planes) == 1:
        changed = [f"{k} {v}" for k, v in multi.items() if v != _DEFAULTS[k]]
        if changed:
            raise ValueError(f"{', '.join(changed)}: only for several planes (axis all), not {planes[0]}")
    net_class = SliceSetNet if len(planes) == 1 else MultiPlaneNet
    return net_class(
        encoder=str(encoder),
        axis=planes[0].value if len(planes) == 1 else axis,
        aggregation=aggregation,
        position_encoding=position_encoding,
        pretrained=pretrained,
        num_outputs=num_outputs,
        spatial_size=spatial_size,
        in_channels_mode=in_channels_mode,
        output_bias=output_bias,
        slice_chunk_size=slice_chunk_size,
        pretrained_strict=pretrained_strict,
        transformer_layers=transformer_layers,
        transformer_heads=transformer_heads,
        transformer_width=transformer_width,
        transformer_readout=transformer_readout,
        transformer_rotary=transformer_rotary,
        slice_keep=slice_keep,
        slice_keep_style=slice_keep_style,
        **({} if len(planes) == 1 else {k: v.value for k, v in multi.items()}),
    )


#: The several-plane options' defaults (the values a one-plane model accepts).
_DEFAULTS = {"plane_encoder": PlaneEncoder.SHARED, "plane_fusion": PlaneFusion.CONCAT}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
