"""Issue 22 item 3: any torchvision classification model (and timm, optional) as the slice encoder.

For one representative of each family: the parameter count is torchvision's model minus its
classification layer (derived here, not hard-coded), a weights file made in the test loads every
encoder tensor, and a forward pass takes a [1, 1, 91, 109, 91] batch. Nothing is downloaded (conftest
points TORCH_HOME at a temporary folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from mri_slice_transfer.networks import build_model, pretrained, registry
from mri_slice_transfer.networks.encoders import fold_conv1_weight
from mri_slice_transfer.vocabulary import Encoder

MNI = (91, 109, 91)
#: One cheap representative per torchvision family (resnet: the built-in resnet18).
FAMILIES = (
    "resnet18",
    "convnext_tiny",
    "efficientnet_b0",
    "regnet_y_400mf",
    "vit_b_16",  # the swin / vit family; its slices are resized to 224 x 224
    "mobilenet_v3_small",
    "densenet121",
)
HAS_TIMM = importlib.util.find_spec("timm") is not None


def _head(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _reference(name: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None)


@pytest.mark.parametrize("name", FAMILIES)
def test_parameters_weights_file_and_an_mni_forward(name, tmp_path):
    """Parameters = torchvision's minus the head; a file loads every tensor; a 91 x 109 x 91 batch runs
    (3 of its 91 slices, slice_keep in training mode, to stay fast)."""
    ref = _reference(name)
    head = _head(ref)
    stem = next(m for m in ref.modules() if isinstance(m, nn.Conv2d))
    # the folded stem keeps a third of the RGB kernel's weights
    expected = sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in head.parameters())
    expected -= stem.weight.numel() * 2 // 3
    path = tmp_path / f"{name}.pt"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)  # a wrapper prefix
    net = build_model(name, spatial_size=MNI, pretrained=path, slice_keep=3 / 91)
    encoder = net.encoder
    assert sum(p.numel() for p in encoder.parameters()) == expected
    assert encoder.out_features == head.in_features and net.pre_embed.in_features == head.in_features
    assert net.encoder_init == f"file:{path}"  # complete load (a partial one says "partial")
    ref_state = ref.state_dict()
    for key, value in encoder.backbone.state_dict().items():
        want = ref_state[key]
        if value.shape != want.shape:  # the first conv, folded
            want = fold_conv1_weight(want)
        assert torch.equal(value, want), key
    assert getattr(net.encoder, "image_size", None) == (224 if name == "vit_b_16" else None)
    with torch.no_grad():
        out = net.train()(torch.randn(1, 1, *MNI))
    assert out.shape == (1, 1) and torch.isfinite(out).all()


def test_regnet_forward_on_a_whole_mni_scan():
    """One true 91 x 109 x 91 forward (every slice) with a cheap family."""
    net = build_model("regnet_y_400mf", spatial_size=MNI).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, *MNI))
    assert out.shape == (1, 1) and torch.isfinite(out).all()


def test_repeat_mode_is_the_same_function_as_fold():
    x = torch.randn(1, 1, 6, 36, 36)
    torch.manual_seed(3)
    fold = build_model("mobilenet_v3_small", spatial_size=x.shape[2:], axis="sagittal").eval()
    torch.manual_seed(3)
    repeat = build_model(
        "mobilenet_v3_small", spatial_size=x.shape[2:], axis="sagittal", in_channels_mode="repeat"
    ).eval()
    with torch.no_grad():
        assert torch.allclose(fold(x), repeat(x), atol=1e-5)


def test_imagenet_weights_come_from_the_torch_home_cache_under_torchvisions_file_name(tmp_path, monkeypatch):
    name = "mobilenet_v3_small"
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    assert pretrained.imagenet_weights_file(name) == Path(
        os.environ["TORCH_HOME"]
    ) / "hub" / "checkpoints" / (os.path.basename(url))
    # the built-in ResNets keep IMAGENET1K_V1 (resnet50's DEFAULT is V2)
    assert pretrained.imagenet_weights("resnet50").url.endswith("resnet50-0676ba61.pth")
    state = _reference(name).state_dict()
    raw = tmp_path / "raw.pt"
    torch.save(state, raw)
    cached = tmp_path / f"{name}-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(cached)
    monkeypatch.setattr(pretrained, "imagenet_weights_file", lambda arch: cached)
    net = build_model(name, spatial_size=(6, 36, 36), axis="sagittal", pretrained="auto")
    assert net.encoder_init == "imagenet"
    assert torch.equal(
        net.encoder.backbone.features[1].block[0][0].weight, state["features.1.block.0.0.weight"]
    )


def test_unknown_names_get_a_did_you_mean_and_builtin_names_stay_enum_members():
    with pytest.raises(ValueError, match=r"not 'convnext_tiyn'.*did you mean 'convnext_tiny'"):
        build_model("convnext_tiyn")
    assert registry.encoder_name("ResNet18") is Encoder.RESNET18
    assert registry.encoder_name("3D-CNN") is Encoder.CONV3D
    assert registry.encoder_name("ConvNeXt_Tiny") == "convnext_tiny"
    assert registry.has_pretrained_weights("efficientnet_b0") and not registry.has_pretrained_weights("cnn5")


def test_builtin_encoders_keep_their_parameters_and_keys():
    """cnn5 / ResNets are built as before (existing checkpoints keep loading)."""
    net = build_model("resnet18", spatial_size=(8, 16, 16), axis="sagittal")
    assert "encoder.backbone.conv1.weight" in net.state_dict() and net.encoder.backbone.conv1.in_channels == 1
    assert type(net.encoder).__name__ == "ResNetEncoder"


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed (optional extra 'timm')")
def test_timm_dinov2_small_parameters_weights_and_forward(tmp_path):
    import timm

    model = "vit_small_patch14_dinov2"
    torch.manual_seed(0)
    ref = timm.create_model(model, pretrained=False, num_classes=0)
    stem = ref.patch_embed.proj.weight
    path = tmp_path / "dinov2_s.pt"
    torch.save({**ref.state_dict(), "head.weight": torch.zeros(2, 384)}, path)
    net = build_model(f"timm:{model}", spatial_size=(1, 20, 20), axis="sagittal", pretrained=path).eval()
    n_ref = sum(p.numel() for p in ref.parameters()) - stem.numel() * 2 // 3
    assert sum(p.numel() for p in net.encoder.parameters()) == n_ref and net.encoder.out_features == 384
    assert net.encoder_init == f"file:{path}"
    assert torch.equal(net.encoder.backbone.patch_embed.proj.weight, fold_conv1_weight(stem))
    with torch.no_grad():
        out = net(torch.randn(1, 1, 1, 20, 20))  # one slice, resized to DINOv2's 518 x 518
    assert out.shape == (1, 1) and torch.isfinite(out).all()


def test_timm_missing_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("no timm")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"mri_slice_transfer\[timm\]"):
        build_model("timm:resnet18", spatial_size=(3, 16, 16), axis="sagittal")


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed (optional extra 'timm')")
def test_timm_pretrained_reads_the_cache_only(caplog):
    """No download: with an empty cache, True is an error naming the cache and "auto" falls back."""
    with pytest.raises(RuntimeError, match="not in the local Hugging Face / timm cache"):
        build_model("timm:resnet10t", spatial_size=(1, 32, 32), axis="sagittal", pretrained=True)
    net = build_model("timm:resnet10t", spatial_size=(1, 32, 32), axis="sagittal", pretrained="auto")
    assert net.encoder_init == pretrained.IMAGENET_FALLBACK
