"""Encoder initialisation: ImageNet through torchvision's cache, "auto" fallback, local state dicts.

No network is used: fake "ImageNet" files (random torchvision state dicts) are written into a
temporary ``$TORCH_HOME/hub/checkpoints`` under the exact file name torchvision expects, and the
download function is replaced by one that fails like an offline machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.hub
import torch.nn as nn
import torchvision

from mri_slice_transfer.networks import (
    IMAGENET,
    IMAGENET_FALLBACK,
    SliceSetNet,
    build_model,
    imagenet_weights_file,
    pretrained,
    remap_encoder_state_dict,
)
from mri_slice_transfer.paths import torch_weights_dir

SMALL = (12, 16, 10)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: single-threaded is faster (especially on a busy 2-core runner)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty TORCH_HOME whose downloads fail as they do offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("offline test: no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch_home"


def _cache_as_torchvision_file(path: Path, monkeypatch: pytest.MonkeyPatch, arch: str = "resnet18") -> Path:
    """Rename ``path`` to ``<arch>-<its sha256 prefix>.pth`` and make it the cached ImageNet file.

    torchvision's file names carry the first 8 hex digits of the file's SHA-256, which the loader
    checks; a fake file needs its own hash in its name.
    """
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    named = path.with_name(f"{arch}-{digest[:8]}.pth")
    path.rename(named)
    real = pretrained.imagenet_weights_file
    monkeypatch.setattr(pretrained, "imagenet_weights_file", lambda a: named if a == arch else real(a))
    return named


@pytest.fixture
def fake_resnet18(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """A random torchvision ResNet-18 state dict stored where torchvision caches ImageNet weights."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = torch_weights_dir() / "resnet18-f37072fd.pth"  # the file name in ResNet18_Weights' URL
    assert path == imagenet_weights_file("resnet18")
    assert str(path).startswith(str(torch_home))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    _cache_as_torchvision_file(path, monkeypatch)
    return state


@pytest.mark.parametrize("mode", ["fold", "repeat"])
def test_imagenet_weights_from_torchvision_cache(fake_resnet18, mode):
    model = SliceSetNet("resnet18", spatial_size=SMALL, pretrained=True, in_channels_mode=mode)
    assert model.encoder_init == IMAGENET
    backbone = model.encoder.backbone
    assert torch.equal(backbone.layer1[0].conv1.weight, fake_resnet18["layer1.0.conv1.weight"])
    assert torch.equal(backbone.layer4[1].bn2.running_var, fake_resnet18["layer4.1.bn2.running_var"])
    conv1 = fake_resnet18["conv1.weight"]
    if mode == "fold":
        torch.testing.assert_close(backbone.conv1.weight, conv1.sum(dim=1, keepdim=True))
    else:
        assert torch.equal(backbone.conv1.weight, conv1)
    assert isinstance(backbone.fc, nn.Identity)


def test_auto_uses_cached_imagenet(fake_resnet18):
    model = build_model("resnet18", spatial_size=SMALL, pretrained="auto")
    assert model.encoder_init == IMAGENET
    assert torch.equal(model.encoder.backbone.layer2[0].conv2.weight, fake_resnet18["layer2.0.conv2.weight"])


def test_true_without_weights_names_file_folder_and_url(torch_home):
    with pytest.raises(RuntimeError) as info:
        SliceSetNet("resnet18", spatial_size=SMALL, pretrained=True)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_auto_without_weights_falls_back_with_warning(torch_home, caplog):
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer"):
        model = build_model("resnet50", spatial_size=SMALL, pretrained="auto")
    assert model.encoder_init == IMAGENET_FALLBACK == "random (ImageNet weights unavailable)"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "resnet50-0676ba61.pth" in warnings[0].getMessage()


def _sequential_checkpoint(state_source: nn.Module) -> dict[str, torch.Tensor]:
    """Keys as saved by a DataParallel-wrapped ``nn.Sequential(*list(resnet.children())[:-1])``."""
    body = nn.Sequential(*list(state_source.children())[:-1])
    return {f"module.{k}": v for k, v in body.state_dict().items()}


