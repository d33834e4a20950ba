"""Networks: 2D-slice-set models (cnn5 / ResNet encoders), the 3D-CNN baseline and their factory."""

from __future__ import annotations

from mri_slice_transfer.networks.aggregation import TRANSFORMER_DEFAULTS, TransformerAggregation
from mri_slice_transfer.networks.conv3d import Conv3DNet
from mri_slice_transfer.networks.encoders import (
    ENCODERS,
    IN_CHANNELS_MODES,
    RESNET_ENCODERS,
    CNN5Encoder,
    ResNetEncoder,
    TimmEncoder,
    TorchvisionEncoder,
    build_encoder,
    convert_in_channels_mode,
    fold_conv1_weight,
    repeat_conv1_weight,
)
from mri_slice_transfer.networks.factory import CONV3D_NAMES, MODEL_NAMES, build_model, count_parameters
from mri_slice_transfer.networks.pretrained import (
    IMAGENET,
    IMAGENET_FALLBACK,
    SCRATCH,
    imagenet_weights_file,
    initialise_encoder,
    load_encoder_weights,
    load_imagenet_state_dict,
    remap_encoder_state_dict,
)
from mri_slice_transfer.networks.slice_set import (
    AGGREGATIONS,
    AXES,
    EMBED_DIM,
    POSITION_ENCODINGS,
    AttentionAggregation,
    LearnedPositionEncoding,
    MaxAggregation,
    MeanAggregation,
    SinusoidalPositionEncoding,
    SliceSetNet,
    num_slices,
)

__all__ = [
    "AGGREGATIONS",
    "AXES",
    "CONV3D_NAMES",
    "EMBED_DIM",
    "ENCODERS",
    "IMAGENET",
    "IMAGENET_FALLBACK",
    "IN_CHANNELS_MODES",
    "MODEL_NAMES",
    "POSITION_ENCODINGS",
    "RESNET_ENCODERS",
    "SCRATCH",
    "TRANSFORMER_DEFAULTS",
    "AttentionAggregation",
    "CNN5Encoder",
    "Conv3DNet",
    "LearnedPositionEncoding",
    "MaxAggregation",
    "MeanAggregation",
    "ResNetEncoder",
    "TimmEncoder",
    "TorchvisionEncoder",
    "SinusoidalPositionEncoding",
    "SliceSetNet",
    "TransformerAggregation",
    "build_encoder",
    "build_model",
    "convert_in_channels_mode",
    "count_parameters",
    "fold_conv1_weight",
    "imagenet_weights_file",
    "initialise_encoder",
    "load_encoder_weights",
    "load_imagenet_state_dict",
    "num_slices",
    "remap_encoder_state_dict",
    "repeat_conv1_weight",
]
