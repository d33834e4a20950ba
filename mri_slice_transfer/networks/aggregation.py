"""Aggregations: pool a set of ``K`` slice embeddings ``[B, K, d]`` into one ``[B, d]``.

Every aggregation takes the same two optional arguments besides the embeddings:

- ``mask`` (``[B, K]`` bool, True = a real slice): scans with different slice counts batch together,
  padded to the longest; a padded slice changes no output.
- ``positions`` (``[B, K]`` long): the slice index of every embedding in its scan (default
  ``0 .. K-1``); only the transformer's rotary encoding reads it.

``mean`` and ``max`` are the paper's set operations; ``attention`` is the paper's ``PooledAttention``
(``umgupta/2d-slice-set-networks``, ``src/arch/slice_cnn_utils.py``); ``transformer`` is a small
pre-norm transformer encoder over the slice tokens with a class-token or mean readout and optional
rotary positions (Medical Slice Transformer style). See ``docs/models.md``.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mri_slice_transfer.vocabulary import Aggregation, names

__all__ = [
    "AGGREGATIONS",
    "READOUTS",
    "TRANSFORMER_DEFAULTS",
    "MeanAggregation",
    "MaxAggregation",
    "AttentionAggregation",
    "TransformerAggregation",
    "build_aggregation",
]

AGGREGATIONS: tuple[str, ...] = names(Aggregation)
#: How the transformer turns its output tokens into one vector: a learned class token, or their mean.
READOUTS: tuple[str, ...] = ("cls", "mean")


class MeanAggregation(nn.Module):
    """Mean over slices: ``[B, K, d]`` -> ``[B, d]`` (over the real slices when a ``mask`` is given)."""

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is None:
            return x.mean(dim=1)
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class MaxAggregation(nn.Module):
    """Element-wise max over slices: ``[B, K, d]`` -> ``[B, d]`` (padded slices never win)."""

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is None:
            return x.amax(dim=1)
        return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)


class AttentionAggregation(nn.Module):
    """The paper's attention pooling (``PooledAttention`` with ``ln=True``): a learned seed query.

    ``K = W_k e + b_k``, ``V = W_v e + b_v``; per head ``h`` (a contiguous ``d / heads`` chunk of the
    features) ``a_h = softmax_k(S_h . K_{k,h} / sqrt(d / heads))`` and ``z_h = sum_k a_{h,k} V_{k,h}``;
    then ``out = W_o LayerNorm(z) + b_o``. No residual and no ReLU (the block this package used up to
    bundle version 0.6.0 had both; its weights do not load into this one). The paper's experiments use
    one head.
    The weights ``a`` of the last forward pass are kept in ``last_weights`` (``[B, K]``, the mean over
    heads, detached) for inspection of which slices the model attends to.

    Parameter names: ``query`` = the paper's ``S``, ``key`` = ``fc_k``, ``value`` = ``fc_v``,
    ``norm`` = ``ln0``, ``out`` = ``fc_o`` (:mod:`~mri_slice_transfer.networks.paper_import` maps them).

    Args:
        dim: ``d``, the embedding size.
        num_heads: number of heads; must divide ``dim``.

    Shapes:
        ``[B, K, d]`` -> ``[B, d]``.
    """

    def __init__(self, dim: int, num_heads: int = 1) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention heads must divide the embedding size {dim}, not {num_heads!r}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.empty(dim))
        nn.init.xavier_uniform_(self.query.data.view(1, dim))  # the paper's S: xavier on [1, d]
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.last_weights: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, k, d = x.shape
        h = self.num_heads
        keys = self.key(x).reshape(b, k, h, d // h)
        values = self.value(x).reshape(b, k, h, d // h)
        scores = torch.einsum("hc,bkhc->bhk", self.query.reshape(h, d // h), keys) / math.sqrt(d // h)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # [B, heads, K]
        self.last_weights = weights.mean(dim=1).detach()
        z = torch.einsum("bhk,bkhc->bhc", weights, values).reshape(b, d)
        return self.out(self.norm(z))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        if prefix + "ff.weight" in state_dict:
            raise RuntimeError(
                "these weights hold the earlier attention block of mri_slice_transfer (bundles up to 0.6.0: "
                "LayerNorm, then a residual ReLU feed-forward layer 'ff'); aggregation 'attention' is now "
                "the paper's PooledAttention (LayerNorm, then a linear 'out' layer), so they cannot be "
                "loaded: retrain the model with this version"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of ``x`` ``[B, heads, T, c]`` at ``positions`` ``[B, T]``.

    Feature pairs ``(x_{2i}, x_{2i+1})`` are rotated by the angle ``position * base^(-2i / c)``, so the
    dot product of a rotated query and key depends on their positions only through their difference.
    """
    c = x.shape[-1]
    freq = base ** (-torch.arange(0, c, 2, device=x.device, dtype=torch.float32) / c)
    angle = positions.to(torch.float32).unsqueeze(-1) * freq  # [B, T, c/2]
    cos, sin = angle.cos().unsqueeze(1).to(x.dtype), angle.sin().unsqueeze(1).to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class _TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer: ``x + MHA(LN(x))``, then ``x + FF(LN(x))`` (GELU, no dropout)."""

    def __init__(self, dim: int, heads: int, width: int, rotary: bool) -> None:
        super().__init__()
        self.heads = heads
        self.rotary = rotary
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotate(q, positions), rotate(k, positions)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.norm2(x))


class TransformerAggregation(nn.Module):
    """A small transformer encoder over the slice embeddings, read out by a class token or the mean.

    The slice embeddings (with the model's additive positional encoding, if any) are the tokens; a
    ``mask`` keeps padded slices out of every attention and of the mean readout, so a scan gives the
    same output batched alone or with scans of other slice counts. With ``rotary`` the queries and keys
    of every layer are rotated by the slice index (:func:`rotate`); the class token sits at position 0
    (no rotation) and slice ``k`` at ``k + 1``.

    Args:
        dim: ``d``, the embedding size (the token width).
        layers: number of transformer layers.
        heads: attention heads; must divide ``dim``.
        width: hidden width of each layer's feed-forward network.
        readout: ``"cls"`` (a learned class token's output) or ``"mean"`` (mean of the real tokens).
        rotary: rotary position embedding of the slice index in every attention.

    Shapes:
        ``[B, K, d]`` -> ``[B, d]``.
    """

    def __init__(
        self,
        dim: int,
        layers: int = 1,
        heads: int = 4,
        width: int = 64,
        readout: str = "cls",
        rotary: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("layers", layers), ("heads", heads), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"transformer_{name} must be a positive int, not {value!r}")
        if dim % heads or (rotary and (dim // heads) % 2):
            need = "an even number of dims per head for rotary" if dim % heads == 0 else f"a divisor of {dim}"
            raise ValueError(f"transformer_heads must give {need}, not {heads!r}")
        readout = readout.lower() if isinstance(readout, str) else readout
        if readout not in READOUTS:
            raise ValueError(f"unknown transformer_readout {readout!r}; choose one of {', '.join(READOUTS)}")
        if not isinstance(rotary, bool):
            raise ValueError(f"transformer_rotary must be True or False, not {rotary!r}")
        self.readout = readout
        self.cls = nn.Parameter(torch.randn(dim) * 0.02) if readout == "cls" else None
        self.layers = nn.ModuleList(_TransformerLayer(dim, heads, width, rotary) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, k, d = x.shape
        mask = torch.ones(b, k, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        if positions is None:
            positions = torch.arange(k, device=x.device).expand(b, k)
        if self.cls is not None:
            x = torch.cat((self.cls.to(x.dtype).expand(b, 1, d), x), dim=1)
            mask = torch.cat((mask.new_ones(b, 1), mask), dim=1)
            positions = torch.cat((positions.new_zeros(b, 1), positions + 1), dim=1)
        for layer in self.layers:
            x = layer(x, mask, positions)
        x = self.norm(x)
        if self.cls is not None:
            return x[:, 0]
        return MeanAggregation()(x, mask)


#: The transformer's settings as model arguments (``transformer_<name>``) with their defaults (those of
#: :class:`TransformerAggregation`: one layer, 4 heads of 8 dims, feed-forward width 64, class token).
TRANSFORMER_DEFAULTS: dict[str, object] = {
    f"transformer_{name}": p.default
    for name, p in inspect.signature(TransformerAggregation.__init__).parameters.items()
    if name not in ("self", "dim")
}


def build_aggregation(kind: str, dim: int, **transformer: object) -> nn.Module:
    """The aggregation ``kind`` (an :class:`~mri_slice_transfer.vocabulary.Aggregation`) over ``[B, K, d]``.

    Args:
        kind: ``"mean"``, ``"max"``, ``"attention"`` or ``"transformer"`` (any case).
        dim: ``d``, the embedding size.
        transformer: :data:`TRANSFORMER_DEFAULTS` settings (``transformer_layers=2``, ...); other
            aggregations accept only their default values.

    Returns:
        the module.

    Raises:
        ValueError: an unknown kind or setting (the message lists the choices).
    """
    if not isinstance(kind, str) or kind.lower() not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {kind!r}; choose one of {', '.join(AGGREGATIONS)}")
    unknown = sorted(set(transformer) - set(TRANSFORMER_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown transformer setting(s) {unknown}; choose from {', '.join(TRANSFORMER_DEFAULTS)}"
        )
    kind = kind.lower()
    changed = [k for k, v in transformer.items() if v != TRANSFORMER_DEFAULTS[k]]
    if kind != "transformer" and changed:
        raise ValueError(f"{', '.join(changed)} apply to aggregation 'transformer' only, not {kind!r}")
    if kind == "transformer":
        settings = {**TRANSFORMER_DEFAULTS, **transformer}
        return TransformerAggregation(dim, **{k.removeprefix("transformer_"): v for k, v in settings.items()})
    if kind == "attention":
        return AttentionAggregation(dim)
    return MeanAggregation() if kind == "mean" else MaxAggregation()
