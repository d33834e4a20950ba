"""Network construction for the bundles (delegates to ``mri_slice_transfer.networks.build_model``)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from mri_slice_transfer.engine.distributed import unwrap

__all__ = ["build_network", "set_output_bias", "to_device", "encoder_init"]

logger = logging.getLogger(__name__)


def build_network(channels_last: bool = False, fast_cpu_convs: bool = True, **kwargs: Any) -> torch.nn.Module:
    """``build_model(**kwargs)``; optionally with 2D conv weights in channels-last memory format.

    Args:
        channels_last: convert ``Conv2d`` weights to channels-last. Only ``Conv2d`` weights are
            converted (the 3D-CNN's 5-D weights have no 2D channels-last layout, and converting the
            whole model would fail on them), so this is harmless for every encoder.
        fast_cpu_convs: conv layers work around slow oneDNN bf16 kernels under CPU autocast
            (:mod:`mri_slice_transfer.networks.cpu_conv`: matrix-product weight gradients on small
            maps, fp32 for 1-channel inputs). No effect in fp32 or on CUDA; parameters and
            checkpoints are unchanged.
        kwargs: :func:`mri_slice_transfer.networks.build_model` arguments.
    """
    from mri_slice_transfer.networks import build_model
    from mri_slice_transfer.networks.cpu_conv import use_fast_cpu_convs

    model = build_model(**kwargs)
    if fast_cpu_convs:
        use_fast_cpu_convs(model)
    if channels_last:
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.to(memory_format=torch.channels_last)
    return model


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


def to_device(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Move the model to ``device`` (kept as a function so configs stay one-liners)."""
    return model.to(device)
