"""Import models trained with the paper's code (``umgupta/2d-slice-set-networks``).

That code saves ``{"model": state_dict, "optimizer": ..., "epoch": ...}`` of its ``MRI2DSlice``
(``src/arch/ukbb/brain_age_slice_set.py``). Its keys map onto :class:`~.slice_set.SliceSetNet` as
follows (``d = attn_num_heads * attn_dim``, 32 in all the paper's runs; ``K`` slices):

============================================================  =====================================
paper                                                         here
============================================================  =====================================
``encoder_2d.encoder_2d.<resnet key>`` (torchvision, no fc)   ``encoder.backbone.<resnet key>``
``encoder_2d.encoder_2d.<i>.0.*`` (cnn5 ``encoder1`` conv i)  ``encoder.blocks.<i>.conv.*``
``encoder_2d.post_proc_conv.0.*`` (1x1 conv 256 -> 64)        ``encoder.conv_out.*``
``encoder_2d.post_position_encoding.1.*`` (1x1 conv 64 -> d)  ``post_embed.1.*`` (a Linear)
``encoder_2d.post_proc.0.*`` (ResNet Linear -> d)             ``pre_embed.*``
``encoder_2d.position_encoder.position_encoding``             ``position.p`` ``[K, d]``
  ``[1, d, K, 1, 1]`` (K at the axis' place)
``encoder_2d.position_encoder.ln.*`` ``[d, K, 1, 1]``         ``position.norm.*`` ``[K, d]``
``pooled_attention.S`` ``[1, d]``, ``fc_k``, ``fc_v``,        ``aggregate.query`` ``[d]``, ``key``,
  ``ln0``, ``fc_o``                                             ``value``, ``norm``, ``out``
``attn_post.*`` (Linear d -> 64)                              ``head.0.*``
``regressor.1.*`` (Linear 64 -> 1)                            ``head.2.*``
============================================================  =====================================

The ResNet's RGB ``conv1`` is folded to a 1-channel one (``in_channels_mode="fold"``, the same function
as the paper's channel repeat). What the keys tell: the encoder (cnn5 or the ResNet depth), whether a
positional encoding is learned, and with it the slicing axis (where ``K`` sits), and whether pooling
is ``attention``; ``mean`` and ``max`` have no weights and the axis of a model without positional
encoding is not stored, so those are arguments.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from mri_slice_transfer.networks.aggregation import AttentionAggregation
from mri_slice_transfer.networks.encoders import RESNET_ENCODERS, fold_conv1_weight
from mri_slice_transfer.networks.slice_set import AXES, EMBED_DIM, SliceSetNet

__all__ = ["PaperImportError", "paper_architecture", "convert_paper_state_dict", "load_paper_state_dict"]

#: The paper's grid: its positional table and pooling windows assume 91 x 109 x 91 voxels.
PAPER_SPATIAL_SIZE = (91, 109, 91)
#: ResNet depth -> a key only that depth (of the three) has.
_RESNET_MARKERS = {"resnet50": "layer1.0.conv3.weight", "resnet34": "layer1.2.conv1.weight"}
_FIXED = {
    "encoder_2d.post_proc.0.": "pre_embed.",
    "encoder_2d.post_proc_conv.0.": "encoder.conv_out.",
    "encoder_2d.post_position_encoding.1.": "post_embed.1.",
    "pooled_attention.fc_k.": "aggregate.key.",
    "pooled_attention.fc_v.": "aggregate.value.",
    "pooled_attention.ln0.": "aggregate.norm.",
    "pooled_attention.fc_o.": "aggregate.out.",
    "attn_post.": "head.0.",
    "regressor.1.": "head.2.",
}
_PE = "encoder_2d.position_encoder."


class PaperImportError(ValueError):
    """A file or state dict that is not a model of the paper's code this package can represent."""


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def paper_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """What a state dict of the paper's ``MRI2DSlice`` says about its architecture.

    Args:
        state: the state dict (a ``module.`` prefix of DataParallel is ignored).

    Returns:
        ``encoder`` and ``position_encoding`` always; ``axis`` when a learned positional encoding
        shows it; ``aggregation`` ``"attention"`` when the model has attention weights.

    Raises:
        PaperImportError: the keys are not those of the paper's model.
    """
    state = _strip(state)
    if "encoder_2d.encoder_2d.conv1.weight" in state:
        encoder = next(
            (n for n, key in _RESNET_MARKERS.items() if f"encoder_2d.encoder_2d.{key}" in state), "resnet18"
        )
    elif "encoder_2d.encoder_2d.0.0.weight" in state:
        encoder = "cnn5"
    else:
        raise PaperImportError(
            "not a state dict of the paper's MRI2DSlice: no 'encoder_2d.encoder_2d.conv1.weight' (ResNet) or "
            f"'encoder_2d.encoder_2d.0.0.weight' (encoder1); first keys: {list(state)[:4]}"
        )
    arch = {"encoder": encoder, "position_encoding": "none"}
    table = state.get(_PE + "position_encoding")
    if table is not None:
        if table.ndim != 5 or sorted(table.shape[2:])[:2] != [1, 1]:
            raise PaperImportError(
                f"position_encoding must have shape [1, d, K, 1, 1] (K at the axis), not {list(table.shape)}"
            )
        arch["position_encoding"] = "learned"
        arch["axis"] = list(AXES)[max(range(3), key=lambda i: table.shape[2 + i])]
    if "pooled_attention.S" in state:
        arch["aggregation"] = "attention"
    return arch


