"""Fast unit tests of the slice-set building blocks (networks/slice_set.py): positional encodings,
aggregations and the order of the network's stages, checked against their formulas on tiny tensors,
so that mutation testing of the module (scripts/mutation.sh) runs in minutes (docs/testing.md).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mri_slice_transfer.networks.slice_set import (
    AttentionAggregation,
    LearnedPositionEncoding,
    MaxAggregation,
    MeanAggregation,
    SinusoidalPositionEncoding,
    SliceSetNet,
    build_aggregation,
    build_position_encoding,
    num_slices,
)


@pytest.mark.parametrize("k,d", [(6, 8), (4, 5)])
def test_sinusoidal_table_is_sin_cos_of_position_over_10000_powers(k: int, d: int) -> None:
    """P[k, 2i] = sin(k / 10000^(2i/d)), P[k, 2i+1] = cos(same), also for an odd d; forward adds it."""
    pe = SinusoidalPositionEncoding(k, d)
    expected = torch.zeros(k, d, dtype=torch.float64)
    for pos in range(k):
        for j in range(d):
            angle = pos / 10000.0 ** (2 * (j // 2) / d)
            expected[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(pe.table.double(), expected, rtol=0, atol=1e-7)
    assert pe.table.dtype == torch.float32 and "table" not in pe.state_dict()
    x = torch.randn(3, k, d, dtype=torch.float64)
    out = pe(x)
    assert out.dtype == torch.float64
    assert pe(x.to(torch.bfloat16)).dtype == torch.bfloat16  # added in the input's precision (bf16 autocast)
    torch.testing.assert_close(out, x + pe.table.double())


def test_learned_position_starts_with_std_one_over_sqrt_k_and_normalises_each_volume() -> None:
    """p ~ N(0, 1/K); the LayerNorm spans each volume's whole K x d block (mean 0, std 1 at init)."""
    torch.manual_seed(0)
    pe = LearnedPositionEncoding(400, 50)
    assert pe.p.shape == (400, 50) and pe.p.std().item() == pytest.approx(400**-0.5, rel=0.05)
    assert abs(pe.p.mean().item()) < 0.005
    y = pe(torch.randn(2, 400, 50) * 5 + 3)
    assert y.mean(dim=(1, 2)).abs().max() < 1e-5
    torch.testing.assert_close(y.std(dim=(1, 2), unbiased=False), torch.ones(2), rtol=1e-3, atol=1e-3)


def test_position_encoding_and_aggregation_are_chosen_by_name_in_any_case() -> None:
    """The config names (any case) pick the module; an unknown name lists the choices."""
    assert isinstance(build_position_encoding("Learned", 3, 4), LearnedPositionEncoding)
    assert isinstance(build_position_encoding("SINUSOIDAL", 3, 4), SinusoidalPositionEncoding)
    assert isinstance(build_position_encoding("none", 3, 4), nn.Identity)
    learned = build_position_encoding("learned", 3, 4)
    assert learned.p.shape == (3, 4) and build_position_encoding("sinusoidal", 3, 4).table.shape == (3, 4)
    assert isinstance(build_aggregation("Mean", 4), MeanAggregation)
    assert isinstance(build_aggregation("max", 4), MaxAggregation)
    attention = build_aggregation("ATTENTION", 4)
    assert isinstance(attention, AttentionAggregation) and attention.query.shape == (4,)
    with pytest.raises(ValueError, match=r"unknown aggregation 'sum'; choose one of mean, max, attention"):
        build_aggregation("sum", 4)
    with pytest.raises(ValueError, match=r"unknown position_encoding 3"):
        build_position_encoding(3, 3, 4)


def test_mean_and_max_aggregate_over_the_slice_axis() -> None:
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [-1.0, 7.0]]])  # [B=1, K=3, d=2]
    assert MeanAggregation()(x).tolist() == [[1.0, 3.0]]
    assert MaxAggregation()(x).tolist() == [[3.0, 7.0]]


