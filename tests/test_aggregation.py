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
from mri_slice_transfer.networks.aggregation import AttentionAggregation
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
    ],
)
def test_a_paper_checkpoint_imports_to_the_same_function(
    encoder: str, agg: str, slice_dim: int, use_pe: bool, size: tuple, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    paper = _randomise(_PaperModel(encoder, agg, k=size[slice_dim - 1], slice_dim=slice_dim, use_pe=use_pe))
    path = tmp_path / "best.pt"  # the paper's trainer saves {"model": state_dict, "optimizer": ..., ...}
    torch.save({"model": {f"module.{k}": v for k, v in paper.state_dict().items()}, "epoch": 7}, path)
    axis = ("sagittal", "coronal", "axial")[slice_dim - 1]
    ours = load_paper_state_dict(path, axis=None if use_pe else axis, aggregation=agg, spatial_size=size)
    assert (ours.encoder_name, ours.axis, ours.aggregation_name) == (encoder, axis, agg)
    assert ours.position_encoding_name == ("learned" if use_pe else "none") and not ours.training
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), paper(x), rtol=1e-4, atol=1e-5)
    # the state dict itself works too
    same = load_paper_state_dict(paper.state_dict(), axis=axis, aggregation=agg, spatial_size=size)
    with torch.no_grad():
        torch.testing.assert_close(same(x), ours(x), rtol=0, atol=0)


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
        WeightFileError, match=r"model\.pt: does not fit .*attention block of mri_slice_transfer before 0\.7"
    ):
        WeightsLoader(str(path), net)()