def _position(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """``position_encoding`` ``[1, d, ..K..]`` / ``ln.*`` ``[d, ..K..]`` -> ``[K, d]``."""
    d = value.shape[1] if key.endswith("position_encoding") else value.shape[0]
    name = "position.p" if key.endswith("position_encoding") else "position.norm." + key.rsplit(".", 1)[1]
    return name, value.reshape(d, -1).t().contiguous()


def _our_key(key: str, value: torch.Tensor, encoder: str) -> tuple[str, torch.Tensor] | None:
    """One paper key -> (our key, tensor in our shape); None for a key we do not know."""
    if key.startswith(_PE):
        return _position(key, value)
    if key == "pooled_attention.S":
        return "aggregate.query", value.reshape(-1)
    for old, new in _FIXED.items():
        if key.startswith(old):
            is_1x1 = old == "encoder_2d.post_position_encoding.1." and value.ndim == 4
            return new + key[len(old) :], value.flatten(1) if is_1x1 else value  # 1x1 conv -> Linear
    rest = key.removeprefix("encoder_2d.encoder_2d.")
    if rest == key:
        return None
    if encoder in RESNET_ENCODERS:
        return "encoder.backbone." + rest, fold_conv1_weight(value) if rest == "conv1.weight" else value
    match = re.fullmatch(r"(\d+)\.0\.(weight|bias)", rest)
    return (f"encoder.blocks.{match[1]}.conv.{match[2]}", value) if match else None


def convert_paper_state_dict(state: Mapping[str, torch.Tensor], net: SliceSetNet) -> dict[str, torch.Tensor]:
    """The paper's state dict in ``net``'s layout (keys and shapes), checked to fit ``net`` exactly.

    Args:
        state: a state dict saved by the paper's code (its ``"model"`` entry).
        net: a :class:`SliceSetNet` of the same architecture (``in_channels_mode="fold"``).

    Returns:
        a state dict for ``net.load_state_dict``.

    Raises:
        PaperImportError: a key that has no place here, a tensor of another shape, or weights of
            ``net`` that the file does not give (each listed).
    """
    ours = net.state_dict()
    converted, problems = {}, []
    encoder = paper_architecture(state)["encoder"]
    for key, value in _strip(state).items():
        mapped = _our_key(key, value, encoder)
        if mapped is None or mapped[0] not in ours:
            problems.append(f"{key}: no counterpart here")
        elif mapped[1].shape != ours[mapped[0]].shape:
            problems.append(
                f"{key}: shape {list(mapped[1].shape)} does not fit {mapped[0]} {list(ours[mapped[0]].shape)}"
            )
        else:
            converted[mapped[0]] = mapped[1].to(ours[mapped[0]].dtype)
    missing = [k for k in ours if k not in converted and not k.endswith("num_batches_tracked")]
    problems += [f"{k}: not in the file" for k in missing]
    if problems:
        raise PaperImportError(f"{len(problems)} problem(s): " + "; ".join(problems[:8]))
    return {**ours, **converted}


def load_paper_state_dict(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    axis: str | None = None,
    aggregation: str | None = None,
    num_outputs: int = 1,
    spatial_size: tuple[int, int, int] = PAPER_SPATIAL_SIZE,
    attention_heads: int = 1,
) -> SliceSetNet:
    """A :class:`SliceSetNet` with the weights of a model trained by the paper's code.

    Args:
        source: the paper's checkpoint file (``{"model": state_dict, ...}`` or a bare state dict; read
            with ``torch.load(weights_only=True)``), or the state dict itself.
        axis: ``"sagittal"`` (the paper's ``frame_dim`` 1), ``"coronal"`` (2) or ``"axial"`` (3); needed
            when the model has no positional encoding, else checked against it.
        aggregation: ``"mean"`` or ``"max"`` (the paper's ``agg_fn``) for models without attention
            weights; attention models need none (or ``"attention"``).
        num_outputs: the regressor's output size (1 in the paper).
        spatial_size: the input grid (the paper's 91 x 109 x 91).
        attention_heads: the paper's ``attn_num_heads`` of an attention model (its configs and run
            scripts use 1; its ``main.py`` defaults to 2 when the option is not given). The weights do
            not store it, and a wrong value gives the wrong function: pass the training run's.

    Returns:
        the network in eval mode; ``encoder_init`` names the source.

    Raises:
        PaperImportError: unreadable file, not the paper's layout, or arguments that contradict it.
    """
    where = f"{source}: " if isinstance(source, (str, os.PathLike)) else ""
    state = _read(Path(source)) if isinstance(source, (str, os.PathLike)) else dict(source)
    try:
        arch = paper_architecture(state)
        for name, given in (("axis", axis), ("aggregation", aggregation)):
            found = arch.get(name)
            if given is not None and found is not None and given.lower() != found:
                raise PaperImportError(f"the weights say {name} {found!r}, not {given!r}")
            if found is None and given is None:
                raise PaperImportError(f"the weights do not say the {name}: pass {name}=...")
            arch[name] = found or given.lower()
        if arch["aggregation"] == "attention" and "pooled_attention.S" not in _strip(state):
            raise PaperImportError(
                "aggregation 'attention' needs pooled_attention.* weights; the file has none"
            )
        net = SliceSetNet(**arch, num_outputs=num_outputs, spatial_size=spatial_size)
        if attention_heads != 1:
            if arch["aggregation"] != "attention":
                raise PaperImportError(
                    f"attention_heads applies to attention models, not {arch['aggregation']!r}"
                )
            net.aggregate = AttentionAggregation(EMBED_DIM, num_heads=attention_heads)
        net.load_state_dict(convert_paper_state_dict(state, net))
    except (PaperImportError, ValueError) as err:
        raise PaperImportError(f"{where}{err}") from None
    net.encoder_init = f"paper:{source}" if where else "paper state dict"
    return net.eval()


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error means the same to the user
        raise PaperImportError(
            f"{path}: cannot be read as a weights-only PyTorch file ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    inner = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(inner, dict) or not any(isinstance(v, torch.Tensor) for v in inner.values()):
        raise PaperImportError(
            f"{path}: holds no state dict (expected {{'model': state_dict, ...}} or a state dict)"
        )
    return inner
