"""Aggregations (issue 22): the paper's attention block and its checkpoints, the transformer with a
padding mask, slice-count augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from mri_slice_transfer.engine.checkpoint import WeightFileError, WeightsLoader
from mri_slice_transfer.networks import SliceSetNet
from mri_slice_transfer.networks.aggregation import AttentionAggregation, TransformerAggregation
from mri_slice_transfer.networks.paper_import import PaperImportError, load_paper_state_dict

# --- a small re-implementation of the paper's MRI2DSlice (umgupta/2d-slice-set-networks), written
# from its src/arch/slice_cnn_utils.py and brain_age_slice_set.py, for any number of slices K.


class _PaperPooledAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.S = nn.Parameter(torch.zeros(1, dim))
        nn.init.xavier_uniform_(self.S)
        self.fc_k, self.fc_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dim_v, self.num_heads = dim, num_heads
        self.ln0 = nn.LayerNorm(dim)
        self.fc_o = nn.Linear(dim, dim)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        B, C, H = X.shape
        Q = self.S.repeat(B, 1, 1)
        K = self.fc_k(X.reshape(-1, H)).reshape(B, C, self.dim_v)
        V = self.fc_v(X.reshape(-1, H)).reshape(B, C, self.dim_v)
        split = self.dim_v // self.num_heads
        Q_, K_, V_ = (torch.cat(t.split(split, 2), 0) for t in (Q, K, V))
        A = torch.softmax(Q_.bmm(K_.transpose(1, 2)) / math.sqrt(split), 2)
        out = torch.cat(A.bmm(V_).split(B, 0), 2)
        return self.fc_o(self.ln0(out))


class _PaperPositionEncoding(nn.Module):
    def __init__(self, dim: int, k: int, slice_dim: int) -> None:
        super().__init__()
        sizes = [1, dim, 1, 1, 1]
        sizes[1 + slice_dim] = k
        self.position_encoding = nn.Parameter(torch.randn(*sizes))
        self.ln = nn.LayerNorm(sizes[1:])
        self.slice_dim, self.k = slice_dim, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [K*B, d, 1, 1], slice-major
        B = x.shape[0] // self.k
        dim = 1 + self.slice_dim
        enc = torch.cat([i.unsqueeze(dim) for i in torch.split(x, B, dim=0)], dim=dim)
        enc = self.ln(enc + self.position_encoding)
        return torch.cat([enc.select(dim, i) for i in range(self.k)], dim=0)


class _PaperModel(nn.Module):
    """``encoder_2d``: ResNet-18 (``encoder_2d.encoder_2d`` + ``post_proc``) or ``encoder1``."""

    def __init__(self, encoder: str, agg: str, k: int, slice_dim: int, use_pe: bool, heads: int = 1) -> None:
        super().__init__()
        d = 32
        self.encoder_2d = nn.Module()
        if encoder == "resnet18":
            net = torchvision.models.resnet18(weights=None)
            del net.fc
            self.encoder_2d.encoder_2d = net
            self.encoder_2d.post_proc = nn.Sequential(nn.Linear(512, d))
            pe_dim = d
        else:
            chans = [1, 32, 64, 128, 256, 256]
            self.encoder_2d.encoder_2d = nn.Sequential(
                *[
                    nn.Sequential(
                        nn.Conv2d(chans[i], chans[i + 1], 3, padding=1),
                        nn.InstanceNorm2d(chans[i + 1]),
                        nn.MaxPool2d(2, stride=2),
                        nn.ReLU(),
                    )
                    for i in range(5)
                ]
            )
            self.encoder_2d.post_proc_conv = nn.Sequential(
                nn.Conv2d(256, 64, 1), nn.InstanceNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
            )
            self.encoder_2d.post_position_encoding = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, d, 1))
            pe_dim = 64
        self.encoder_2d.position_encoder = (
            _PaperPositionEncoding(pe_dim, k, slice_dim) if use_pe else nn.Identity()
        )
        self.pooled_attention = _PaperPooledAttention(d, heads) if agg == "attention" else None
        self.agg, self.kind, self.slice_dim = agg, encoder, slice_dim
        self.attn_post = nn.Linear(d, 64)
        self.regressor = nn.Sequential(nn.ReLU(), nn.Linear(64, 1))

    def encode_slices(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, H, W] -> [N, d, 1, 1]
        e = self.encoder_2d
        if self.kind == "resnet18":
            r = e.encoder_2d
            x = torch.cat([x, x, x], dim=1)
            x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
            x = r.avgpool(r.layer4(r.layer3(r.layer2(r.layer1(x))))).squeeze(3).squeeze(2)
            return e.position_encoder(e.post_proc(x).unsqueeze(2).unsqueeze(3))
        return e.post_position_encoding(e.position_encoder(e.post_proc_conv(e.encoder_2d(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x = x.squeeze(1)
        k = x.shape[self.slice_dim]
        if self.slice_dim == 1:
            slices = torch.cat([x[:, (i,), :, :] for i in range(k)], dim=0)
        elif self.slice_dim == 2:
            slices = torch.swapaxes(torch.cat([x[:, :, (i,), :] for i in range(k)], dim=0), 1, 2)
        else:
            slices = torch.cat([x[:, :, :, (i,)] for i in range(k)], dim=0)
            slices = torch.swapaxes(torch.swapaxes(slices, 1, 3), 2, 3)
        enc = self.encode_slices(slices).squeeze(3).squeeze(2)  # [K*B, d]
        enc = torch.stack(torch.split(enc, B, dim=0), dim=1)  # [B, K, d]
        if self.agg == "attention":
            pooled = self.pooled_attention(enc).squeeze(1)
        else:
            pooled = enc.mean(dim=1) if self.agg == "mean" else enc.max(dim=1)[0]
        return self.regressor(self.attn_post(pooled))


def _randomise(model: nn.Module) -> nn.Module:
    """Random values also for LayerNorm / BatchNorm affines and running statistics, so nothing hides."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else 0.2 * torch.randn_like(t))
    return model.eval()