def test_attention_pooling_follows_its_formula_and_keeps_the_weights() -> None:
    """Paper PooledAttention: a = softmax_k(S . W_k e_k / sqrt(d)); out = W_o LN(sum_k a_k W_v e_k) + b_o."""
    torch.manual_seed(1)
    d = 4
    att = AttentionAggregation(d).double()
    assert att.last_weights is None  # no forward pass yet
    with torch.no_grad():
        att.query.mul_(5.0)  # sharper weights than at init, so that a wrong scale shows
        att.norm.weight.uniform_(0.5, 1.5)
        att.norm.bias.normal_()
    x = torch.randn(2, 5, d, dtype=torch.float64)
    scores = torch.stack([torch.stack([att.key(e) @ att.query for e in v]) for v in x]) / math.sqrt(d)
    a = torch.softmax(scores, dim=1)
    z = torch.einsum("bk,bkd->bd", a, att.value(x))
    h = nn.functional.layer_norm(z, (d,), att.norm.weight, att.norm.bias, att.norm.eps)
    torch.testing.assert_close(att(x), att.out(h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(att.last_weights, a)
    assert att.last_weights.shape == (2, 5) and not att.last_weights.requires_grad
    torch.manual_seed(0)
    bound = math.sqrt(6 / 401)  # the paper's S: xavier_uniform on [1, d]
    query = AttentionAggregation(400).query
    assert query.abs().max().item() <= bound and query.std().item() == pytest.approx(
        bound / math.sqrt(3), rel=0.1
    )


@pytest.mark.parametrize("axis,k", [("sagittal", 5), ("Coronal", 6), ("axial", 7)])
def test_number_of_slices_is_the_size_along_the_slicing_axis(axis: str, k: int) -> None:
    assert num_slices((5, 6, 7), axis) == k
    with pytest.raises(ValueError, match=r"unknown axis 'transverse'; choose one of sagittal"):
        num_slices((5, 6, 7), "transverse")


@pytest.mark.parametrize("encoder,pe_dim", [("cnn5", 64), ("resnet18", 32)])
def test_network_stages_run_encoder_position_aggregation_head_in_order(encoder: str, pe_dim: int) -> None:
    """forward = head(aggregate(embed)); cnn5 adds positions to its 64-d features before the 32-d layer,
    ResNets after their 32-d projection; embeddings keep volume b's slices in slice order."""
    torch.manual_seed(0)
    model = SliceSetNet(encoder, "sagittal", "max", "learned", spatial_size=(4, 32, 32)).eval()
    assert model.position.p.shape == (4, pe_dim)
    with torch.no_grad():
        model.position.p.normal_()
        x = torch.randn(2, 1, 4, 32, 32)
        feats = model.encoder(model.slices(x)).reshape(2, 4, -1)
        embed = model.post_embed(model.position(model.pre_embed(feats)))
        torch.testing.assert_close(model.embed(x), embed)
        torch.testing.assert_close(model(x), model.head(model.aggregate(embed)))
        one = model.embed(x[1:])  # volume 1 alone gives the same embeddings as in the batch
        torch.testing.assert_close(one[0], embed[1])
    assert embed.shape == (2, 4, 32) and model(x).shape == (2, 1)


def test_rotary_encoding_rotates_each_feature_pair_by_position_times_its_frequency() -> None:
    """``rotate`` against the formula: pair i of a token at position p turns by ``p * 10000^(-2i / c)``."""
    from mri_slice_transfer.networks.aggregation import rotate

    c, positions = 4, torch.tensor([[0, 3, 7]])
    x = torch.randn(1, 1, 3, c, generator=torch.Generator().manual_seed(0))
    out = rotate(x, positions)
    for t, p in enumerate(positions[0].tolist()):
        for i in range(c // 2):
            angle = p * 10000.0 ** (-2 * i / c)
            a, b = x[0, 0, t, 2 * i].item(), x[0, 0, t, 2 * i + 1].item()
            expected = (a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle))
            assert out[0, 0, t, 2 * i : 2 * i + 2].tolist() == pytest.approx(expected, abs=1e-5)


def test_masked_mean_of_a_scan_with_one_real_slice_is_that_slice() -> None:
    from mri_slice_transfer.networks.aggregation import MeanAggregation

    x = torch.tensor([[[2.0, 4.0], [100.0, 100.0]]])
    out = MeanAggregation()(x, mask=torch.tensor([[True, False]]))
    assert out.tolist() == [[2.0, 4.0]]


# --- networks/aggregation.py: the transformer, the checks and the messages ---------------------------


def _randomised(module: nn.Module) -> nn.Module:
    """Random LayerNorm affine parameters, so that a wrong norm or a wrong order shows."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return module


def _layer_by_hand(layer, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Pre-norm layer: x + proj(MHA(LN1 x)), then + ff(LN2 .) with ff = Linear, GELU, Linear."""
    from mri_slice_transfer.networks.aggregation import rotate

    b, t, d = x.shape
    q, k, v = layer.qkv(layer.norm1(x)).reshape(b, t, 3, layer.heads, d // layer.heads).unbind(2)
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, heads, T, c]
    if layer.rotary:
        q, k = rotate(q, positions), rotate(k, positions)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // layer.heads)
    a = torch.softmax(scores.masked_fill(~mask[:, None, None, :], float("-inf")), dim=-1)
    x = x + layer.proj((a @ v).transpose(1, 2).reshape(b, t, d))
    hidden = nn.functional.gelu(layer.ff[0](layer.norm2(x)))
    return x + layer.ff[2](hidden)


@pytest.mark.parametrize("rotary", [False, True])
def test_transformer_layer_is_pre_norm_attention_then_gelu_feed_forward_with_residuals(rotary: bool) -> None:
    from mri_slice_transfer.networks.aggregation import _TransformerLayer

    torch.manual_seed(0)
    layer = _randomised(_TransformerLayer(8, 2, 16, rotary)).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    positions = torch.tensor([[0, 1, 2, 3], [0, 2, 5, 9]])
    with torch.no_grad():
        torch.testing.assert_close(layer(x, mask, positions), _layer_by_hand(layer, x, mask, positions))


def test_transformer_reads_out_the_class_token_at_position_0_and_slice_k_at_k_plus_1() -> None:
    """cls: LN(layers(cat(cls, x)))[:, 0] with positions 0, p + 1 (p: the given slice indices, default
    0 .. K-1); mean: the mean of LN(layers(x)) over the real slices, positions p."""
    from mri_slice_transfer.networks.aggregation import TransformerAggregation

    torch.manual_seed(0)
    agg = _randomised(TransformerAggregation(8, heads=2, width=16, rotary=True)).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    ones = torch.ones(2, 4, dtype=torch.bool)
    tokens = torch.cat((agg.cls.expand(2, 1, 8), x), dim=1)
    with torch.no_grad():
        for given, pos in ((None, [0, 1, 2, 3]), (torch.tensor([[2, 5, 9]] * 2), [0, 3, 6, 10])):
            expected = agg.norm(_layer_by_hand(agg.layers[0], tokens, ones, torch.tensor([pos] * 2)))[:, 0]
            torch.testing.assert_close(agg(x, positions=given), expected)
    mean = _randomised(TransformerAggregation(8, heads=2, width=16, readout="MEAN", rotary=True)).double()
    assert mean.readout == "mean" and mean.cls is None
    mask = torch.tensor([[True] * 3, [True, True, False]])
    with torch.no_grad():
        tokens = mean.norm(_layer_by_hand(mean.layers[0], x, mask, torch.arange(3).expand(2, 3)))
        torch.testing.assert_close(mean(x, mask), torch.stack([tokens[0].mean(0), tokens[1, :2].mean(0)]))


def test_transformer_defaults_one_layer_four_heads_width_64_class_token_of_sd_0_02() -> None:
    from mri_slice_transfer.networks.aggregation import TransformerAggregation

    torch.manual_seed(0)
    agg = TransformerAggregation(400)
    layer = agg.layers[0]
    assert (len(agg.layers), layer.heads, layer.ff[0].out_features, agg.readout) == (1, 4, 64, "cls")
    assert not layer.rotary and agg.cls.shape == (400,)
    assert agg.cls.std().item() == pytest.approx(0.02, rel=0.15)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"layers": 0}, "transformer_layers must be a positive int, not 0"),
        ({"heads": True}, "transformer_heads must be a positive int, not True"),
        ({"width": 2.0}, "transformer_width must be a positive int, not 2.0"),
        ({"heads": 4}, "transformer_heads must give a divisor of 6, not 4"),
        (
            {"heads": 2, "rotary": True},
            "transformer_heads must give an even number of dims per head for rotary, not 2",
        ),
        ({"readout": 3}, "unknown transformer_readout 3; choose one of cls, mean"),
        ({"rotary": 1}, "transformer_rotary must be True or False, not 1"),
    ],
)
def test_transformer_settings_are_refused_with_the_setting_and_the_rule(kwargs: dict, message: str) -> None:
    from mri_slice_transfer.networks.aggregation import TransformerAggregation

    with pytest.raises(ValueError) as err:
        TransformerAggregation(6, **{"heads": 1, **kwargs})
    assert str(err.value) == message


