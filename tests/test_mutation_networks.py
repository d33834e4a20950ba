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
