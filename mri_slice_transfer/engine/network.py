"""Network construction for the bundles (delegates to ``mri_slice_transfer.networks.build_model``)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from mri_slice_transfer.engine.distributed import unwrap
from mri_slice_transfer.engine.options import as_bool, as_pretrained
from mri_slice_transfer.engine.resize import scaled_size
from mri_slice_transfer.networks import build_model
from mri_slice_transfer.networks.cpu_conv import use_fast_cpu_convs
from mri_slice_transfer.vocabulary import format_axis

__all__ = [
    "ARCHITECTURE_ARGS",
    "NETWORK_OPTION_ARGS",
    "architecture",
    "build_network",
    "network_options",
    "set_output_bias",
    "encoder_init",
]

logger = logging.getLogger(__name__)


def build_network(
    channels_last: bool | str = False,
    fast_cpu_convs: bool = True,
    input_scale: float | str | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """``build_model(**kwargs)``; optionally with 2D conv weights in channels-last memory format.

    Args:
        channels_last: convert ``Conv2d`` weights to channels-last. Only ``Conv2d`` weights are
            converted (the 3D-CNN's 5-D weights have no 2D channels-last layout, and converting the
            whole model would fail on them), so this is harmless for every encoder.
        fast_cpu_convs: conv layers work around slow oneDNN bf16 kernels under CPU autocast
            (:mod:`mri_slice_transfer.networks.cpu_conv`: matrix-product weight gradients on small
            maps, fp32 for 1-channel inputs). No effect in fp32 or on CUDA; parameters and
            checkpoints are unchanged.
        input_scale: instead of ``spatial_size``: the template grid at this scale (:func:`scaled_size`).
        kwargs: :func:`mri_slice_transfer.networks.build_model` arguments.
    """
    if "pretrained_strict" in kwargs:
        kwargs["pretrained_strict"] = as_bool(kwargs["pretrained_strict"])
    kwargs.update(_typed_options(kwargs))
    if "pretrained" in kwargs:
        kwargs["pretrained"] = as_pretrained(kwargs["pretrained"])
    if input_scale is not None:
        kwargs["spatial_size"] = scaled_size(float(input_scale))
    model = build_model(**kwargs)
    model.architecture = architecture(build_model, kwargs)
    model.network_options = network_options(build_model, kwargs)
    if fast_cpu_convs:
        use_fast_cpu_convs(model)
    if as_bool(channels_last):
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.to(memory_format=torch.channels_last)
    return model


#: The :func:`~mri_slice_transfer.networks.build_model` arguments that define a trained network.
ARCHITECTURE_ARGS = ("encoder", "axis", "aggregation", "position_encoding", "num_outputs", "spatial_size")


def architecture(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The :data:`ARCHITECTURE_ARGS` a ``factory(**kwargs)`` call used (its defaults for those not given).

    Args:
        factory: ``build_model``.
        kwargs: the arguments it was called with.

    Returns:
        plain values (strings, ints, a list for ``spatial_size``), as a model record writes them.
    """
    defaults = {k: p.default for k, p in inspect.signature(factory).parameters.items()}
    out = {}
    for name in ARCHITECTURE_ARGS:
        value = kwargs.get(name, defaults[name])
        if name == "axis":
            value = str(format_axis(value))  # one spelling: "axial", "all", "sagittal,axial"
        out[name] = (
            [int(v) for v in value]
            if name == "spatial_size"
            else (str(value).lower() if isinstance(value, str) else value)
        )
    return out


#: Further :func:`~mri_slice_transfer.networks.build_model` arguments a model record keeps when they
#: differ from their defaults (so the default model's record is unchanged): the transformer's settings,
#: the slice-count augmentation (training only; evaluation always uses every slice) and a several-plane
#: model's ``plane_encoder`` / ``plane_fusion``.
NETWORK_OPTION_ARGS = (
    "transformer_layers",
    "transformer_heads",
    "transformer_width",
    "transformer_readout",
    "transformer_rotary",
    "slice_keep",
    "slice_keep_style",
    "plane_encoder",
    "plane_fusion",
)
_OPTION_TYPES: dict[str, Any] = {
    "transformer_layers": int,
    "transformer_heads": int,
    "transformer_width": int,
    "transformer_rotary": as_bool,
    "slice_keep": float,
}


def _typed_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """:data:`NETWORK_OPTION_ARGS` given as strings on a command line, as the types ``build_model`` takes."""
    out = {}
    for name, kind in _OPTION_TYPES.items():
        value = kwargs.get(name)
        if isinstance(value, str):
            try:
                out[name] = kind(value.strip())
            except ValueError:
                what = {int: "whole number", float: "number"}.get(kind, "true/false value")
                raise ValueError(f"--{name} must be a {what}, not {value!r}") from None
    return out


def network_options(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The :data:`NETWORK_OPTION_ARGS` of a ``factory(**kwargs)`` call that differ from the defaults.

    Args:
        factory: ``build_model``.
        kwargs: the arguments it was called with.

    Returns:
        ``{name: value}`` (empty for the default model), as a model record writes it.
    """
    defaults = {k: p.default for k, p in inspect.signature(factory).parameters.items()}
    out = {}
    for name in NETWORK_OPTION_ARGS:
        if name in kwargs and kwargs[name] != defaults[name]:
            value = kwargs[name]
            out[name] = value.lower() if isinstance(value, str) else value
    return out


def encoder_init(model: torch.nn.Module) -> str:
    """What initialised the encoder (``model.encoder_init``), for the run log."""
    return str(getattr(unwrap(model), "encoder_init", "unknown"))


def set_output_bias(model: torch.nn.Module, value: float | None) -> torch.nn.Module:
    """Fill the bias of the network's output layer with ``value`` (e.g. the training mean age).

    The network declares its output layer (``output_layer``: the head's last ``Linear`` of
    :class:`~mri_slice_transfer.networks.SliceSetNet`, the last 1x1x1 conv of
    :class:`~mri_slice_transfer.networks.Conv3DNet`). A network without that attribute (e.g. a MONAI
    network given as ``network_def``) falls back to its last ``nn.Linear``.

    Args:
        model: the network (a DDP wrapper is unwrapped).
        value: the bias value; None: no-op.

    Returns:
        ``model``.

    Raises:
        ValueError: the network has no output layer with a bias.
    """
    if value is None:
        return model
    net = unwrap(model)
    layer = getattr(net, "output_layer", None)
    if layer is None:
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        layer = linears[-1] if linears else None
    if getattr(layer, "bias", None) is None:
        raise ValueError(
            f"cannot initialise the output bias of {type(net).__name__}: it declares no output layer with "
            "a bias (an `output_layer` attribute, or a last nn.Linear)"
        )
    with torch.no_grad():
        layer.bias.fill_(float(value))
    logger.info("output bias initialised to the training mean label %.3f", float(value))
    return model
