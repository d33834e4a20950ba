"""2D-slice-set networks: a shared 2D encoder per slice, positional encoding, aggregation, head.

A volume ``[B, 1, X, Y, Z]`` is cut into its ``K`` slices along one axis; one 2D encoder embeds every
slice to a ``d = 32`` vector ``r(x_k)``; an optional positional encoding gives ``r(x_k) + p_k``; the
``K`` embeddings are aggregated (mean / max / attention / transformer:
:mod:`~mri_slice_transfer.networks.aggregation`) and a small MLP head predicts ``num_outputs`` values
(an AD logit or an age).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mri_slice_transfer.networks.aggregation import (
    AGGREGATIONS,
    AttentionAggregation,
    MaxAggregation,
    MeanAggregation,
    TransformerAggregation,
    build_aggregation,
)
from mri_slice_transfer.networks.encoders import (
    ENCODERS,
    IN_CHANNELS_MODES,
    CNN5Encoder,
    build_encoder,
    kaiming_init_,
)
from mri_slice_transfer.networks.precision import full_precision, to_full
from mri_slice_transfer.networks.pretrained import PretrainedSpec, initialise_encoder
from mri_slice_transfer.networks.registry import encoder_name
from mri_slice_transfer.vocabulary import Axis, Encoder, PositionEncoding, names

__all__ = [
    "AXES",
    "AGGREGATIONS",
    "POSITION_ENCODINGS",
    "EMBED_DIM",
    "num_slices",
    "LearnedPositionEncoding",
    "SinusoidalPositionEncoding",
    "build_position_encoding",
    "MeanAggregation",
    "MaxAggregation",
    "AttentionAggregation",
    "TransformerAggregation",
    "build_aggregation",
    "SLICE_KEEP_STYLES",
    "SliceSetNet",
]

#: Slicing axes and the volume dimension (of x, y, z) that they index.
AXES: dict[str, int] = {name: i for i, name in enumerate(names(Axis))}
POSITION_ENCODINGS: tuple[str, ...] = names(PositionEncoding)
#: How training picks the slices of a scan when ``slice_keep < 1``: any subset, or a contiguous run.
SLICE_KEEP_STYLES: tuple[str, ...] = ("random", "crop")
#: Size ``d`` of a slice embedding (input of aggregation and head).
EMBED_DIM = 32
logger = logging.getLogger(__name__)

# cnn5 adds the positional encoding to its 64-d pooled features, before Dropout and the last 1x1 layer.
_CNN5_FEATURES = 64


def _check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value.lower()


def _slice_encoder_name(value: object) -> str:
    """The canonical name of a 2D slice encoder (:func:`~.registry.encoder_name`; not ``conv3d``)."""
    name = encoder_name(value)
    if name == Encoder.CONV3D or (isinstance(name, Encoder) and name.value not in ENCODERS):
        raise ValueError(f"encoder must be a 2D slice encoder, not {value!r} (build conv3d with build_model)")
    return str(name)


def num_slices(spatial_size: Sequence[int], axis: str) -> int:
    """Number of slices ``K`` of a volume of ``spatial_size`` (x, y, z) cut along ``axis``."""
    return int(spatial_size[AXES[_check_choice("axis", axis, tuple(AXES))]])


class LearnedPositionEncoding(nn.Module):
    """Trainable positional encoding: ``LayerNorm_{(K, d)}(e + p)`` with ``p`` of shape ``[K, d]``.

    ``p`` starts as ``N(0, 1/K)`` (std ``1/sqrt(K)``) as in the reference implementation; the LayerNorm
    normalises each volume's whole ``K x d`` block of embeddings (elementwise affine), also as there.

    Args:
        num_positions: ``K``, the number of slices.
        dim: ``d``, the embedding size.

    Shapes:
        ``[B, K, d]`` -> ``[B, K, d]``.
    """

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(num_positions, dim) / math.sqrt(num_positions))
        self.norm = nn.LayerNorm((num_positions, dim))

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` ``[B, K, d]``; or ``[B, k, d]`` of the slices at ``positions`` ``[B, k]`` (a subset).

        ``mask`` (``[B, k]`` bool, True = a real slice) leaves padded slices out of the LayerNorm's
        statistics (their outputs are 0), so a scan's encoding does not depend on its padding.
        """
        if positions is None and mask is None:
            return self.norm(x + self.p)
        # a subset of the slices, or the real ones: the same LayerNorm over the k x d block that is there
        p, w, b = (self.p, self.norm.weight, self.norm.bias)
        if positions is not None:
            p, w, b = p[positions], w[positions], b[positions]
        y = x + p
        if mask is None:
            var, mean = torch.var_mean(y, dim=(1, 2), unbiased=False, keepdim=True)
            return (y - mean) * torch.rsqrt(var + self.norm.eps) * w + b
        m = mask.to(y.dtype).unsqueeze(-1)
        count = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0) * y.shape[-1]
        mean = (y * m).sum(dim=(1, 2), keepdim=True) / count
        var = (((y - mean) * m) ** 2).sum(dim=(1, 2), keepdim=True) / count
        return ((y - mean) * torch.rsqrt(var + self.norm.eps) * w + b) * m