@pytest.mark.parametrize(
    "encoder,agg,slice_dim,use_pe,size",
    [
        ("resnet18", "attention", 1, True, (5, 32, 24)),  # sagittal, the ISBI 2023 transfer model
        ("cnn5", "max", 3, False, (64, 64, 3)),  # axial
        ("cnn5", "attention", 2, True, (64, 3, 64)),  # coronal; 64 x 64 slices: pooling as the paper's
        ("cnn5", "attention", 3, False, (64, 64, 3)),  # 2 heads (main.py's default attn_num_heads)
    ],
)
def test_a_paper_checkpoint_imports_to_the_same_function(
    encoder: str, agg: str, slice_dim: int, use_pe: bool, size: tuple, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    heads = 2 if (agg, use_pe, slice_dim) == ("attention", False, 3) else 1
    k = size[slice_dim - 1]
    paper = _randomise(_PaperModel(encoder, agg, k=k, slice_dim=slice_dim, use_pe=use_pe, heads=heads))
    path = tmp_path / "best.pt"  # the paper's trainer saves {"model": state_dict, "optimizer": ..., ...}
    torch.save({"model": {f"module.{k}": v for k, v in paper.state_dict().items()}, "epoch": 7}, path)
    axis = ("sagittal", "coronal", "axial")[slice_dim - 1]
    ours = load_paper_state_dict(
        path, axis=None if use_pe else axis, aggregation=agg, spatial_size=size, attention_heads=heads
    )
    assert (ours.encoder_name, ours.axis, ours.aggregation_name) == (encoder, axis, agg)
    assert ours.position_encoding_name == ("learned" if use_pe else "none") and not ours.training
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), paper(x), rtol=1e-4, atol=1e-5)
    # the state dict itself works too
    same = load_paper_state_dict(
        paper.state_dict(), axis=axis, aggregation=agg, spatial_size=size, attention_heads=heads
    )
    with torch.no_grad():
        torch.testing.assert_close(same(x), ours(x), rtol=0, atol=0)
    if heads > 1:  # the file does not store the heads: a wrong count is another function
        one_head = load_paper_state_dict(paper.state_dict(), axis=axis, aggregation=agg, spatial_size=size)
        assert (ours.aggregate.num_heads, one_head.aggregate.num_heads) == (2, 1)
        e = 3 * torch.randn(2, 5, 32)
        with torch.no_grad():
            assert not torch.allclose(one_head.aggregate(e), ours.aggregate(e), rtol=1e-3, atol=1e-3)