@pytest.mark.parametrize("wrap", ["bare", "checkpoint"])
def test_local_state_dict_with_prefixes_and_sequential_indices(torch_home, tmp_path, wrap, caplog):
    torch.manual_seed(7)
    source = torchvision.models.resnet18(weights=None)
    state = _sequential_checkpoint(source)
    assert "module.4.0.conv1.weight" in state and "module.0.weight" in state
    obj = state if wrap == "bare" else {"epoch": 3, "state_dict": state}
    path = tmp_path / "radimagenet_resnet18.pt"
    torch.save(obj, path)
    with caplog.at_level(logging.INFO, logger="mri_slice_transfer"):
        model = build_model("resnet18", spatial_size=SMALL, pretrained=str(path))
    assert model.encoder_init == f"file:{path}"
    backbone = model.encoder.backbone
    assert torch.equal(backbone.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert torch.equal(backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(backbone.bn1.running_mean, source.bn1.running_mean)
    torch.testing.assert_close(backbone.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert "loaded" in caplog.text  # a load report is logged


def test_local_one_channel_conv1_into_repeat_mode(tmp_path):
    torch.manual_seed(3)
    folded = SliceSetNet("resnet18", spatial_size=SMALL, in_channels_mode="fold")
    state = {f"encoder.backbone.{k}": v for k, v in folded.encoder.backbone.state_dict().items()}
    path = tmp_path / "folded.pth"
    torch.save(state, path)
    model = SliceSetNet("resnet18", spatial_size=SMALL, in_channels_mode="repeat", pretrained=Path(path))
    conv1 = model.encoder.backbone.conv1.weight
    assert conv1.shape[1] == 3
    torch.testing.assert_close(conv1.sum(dim=1, keepdim=True), folded.encoder.backbone.conv1.weight)


def test_local_file_without_matching_weights_raises(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"classifier.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="no weight matches"):
        SliceSetNet("resnet18", spatial_size=SMALL, pretrained=path)
    with pytest.raises(FileNotFoundError, match="not found"):
        SliceSetNet("resnet18", spatial_size=SMALL, pretrained=tmp_path / "missing.pt")


def test_cnn5_has_no_pretrained_weights(tmp_path):
    with pytest.raises(ValueError, match="cnn5 has no pretrained weights"):
        SliceSetNet("cnn5", spatial_size=SMALL, pretrained=True)
    with pytest.raises(FileNotFoundError, match="not found"):  # a weights file is accepted (pretrain.json)
        build_model("cnn5", spatial_size=SMALL, pretrained=str(tmp_path / "w.pt"))
    assert SliceSetNet("cnn5", spatial_size=SMALL, pretrained="auto").encoder_init == "scratch"


def test_remap_keys():
    w = torch.zeros(1)
    remapped = remap_encoder_state_dict(
        {
            "module.model.0.weight": w,
            "backbone.1.running_mean": w,
            "encoder.resnet.7.1.conv2.weight": w,
            "fc.weight": w,
            "module.fc.bias": w,
            "layer1.0.bn1.bias": w,
        }
    )
    assert sorted(remapped) == [
        "bn1.running_mean",
        "conv1.weight",
        "layer1.0.bn1.bias",
        "layer4.1.conv2.weight",
    ]


def test_torch_home_is_respected(torch_home):
    assert imagenet_weights_file("resnet34") == torch_home / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert os.environ["TORCH_HOME"] == str(torch_home)


class _WritesMarker:
    """Unpickling this object runs ``open(marker, "w")``: the code-execution probe."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("named", ["as torchvision names it", "with its own hash in the name"])
@pytest.mark.parametrize("spec", [True, "auto"])
def test_malicious_cached_imagenet_file_is_refused_and_not_run(
    torch_home, tmp_path, monkeypatch, spec, named
):
    marker = tmp_path / "marker"
    path = imagenet_weights_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.weight": _WritesMarker(marker)}, path)  # a pickle whose loading writes a file
    if named != "as torchvision names it":  # passes the hash check: weights_only must refuse it
        path = _cache_as_torchvision_file(path, monkeypatch)
    with pytest.raises(RuntimeError) as info:
        build_model("resnet18", spatial_size=SMALL, pretrained=spec)
    assert not marker.exists()
    assert str(path) in str(info.value) and "refused" in str(info.value)
    assert ("SHA-256 must start with 'f37072fd'" in str(info.value)) == (named == "as torchvision names it")


def test_missing_file_message_says_how_a_copied_file_is_verified(torch_home):
    with pytest.raises(RuntimeError, match="copy it to") as info:
        build_model("resnet18", spatial_size=SMALL, pretrained=True)
    assert "SHA-256 must start with 'f37072fd'" in str(info.value) and "weights_only=True" in str(info.value)


def test_download_goes_through_torch_hub_with_the_hash_prefix(torch_home, monkeypatch):
    """A download is hash-checked by torch.hub (temp file, then renamed) and verified again on load."""
    calls = []
    torch.manual_seed(5)
    state = torchvision.models.resnet34(weights=None).state_dict()

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, Path(dst).name, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(RuntimeError, match="SHA-256 must start with 'b627a593'"):  # our fake is not it
        build_model("resnet34", spatial_size=SMALL, pretrained=True)
    assert calls == [(pretrained.imagenet_weights("resnet34").url, "resnet34-b627a593.pth", "b627a593")]


def test_wrong_depth_weights_are_refused_unless_partial_is_allowed(tmp_path, caplog):
    torch.manual_seed(11)
    path = tmp_path / "resnet18_weights.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="refused a partial load: 100/180 encoder tensors match") as info:
        build_model("resnet34", spatial_size=SMALL, pretrained=path)
    assert "missing from the file: 80 ['layer1.2.bn1.bias'" in str(
        info.value
    ) and "pretrained_strict=False" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer"):
        model = build_model("resnet34", spatial_size=SMALL, pretrained=path, pretrained_strict=False)
    assert model.encoder_init == f"file:{path} (partial: 100/180 tensors)"
    assert "100/180 encoder tensors match" in caplog.text
    source = torch.load(path, weights_only=True)
    assert torch.equal(model.encoder.backbone.layer1[1].conv2.weight, source["layer1.1.conv2.weight"])
    # the other way round: ResNet-34 weights hold every ResNet-18 tensor, and more
    with pytest.raises(ValueError, match="not in the ResNet encoder: 80"):
        torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
        build_model("resnet18", spatial_size=SMALL, pretrained=path)
    with pytest.raises(ValueError, match="pretrained_strict must be True or False, not 'false'"):
        build_model("resnet18", spatial_size=SMALL, pretrained=path, pretrained_strict="false")