def test_aggregation_checks_name_the_rule_and_the_choices() -> None:
    from mri_slice_transfer.networks.aggregation import AttentionAggregation, build_aggregation

    for heads in (3, 0):
        with pytest.raises(ValueError) as err:
            AttentionAggregation(4, num_heads=heads)
        assert str(err.value) == f"attention heads must divide the embedding size 4, not {heads}"
    with pytest.raises(ValueError) as err:
        build_aggregation("transformer", 8, transformer_depth=2)
    assert str(err.value) == (
        "unknown transformer setting(s) ['transformer_depth']; choose from transformer_layers, "
        "transformer_heads, transformer_width, transformer_readout, transformer_rotary"
    )
    with pytest.raises(ValueError) as err:
        build_aggregation("mean", 8, transformer_layers=2, transformer_rotary=True)
    assert str(err.value) == (
        "transformer_layers, transformer_rotary apply to aggregation 'transformer' only, not 'mean'"
    )


def test_old_attention_weights_are_refused_with_the_whole_reason() -> None:
    from mri_slice_transfer.networks.aggregation import AttentionAggregation

    att = AttentionAggregation(4)
    old = {**att.state_dict(), "ff.weight": torch.zeros(4, 4)}
    with pytest.raises(RuntimeError) as err:
        att.load_state_dict(old)
    assert str(err.value) == (
        "these weights hold the earlier attention block of mri_slice_transfer (bundles up to 0.6.0: "
        "LayerNorm, then a residual ReLU feed-forward layer 'ff'); aggregation 'attention' is now "
        "the paper's PooledAttention (LayerNorm, then a linear 'out' layer), so they cannot be "
        "loaded: retrain the model with this version"
    )


def test_rotary_encoding_keeps_the_input_precision_and_uses_base_10000_at_far_positions() -> None:
    """bf16 in, bf16 out (as the sinusoidal table); at slice 1000 and 3000 the angles p * 10000^(-2i/c)
    are large enough that a base of 10001 would show (5e-4 rad)."""
    from mri_slice_transfer.networks.aggregation import rotate

    x = torch.randn(1, 1, 2, 4, generator=torch.Generator().manual_seed(1))
    assert rotate(x.to(torch.bfloat16), torch.tensor([[0, 1]])).dtype == torch.bfloat16
    out = rotate(x, torch.tensor([[1000, 3000]]))
    for t, p in enumerate((1000, 3000)):
        angle = p * 10000.0 ** (-2 / 4)  # the second pair (i = 1)
        a, b = x[0, 0, t, 2].item(), x[0, 0, t, 3].item()
        expected = (a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle))
        assert out[0, 0, t, 2:].tolist() == pytest.approx(expected, abs=2e-5)