class SinusoidalPositionEncoding(nn.Module):
    """Fixed transformer sin/cos positional encoding (Vaswani et al. 2017), added; no parameters.

    Only useful with a non-linear aggregation (max / attention): with mean aggregation a fixed
    additive table (followed by linear layers only) shifts the mean embedding by a constant, so the
    model stays exactly permutation invariant. The learned encoding escapes this through its
    LayerNorm, whose per-position affine weights act as learned per-slice weights.

    ``P[k, 2i] = sin(k / 10000^(2i/d))``, ``P[k, 2i+1] = cos(k / 10000^(2i/d))``. The table is a
    non-persistent buffer: it is rebuilt from ``K`` and ``d`` and not stored in checkpoints.

    Args:
        num_positions: ``K``, the number of slices.
        dim: ``d``, the embedding size.

    Shapes:
        ``[B, K, d]`` -> ``[B, K, d]``.
    """

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        pos = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
        table = torch.zeros(num_positions, dim, dtype=torch.float64)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
        self.register_buffer("table", table.float(), persistent=False)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` ``[B, K, d]``; or ``[B, k, d]`` of the slices at ``positions`` ``[B, k]`` (a subset)."""
        table = self.table if positions is None else self.table[positions]
        return x + table.to(dtype=x.dtype)


class _NoPositionEncoding(nn.Identity):
    """``position_encoding="none"``: returns the embeddings unchanged (also for a subset of slices)."""

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return x


def build_position_encoding(kind: str, num_positions: int, dim: int) -> nn.Module:
    """``"none"`` (identity), ``"learned"`` or ``"sinusoidal"`` positional encoding for ``[B, K, d]``."""
    kind = _check_choice("position_encoding", kind, POSITION_ENCODINGS)
    if kind == "learned":
        return LearnedPositionEncoding(num_positions, dim)
    if kind == "sinusoidal":
        return SinusoidalPositionEncoding(num_positions, dim)
    return _NoPositionEncoding()


class _KeepBatchNormStats(contextlib.AbstractContextManager):
    """Restore BatchNorm running statistics on exit.

    Used as the recompute context of activation checkpointing: the recomputation in backward runs the
    encoder forward a second time, which would otherwise update the running mean/var twice per step.
    """

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.saved: list[list[torch.Tensor | None]] = []

    def __enter__(self) -> _KeepBatchNormStats:
        self.saved = [
            [None if b is None else b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
            for m in self.norms
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for m, saved in zip(self.norms, self.saved, strict=True):
                for buf, old in zip(
                    (m.running_mean, m.running_var, m.num_batches_tracked), saved, strict=True
                ):
                    if buf is not None and old is not None:
                        buf.copy_(old)
        self.saved = []
        return None


class SliceSetNet(nn.Module):
    """2D-slice-set network with optional positional encoding (Gupta et al. style, see docs).

    Args:
        encoder: 2D slice encoder: ``"cnn5"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, any other
            torchvision classification model (``"convnext_tiny"``, ...) or ``"timm:<model>"``
            (:mod:`~.registry`); all but cnn5 are projected to ``d = 32`` by one Linear.
        axis: slicing axis: ``"sagittal"`` (along x: ``K = spatial_size[0]`` slices of ``(y, z)``),
            ``"coronal"`` (along y: slices of ``(x, z)``) or ``"axial"`` (along z: slices of ``(x, y)``).
        aggregation: ``"mean"``, ``"max"``, ``"attention"`` (the paper's pooled attention) or
            ``"transformer"`` over the ``K`` slice embeddings (:mod:`~.aggregation`, ``docs/models.md``).
        position_encoding: ``"none"``, ``"learned"`` (trainable ``p_k`` + LayerNorm, the paper's) or
            ``"sinusoidal"`` (fixed).
        pretrained: encoder initialisation: ``False``, ``True`` (ImageNet-1K, error if unavailable),
            ``"auto"`` (ImageNet if available, else random with a warning) or a path to a state dict;
            see :mod:`mri_slice_transfer.networks.pretrained`. ``cnn5`` accepts False, "auto" or a
            weights file.
        num_outputs: size of the output (1 for an AD logit or an age).
        spatial_size: ``(x, y, z)`` size of the input volumes; fixes ``K`` (and the positional table).
        in_channels_mode: ResNets and other torchvision / timm models: ``"fold"`` (1-channel first
            conv = channel sum of the RGB one; default, cheaper) or ``"repeat"`` (slice repeated to 3
            channels, as the reference). Both compute the same function;
            :func:`~.encoders.convert_in_channels_mode` converts weights.
        output_bias: initial value of the last bias (e.g. the training mean age); None keeps the default.
        slice_chunk_size: None encodes all ``B * K`` slices in one batch; an int encodes them in chunks
            of that many slices with activation checkpointing (when gradients are on), which bounds the
            activation memory of big encoders at the cost of a second encoder forward in backward.
            Identical results for cnn5 and for ResNets in eval mode; in training mode ResNet BatchNorm
            statistics are then computed per chunk.
        pretrained_strict: refuse a weights file of which only some tensors match the encoder
            (default); False loads the matching ones and ``encoder_init`` says so
            (``"file:<path> (partial: 120/216 tensors)"``).
        transformer_layers, transformer_heads, transformer_width: ``"transformer"`` only: number of
            layers (1), attention heads (4; must divide 32) and feed-forward width (64).
        transformer_readout: ``"transformer"`` only: ``"cls"`` (class token, default) or ``"mean"``.
        transformer_rotary: ``"transformer"`` only: rotary encoding of the slice index in every
            attention (default False); combines with ``position_encoding``.
        slice_keep: slice-count augmentation: in training mode each scan is represented by
            ``round(slice_keep * K)`` of its slices (at least 1), drawn from torch's random generator
            (so a seeded run repeats); evaluation always uses all ``K``. 1.0 (default) turns it off.
        slice_keep_style: ``"random"`` (any subset, kept in slice order) or ``"crop"`` (a contiguous
            run at a random start).

    Shapes:
        input ``[B, 1, *spatial_size]`` -> output ``[B, num_outputs]``.

    Attributes:
        encoder_init: what initialised the encoder: ``"scratch"``, ``"imagenet"``,
            ``"random (ImageNet weights unavailable)"`` or ``"file:<path>"`` (with ``" (partial: ...)"``
            after a partial load).
        num_slices: ``K``.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        axis: str = "axial",
        aggregation: str = "mean",
        position_encoding: str = "none",
        pretrained: PretrainedSpec = False,
        num_outputs: int = 1,
        spatial_size: Sequence[int] = (91, 109, 91),
        in_channels_mode: str = "fold",
        output_bias: float | None = None,
        slice_chunk_size: int | None = None,
        pretrained_strict: bool = True,
        transformer_layers: int = 1,
        transformer_heads: int = 4,
        transformer_width: int = 64,
        transformer_readout: str = "cls",
        transformer_rotary: bool = False,
        slice_keep: float = 1.0,
        slice_keep_style: str = "random",
    ) -> None:
        super().__init__()
        encoder = _slice_encoder_name(encoder)
        axis = _check_choice("axis", axis, tuple(AXES))
        aggregation = _check_choice("aggregation", aggregation, AGGREGATIONS)
        position_encoding = _check_choice("position_encoding", position_encoding, POSITION_ENCODINGS)
        in_channels_mode = _check_choice("in_channels_mode", in_channels_mode, IN_CHANNELS_MODES)
        spatial_size = tuple(int(s) for s in spatial_size)
        if len(spatial_size) != 3 or any(s < 1 for s in spatial_size):
            raise ValueError(f"spatial_size must be 3 positive ints (x, y, z), got {spatial_size}")
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
        if not isinstance(pretrained_strict, bool):
            raise ValueError(f"pretrained_strict must be True or False, not {pretrained_strict!r}")
        if slice_chunk_size is not None and (not isinstance(slice_chunk_size, int) or slice_chunk_size < 1):
            raise ValueError(f"slice_chunk_size must be None or a positive int, got {slice_chunk_size!r}")
        slice_keep_style = _check_choice("slice_keep_style", slice_keep_style, SLICE_KEEP_STYLES)
        if (
            isinstance(slice_keep, bool)
            or not isinstance(slice_keep, (int, float))
            or not 0 < slice_keep <= 1
        ):
            raise ValueError(f"slice_keep must be a fraction in (0, 1], not {slice_keep!r}")
        if position_encoding == "sinusoidal" and aggregation == "mean":
            logger.warning(
                "position_encoding='sinusoidal' with aggregation='mean' adds a constant to the mean "
                "embedding and carries no slice-position information; use aggregation 'max' or "
                "'attention', or position_encoding='learned'"
            )
        self.encoder_name = encoder
        self.axis = axis
        self.aggregation_name = aggregation
        self.position_encoding_name = position_encoding
        self.in_channels_mode = in_channels_mode
        self.spatial_size = spatial_size
        self.num_outputs = num_outputs
        self.slice_chunk_size = slice_chunk_size
        self.num_slices = spatial_size[AXES[axis]]
        self.slice_keep = float(slice_keep)
        self.slice_keep_style = slice_keep_style

        self.encoder = build_encoder(encoder, in_channels_mode=in_channels_mode)
        pe_dim = self._build_embedding(self.encoder.out_features)
        self.position = build_position_encoding(position_encoding, self.num_slices, pe_dim)
        self.aggregate = build_aggregation(
            aggregation,
            EMBED_DIM,
            transformer_layers=transformer_layers,
            transformer_heads=transformer_heads,
            transformer_width=transformer_width,
            transformer_readout=transformer_readout,
            transformer_rotary=transformer_rotary,
        )
        self.head = nn.Sequential(nn.Linear(EMBED_DIM, 64), nn.ReLU(inplace=True), nn.Linear(64, num_outputs))
        if output_bias is not None:
            nn.init.constant_(self.output_layer.bias, float(output_bias))

        self.encoder_init = self._initialise_encoder(encoder, pretrained, pretrained_strict)

    def _initialise_encoder(self, name: str, pretrained: PretrainedSpec, strict: bool) -> str:
        """Load the encoder's ``pretrained`` weights (:func:`~.pretrained.initialise_encoder`)."""
        return initialise_encoder(
            getattr(self.encoder, "backbone", self.encoder),
            name,
            pretrained,
            strict=strict,
            stem_key=getattr(self.encoder, "stem_key", "conv1.weight"),
            head_keys=getattr(self.encoder, "head_keys", ("fc.",)),
        )

    def _build_embedding(self, features: int) -> int:
        """``pre_embed`` and ``post_embed`` around the positional encoding; returns its width."""
        if isinstance(self.encoder, CNN5Encoder):
            # Reference cnn5: pooled 64-d features -> [positional encoding] -> Dropout(0.5) -> 1x1 conv
            # to 32 (a Linear on pooled features; same parameters, He init like the other convs).
            self.pre_embed: nn.Module = nn.Identity()
            self.post_embed: nn.Module = nn.Sequential(nn.Dropout(0.5), nn.Linear(features, EMBED_DIM))
            kaiming_init_(self.post_embed)
            return features
        # ResNets and every other torchvision / timm encoder: pooled features -> Linear to 32 -> [PE].
        self.pre_embed = nn.Linear(features, EMBED_DIM)
        self.post_embed = nn.Identity()
        return EMBED_DIM

    @property
    def output_layer(self) -> nn.Module:
        """The last layer (``Linear(64, num_outputs)`` of the head): its bias is the output bias."""
        return self.head[-1]

    def slices(self, x: torch.Tensor) -> torch.Tensor:
        """Cut volumes ``[B, 1, X, Y, Z]`` into slices ``[B * K, 1, H, W]`` (volume-major order)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected input [B, 1, X, Y, Z], got {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.spatial_size:
            raise ValueError(
                f"input spatial size {tuple(x.shape[2:])} does not match the model's spatial_size "
                f"{self.spatial_size} (K = {self.num_slices} {self.axis} slices)"
            )
        dim = 2 + AXES[self.axis]
        x = x.movedim(dim, 1)  # [B, K, 1, H, W]; in-plane dims keep their (x, y, z) order
        b, k = x.shape[:2]
        return x.reshape(b * k, *x.shape[2:])

    def encode_slices(self, slices: torch.Tensor) -> torch.Tensor:
        """Run the 2D encoder on ``[N, 1, H, W]`` slices (chunked if ``slice_chunk_size``) -> ``[N, C]``."""
        chunk = self.slice_chunk_size
        if chunk is None or slices.shape[0] <= chunk:
            return self.encoder(slices)
        use_checkpoint = torch.is_grad_enabled() and any(p.requires_grad for p in self.encoder.parameters())
        outs = []
        for part in slices.split(chunk, dim=0):
            if use_checkpoint:
                outs.append(
                    checkpoint(
                        self.encoder,
                        part,
                        use_reentrant=False,
                        context_fn=lambda: (contextlib.nullcontext(), _KeepBatchNormStats(self.encoder)),
                    )
                )
            else:
                outs.append(self.encoder(part))
        return torch.cat(outs, dim=0)

    def kept_slices(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor | None:
        """The slice indices ``[B, k]`` a training forward pass uses (``slice_keep``), or None (all).

        Drawn from torch's default generator (seeded runs repeat); None in eval mode or when
        ``slice_keep`` is 1.
        """
        k_all = self.num_slices
        keep = max(1, round(self.slice_keep * k_all))
        if not self.training or keep >= k_all:
            return None
        if self.slice_keep_style == "crop":
            start = torch.randint(0, k_all - keep + 1, (batch_size, 1))
            return (start + torch.arange(keep)).to(device)
        order = torch.rand(batch_size, k_all).argsort(dim=1)[:, :keep]
        return order.sort(dim=1).values.to(device)

    def embed(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Slice embeddings (after positional encoding): ``[B, 1, X, Y, Z]`` -> ``[B, K, 32]``.

        Args:
            x: the volumes.
            positions: ``[B, k]`` slice indices: embed only these slices of each scan -> ``[B, k, 32]``.
            mask: ``[B, k]`` bool, True = a real slice: padded slices stay out of the learned positional
                encoding's LayerNorm statistics.
        """
        b = x.shape[0]
        slices = self.slices(x)
        if positions is not None:
            rows = (
                positions + torch.arange(b, device=positions.device).unsqueeze(1) * self.num_slices
            ).flatten()
            slices = slices[rows]
        feats = to_full(self.encode_slices(slices).reshape(b, -1, self.encoder.out_features))
        with full_precision(feats):
            feats = self.pre_embed(feats)
            if positions is None and mask is None:
                return self.post_embed(self.position(feats))
            return self.post_embed(self.position(feats, positions, mask))

    def forward(self, x: torch.Tensor, slice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` -> ``[B, num_outputs]``.

        Args:
            x: the volumes.
            slice_mask: ``[B, K]`` bool, True = a real slice: for scans with fewer than ``K`` slices,
                padded (e.g. with zeros) to ``K`` along the axis, so they batch with full ones. Padded
                slices change no output (every aggregation and the learned positional encoding leave
                them out). Each scan needs at least one real slice (also among those ``slice_keep``
                draws in training).
        """
        pooled = self.pooled_embedding(x, slice_mask)
        with full_precision(pooled):
            return self.head(pooled)

    def pooled_embedding(self, x: torch.Tensor, slice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The scan embedding the head reads: ``[B, 1, X, Y, Z]`` -> ``[B, 32]`` (``forward`` without
        the head; same arguments; the features ``inference.json --save_features true`` writes)."""
        positions = self.kept_slices(x.shape[0], x.device)
        mask = None
        if slice_mask is not None:
            if slice_mask.shape != (x.shape[0], self.num_slices) or slice_mask.dtype != torch.bool:
                raise ValueError(
                    f"slice_mask must be a bool tensor of shape {[x.shape[0], self.num_slices]} "
                    f"(scans x slices), not {slice_mask.dtype} {list(slice_mask.shape)}"
                )
            mask = (
                slice_mask.to(x.device) if positions is None else slice_mask.to(x.device).gather(1, positions)
            )
            if not mask.any(dim=1).all():
                raise ValueError("slice_mask: every scan needs at least one real slice (True)")
        embedded = self.embed(x, positions, mask)
        with full_precision(embedded):
            return self.aggregate(embedded, mask=mask, positions=positions)
