"""Several-plane slice-set models: one slice-set branch per plane of the same volume, fused (``axis all``).

A volume ``[B, 1, X, Y, Z]`` is cut into its sagittal, coronal and axial stacks (or the planes an
``axis`` list names, :func:`~mri_slice_transfer.vocabulary.parse_axis`); each plane has its own
:class:`~mri_slice_transfer.networks.slice_set.SliceSetNet` branch (its positional encoding, with that
plane's ``K``, and its aggregation) without the head, so a branch returns its plane's pooled ``[B, 32]``
scan embedding. The 2D encoder is one module for all planes (``plane_encoder="shared"``) or one per
plane (``"separate"``). The plane embeddings are concatenated in plane order (``plane_fusion="concat"``,
``[B, 32 P]``) or pooled by the paper's attention block across the planes (``"attention"``, ``[B, 32]``,
as AXIAL fuses its planes), and one head ``Linear(., 64) -> ReLU -> Linear(64, num_outputs)`` predicts.
See ``docs/models.md``, "Three planes".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from mri_slice_transfer.networks.aggregation import AttentionAggregation
from mri_slice_transfer.networks.precision import full_precision, to_full
from mri_slice_transfer.networks.pretrained import PretrainedSpec
from mri_slice_transfer.networks.slice_set import EMBED_DIM, SliceSetNet
from mri_slice_transfer.vocabulary import PlaneEncoder, PlaneFusion, format_axis, look_up, parse_axis

__all__ = ["MultiPlaneNet"]


def _borrow_encoder(net: SliceSetNet, encoder: nn.Module) -> None:
    """Make ``net`` use ``encoder`` without owning it (the shared encoder is stored once, at the top)."""
    del net._modules["encoder"]
    object.__setattr__(net, "encoder", encoder)


class _Concat(nn.Module):
    """Plane embeddings ``[B, P, d]`` -> ``[B, P * d]`` (plane after plane)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class MultiPlaneNet(nn.Module):
    """Slice-set model on several planes of the same volume, fused (issue 22 item 2).

    Args:
        encoder: the 2D slice encoder (as :class:`~.slice_set.SliceSetNet`).
        axis: ``"all"`` (sagittal, coronal, axial) or at least two planes (``"sagittal,axial"``, a list);
            parsed by :func:`~mri_slice_transfer.vocabulary.parse_axis`, planes kept in that order.
        aggregation: each plane's aggregation over its ``K`` slice embeddings (one block per plane).
        position_encoding: each plane's positional encoding (its own table: ``K`` differs per plane).
        pretrained: encoder initialisation (as ``SliceSetNet``), applied to each encoder.
        num_outputs: size of the output.
        spatial_size: ``(x, y, z)`` of the input volumes.
        output_bias: initial value of the last bias; None keeps the default.
        plane_encoder: ``"shared"`` (one encoder for every plane; default) or ``"separate"`` (one each).
        plane_fusion: ``"concat"`` (plane embeddings concatenated, then the head; default) or
            ``"attention"`` (the paper's attention pooling, :class:`~.aggregation.AttentionAggregation`,
            across the plane embeddings; its weights of the last pass in ``fusion.last_weights``).
        plane_options: further :class:`~.slice_set.SliceSetNet` arguments, applied to every plane:
            ``in_channels_mode``, ``slice_chunk_size``, ``pretrained_strict``, ``transformer_*``,
            ``slice_keep``, ``slice_keep_style``.

    Shapes:
        input ``[B, 1, *spatial_size]`` -> output ``[B, num_outputs]``; :meth:`pooled_embedding`
        ``[B, 32 P]`` (concat) or ``[B, 32]`` (attention); :meth:`plane_embeddings` ``P x [B, 32]``.

    Attributes:
        axes: the planes, in order. planes: ``{plane: SliceSetNet branch without head}``.
        encoder: the shared encoder (``plane_encoder="shared"`` only; branches use it).
        num_slices: ``{plane: K}``. encoder_init: how the encoders were initialised.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        axis: str | Sequence[str] = "all",
        aggregation: str = "mean",
        position_encoding: str = "none",
        pretrained: PretrainedSpec = False,
        num_outputs: int = 1,
        spatial_size: Sequence[int] = (91, 109, 91),
        output_bias: float | None = None,
        plane_encoder: str = "shared",
        plane_fusion: str = "concat",
        **plane_options: Any,
    ) -> None:
        super().__init__()
        planes = parse_axis(axis)
        if len(planes) < 2:
            raise ValueError(
                f"axis must name two or more planes for MultiPlaneNet (SliceSetNet: one), not {axis!r}"
            )
        self.axes: tuple[str, ...] = tuple(p.value for p in planes)
        self.axis = str(format_axis(planes))
        self.plane_encoder = look_up(plane_encoder, PlaneEncoder).value
        self.plane_fusion = look_up(plane_fusion, PlaneFusion).value
        shared = self.plane_encoder == PlaneEncoder.SHARED
        branches = {}
        for i, plane in enumerate(self.axes):
            branches[plane] = SliceSetNet(
                encoder,
                plane,
                aggregation,
                position_encoding,
                pretrained=pretrained if (i == 0 or not shared) else False,
                spatial_size=spatial_size,
                **plane_options,
            )
            branches[plane].head = nn.Identity()  # a branch returns its plane's pooled embedding
        first = branches[self.axes[0]]
        if shared:
            self.encoder = first.encoder
            for branch in branches.values():
                _borrow_encoder(branch, self.encoder)
        self.planes = nn.ModuleDict(branches)
        self.encoder_name = first.encoder_name
        self.aggregation_name = first.aggregation_name
        self.position_encoding_name = first.position_encoding_name
        self.spatial_size = first.spatial_size
        self.num_outputs = int(num_outputs)
        self.num_slices = {plane: branch.num_slices for plane, branch in branches.items()}
        inits = (
            dict.fromkeys(b.encoder_init for b in branches.values()) if not shared else [first.encoder_init]
        )
        self.encoder_init = "; ".join(inits)
        if self.plane_fusion == PlaneFusion.CONCAT:
            self.fusion: nn.Module = _Concat()
            width = EMBED_DIM * len(self.axes)
        else:
            self.fusion = AttentionAggregation(EMBED_DIM)
            width = EMBED_DIM
        self.head = nn.Sequential(nn.Linear(width, 64), nn.ReLU(inplace=True), nn.Linear(64, num_outputs))
        if output_bias is not None:
            nn.init.constant_(self.output_layer.bias, float(output_bias))

    @property
    def output_layer(self) -> nn.Module:
        """The last layer (``Linear(64, num_outputs)`` of the head): its bias is the output bias."""
        return self.head[-1]

    def plane_embeddings(
        self, x: torch.Tensor, slice_mask: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Each plane's pooled scan embedding: ``[B, 1, X, Y, Z]`` -> ``{plane: [B, 32]}``, in plane order.

        Args:
            x: the volumes.
            slice_mask: ``{plane: [B, K_plane] bool}`` for padded slices (see ``SliceSetNet.forward``);
                a plane not named uses all its slices.
        """
        masks = dict(slice_mask or {})
        unknown = sorted(set(masks) - set(self.axes))
        if unknown:
            raise ValueError(f"slice_mask planes must be some of {', '.join(self.axes)}, not {unknown}")
        return {p: self.planes[p].pooled_embedding(x, masks.get(p)) for p in self.axes}

    def fuse(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """Plane embeddings (``P x [B, 32]``, plane order) -> the fused embedding the head reads."""
        stacked = to_full(torch.stack(tuple(embeddings), dim=1))
        with full_precision(stacked):
            return self.fusion(stacked)

    def pooled_embedding(
        self, x: torch.Tensor, slice_mask: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The fused scan embedding the head reads (``forward`` without the head; same arguments)."""
        return self.fuse(list(self.plane_embeddings(x, slice_mask).values()))

    def forward(self, x: torch.Tensor, slice_mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` -> ``[B, num_outputs]`` (``slice_mask``: see :meth:`plane_embeddings`)."""
        pooled = self.pooled_embedding(x, slice_mask)
        with full_precision(pooled):
            return self.head(pooled)