def test_the_paper_importer_names_what_does_not_fit(tmp_path: Path) -> None:
    paper = _PaperModel("resnet18", "mean", k=4, slice_dim=3, use_pe=False)
    with pytest.raises(PaperImportError, match=r"do not say the axis: pass axis="):
        load_paper_state_dict(paper.state_dict(), aggregation="mean", spatial_size=(8, 8, 4))
    with pytest.raises(PaperImportError, match=r"do not say the aggregation"):
        load_paper_state_dict(paper.state_dict(), axis="axial", spatial_size=(8, 8, 4))
    with_pe = _PaperModel("resnet18", "attention", k=4, slice_dim=3, use_pe=True)
    with pytest.raises(PaperImportError, match=r"weights say axis 'axial', not 'sagittal'"):
        load_paper_state_dict(with_pe.state_dict(), axis="sagittal", spatial_size=(8, 8, 4))
    with pytest.raises(
        PaperImportError, match=r"position_encoding: shape \[4, 32\] does not fit position\.p \[6, 32\]"
    ):
        load_paper_state_dict(with_pe.state_dict(), spatial_size=(8, 8, 6))
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PaperImportError, match=r"x\.pt: cannot be read as a weights-only PyTorch file"):
        load_paper_state_dict(bad, axis="axial", aggregation="mean")


def test_attention_is_the_papers_block_with_several_heads() -> None:
    """Two heads: each a contiguous half of the features, scale 1/sqrt(d/heads), as the paper splits."""
    torch.manual_seed(0)
    paper = _randomise(_PaperPooledAttention(8, 2))
    ours = AttentionAggregation(8, num_heads=2)
    state = {
        k.replace("fc_k", "key").replace("fc_v", "value").replace("ln0", "norm"): v
        for k, v in paper.state_dict().items()
    }
    state = {k.replace("fc_o", "out"): v for k, v in state.items() if k != "S"}
    ours.load_state_dict({**state, "query": paper.S.detach().reshape(-1)})
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(ours(x), paper(x).squeeze(1))
    assert ours.last_weights.shape == (3, 5)


def test_weights_of_the_old_attention_block_are_refused_with_the_reason(tmp_path: Path) -> None:
    net = SliceSetNet("cnn5", "axial", "attention", spatial_size=(8, 9, 6))
    state = net.state_dict()
    old = {k: v for k, v in state.items() if not k.startswith("aggregate.out.")}
    old["aggregate.ff.weight"], old["aggregate.ff.bias"] = (
        state["aggregate.out.weight"],
        state["aggregate.out.bias"],
    )
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    torch.save(old, path)
    with pytest.raises(
        WeightFileError,
        match=r"model\.pt: does not fit .*earlier attention block of .* \(bundles up to 0\.6\.0",
    ):
        WeightsLoader(str(path), net)()


# --- slice-count augmentation (issue 22 item 4)

SMALL = (8, 9, 6)  # cnn5 on an axial stack of K = 6 slices


def _count_encoded(model: SliceSetNet) -> list[int]:
    """Record the number of slices each forward pass encodes."""
    seen: list[int] = []
    encode = model.encode_slices
    model.encode_slices = lambda s: seen.append(s.shape[0]) or encode(s)  # type: ignore[method-assign]
    return seen


def test_slice_keep_off_draws_no_random_numbers() -> None:
    """The default model's training forward pass consumes no random numbers for slice selection."""
    torch.manual_seed(0)
    model = SliceSetNet("resnet18", "axial", "mean", spatial_size=(16, 16, 5)).train()
    assert model.kept_slices(2) is None
    x = torch.randn(2, 1, 16, 16, 5)
    before = torch.get_rng_state()
    model(x)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("style", ["random", "crop"])
def test_slice_keep_trains_on_a_subset_and_evaluates_on_every_slice(style: str) -> None:
    torch.manual_seed(0)
    model = SliceSetNet(
        "cnn5", "axial", "transformer", spatial_size=SMALL, slice_keep=0.5, slice_keep_style=style
    )
    seen = _count_encoded(model)
    x = torch.randn(2, 1, *SMALL)
    model.train()(x)
    model.eval()(x)
    assert seen == [2 * 3, 2 * 6]  # round(0.5 * 6) = 3 slices per scan in training, all 6 at evaluation
    model.train()
    torch.manual_seed(5)
    first = model.kept_slices(50)
    torch.manual_seed(5)
    assert torch.equal(model.kept_slices(50), first)  # a seeded run repeats
    assert first.shape == (50, 3) and (first.diff(dim=1) > 0).all() and first.max() < 6
    if style == "crop":
        assert (first.diff(dim=1) == 1).all()
    else:
        assert (first.diff(dim=1) > 1).any()  # not only contiguous runs
    assert len({tuple(r) for r in first.tolist()}) > 2


def test_a_subset_of_every_slice_is_the_full_positional_encoding() -> None:
    """The learned encoding's subset / masked LayerNorm equals the full one when nothing is left out."""
    torch.manual_seed(0)
    model = SliceSetNet("cnn5", "axial", "mean", "learned", spatial_size=SMALL)
    with torch.no_grad():
        model.position.norm.weight.normal_()
        model.position.norm.bias.normal_()
    feats = torch.randn(3, 6, 64)
    full = model.position(feats)
    every = torch.arange(6).expand(3, 6)
    torch.testing.assert_close(model.position(feats, every), full)
    torch.testing.assert_close(model.position(feats, None, torch.ones(3, 6, dtype=torch.bool)), full)
    reversed_ = every.flip(1)  # positions pick the rows of p and of the LayerNorm affine
    torch.testing.assert_close(model.position(feats.flip(1), reversed_), full.flip(1))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"slice_keep": 0}, r"slice_keep must be a fraction in \(0, 1\], not 0"),
        ({"slice_keep": 1.5}, r"slice_keep must be a fraction in \(0, 1\], not 1\.5"),
        ({"slice_keep": True}, r"slice_keep must be a fraction"),
        ({"slice_keep_style": "block"}, r"slice_keep_style 'block'; choose one of random, crop"),
    ],
)
def test_slice_keep_options_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SliceSetNet("cnn5", "axial", spatial_size=SMALL, **kwargs)


# --- the transformer and the padding mask (issue 22 item 1)


@pytest.mark.parametrize(
    "kind,options",
    [
        ("mean", {}),
        ("max", {}),
        ("attention", {}),
        ("transformer", {}),
        ("transformer", {"transformer_readout": "mean", "transformer_rotary": True, "transformer_layers": 2}),
    ],
)
def test_padded_slices_change_no_aggregation(kind: str, options: dict) -> None:
    """A scan of 4 slices: alone, or padded to 7 (any padding values) in a batch with a 7-slice scan."""
    from mri_slice_transfer.networks.aggregation import build_aggregation

    torch.manual_seed(0)
    agg = _randomise(build_aggregation(kind, 8, **options))
    short, long_ = torch.randn(1, 4, 8), torch.randn(1, 7, 8)
    batch = torch.cat((long_, torch.cat((short, 100 * torch.randn(1, 3, 8)), dim=1)))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    together = agg(batch, mask)
    torch.testing.assert_close(together[0], agg(long_)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[1], agg(short)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position_encoding", ["none", "learned", "sinusoidal"])
def test_a_transformer_model_gives_a_scan_the_same_output_alone_or_with_a_shorter_scan(
    position_encoding: str,
) -> None:
    """Acceptance (issue 22): scans with different slice counts batch together with ``slice_mask``."""
    torch.manual_seed(0)
    model = SliceSetNet("cnn5", "axial", "transformer", position_encoding, spatial_size=SMALL).eval()
    full, short = torch.randn(1, 1, *SMALL), torch.randn(1, 1, *SMALL)
    short[..., 4:] = 0  # a scan of 4 slices, zero-padded to 6
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        together = model(torch.cat((full, short)), slice_mask=mask)
        alone = model(full)
        short_alone = model(short, slice_mask=mask[1:])
        other_padding = short.clone()
        other_padding[..., 4:] = torch.randn(1, 1, 8, 9, 2)
        short_other = model(other_padding, slice_mask=mask[1:])
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[1], short_alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(short_other, short_alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"slice_mask must be a bool tensor of shape \[2, 6\]"):
        model(torch.cat((full, short)), slice_mask=mask.float())
    with pytest.raises(ValueError, match="at least one real slice"):
        model(short, slice_mask=torch.zeros(1, 6, dtype=torch.bool))


def test_transformer_options_are_checked_and_small() -> None:
    net = SliceSetNet("cnn5", "axial", "transformer", spatial_size=SMALL)
    agg = net.aggregate
    assert isinstance(agg, TransformerAggregation) and len(agg.layers) == 1 and agg.cls is not None
    assert sum(p.numel() for p in agg.parameters()) < 10_000
    with pytest.raises(ValueError, match=r"transformer_heads must give a divisor of 32, not 5"):
        SliceSetNet("cnn5", "axial", "transformer", spatial_size=SMALL, transformer_heads=5)
    with pytest.raises(ValueError, match=r"transformer_layers apply to aggregation 'transformer' only"):
        SliceSetNet("cnn5", "axial", "mean", spatial_size=SMALL, transformer_layers=2)
    with pytest.raises(ValueError, match=r"unknown transformer_readout 'first'"):
        SliceSetNet("cnn5", "axial", "transformer", spatial_size=SMALL, transformer_readout="first")


def test_rotary_positions_make_the_transformer_see_slice_order() -> None:
    torch.manual_seed(0)
    plain = TransformerAggregation(8, heads=2, readout="cls")
    rotary = TransformerAggregation(8, heads=2, readout="cls", rotary=True)
    rotary.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x.flip(1)), plain(x), rtol=1e-5, atol=1e-6)  # a set function
        assert not torch.allclose(rotary(x.flip(1)), rotary(x), atol=1e-4)


def test_leave_one_slice_out_keeps_the_other_slices_positions() -> None:
    """interpret's slice importance masks slice j, so a rotary transformer sees the others where they are."""
    from mri_slice_transfer.interpret.slices import slice_importance

    torch.manual_seed(0)
    net = SliceSetNet("cnn5", "axial", "transformer", spatial_size=SMALL, transformer_rotary=True).eval()
    x = torch.randn(1, 1, *SMALL)
    result = slice_importance(net, x)
    with torch.no_grad():
        emb = net.embed(x)
        full = net.head(net.aggregate(emb))[0, 0]
        others = torch.tensor([[0, 1, 3, 4, 5]])
        without_2 = net.head(net.aggregate(emb[:, others[0]], positions=others))[0, 0]
    assert result.importance[2] == pytest.approx(float(full - without_2), abs=1e-5)
