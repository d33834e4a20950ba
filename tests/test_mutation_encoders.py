"""Fast tests of the encoders' first-conv folding (networks/encoders.py): ``fold_conv1_weight``,
``repeat_conv1_weight``, the stem search and fold of torchvision models, ``convert_in_channels_mode``'s key
rules, the ResNet encoder's two input modes and ``min_pool_max``, checked on tiny tensors and models, so
that mutation testing of these functions (scripts/mutation.sh) runs in minutes (docs/testing.md).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mri_slice_transfer.networks import encoders as enc
from mri_slice_transfer.networks.encoders import (
    ResNetEncoder,
    convert_in_channels_mode,
    fold_conv1_weight,
    min_pool_max,
    repeat_conv1_weight,
)


def _weight(out: int, channels: int) -> torch.Tensor:
    return torch.arange(out * channels * 2 * 2, dtype=torch.float64).reshape(out, channels, 2, 2)


def test_fold_sums_the_rgb_kernel_over_its_input_channels() -> None:
    """[O, 3, kh, kw] -> [O, 1, kh, kw]: w_r + w_g + w_b at every tap (a 1-channel slice sees all three)."""
    w = _weight(2, 3)
    folded = fold_conv1_weight(w)
    assert folded.shape == (2, 1, 2, 2)
    torch.testing.assert_close(folded[:, 0], w[:, 0] + w[:, 1] + w[:, 2], rtol=0, atol=0)


def test_repeat_spreads_a_one_channel_kernel_evenly_and_undoes_the_fold() -> None:
    """[O, 1, kh, kw] -> [O, C, kh, kw], w / C in every channel (C = 3 by default); fold(repeat(w)) = w."""
    w = _weight(2, 1)
    rgb = repeat_conv1_weight(w)
    assert rgb.shape == (2, 3, 2, 2)
    for c in range(3):
        torch.testing.assert_close(rgb[:, c], w[:, 0] / 3, rtol=0, atol=1e-15)
    two = repeat_conv1_weight(w, channels=2)
    assert two.shape == (2, 2, 2, 2)
    torch.testing.assert_close(two[:, 1], w[:, 0] / 2, rtol=0, atol=0)
    torch.testing.assert_close(fold_conv1_weight(rgb), w, rtol=0, atol=1e-12)


def test_convert_changes_only_resnet_stems_and_copies_the_rest() -> None:
    """Only ``conv1.weight`` and ``*backbone.conv1.weight`` (4-D, the right channel count) change; a block's
    ``layer1.0.conv1.weight`` and every other entry stay the same tensors; the input dict is not changed."""
    rgb, gray = _weight(2, 3), _weight(2, 1)
    block = torch.randn(4, 3, 3, 3)  # a ResNet block's conv1: not the stem, even with 3 input channels
    state = {  # other entries before, between and after the stems (a model's state dict is in module order)
        "head.weight": torch.ones(1, 4),
        "encoder.backbone.conv1.weight": rgb,
        "encoder.backbone.layer1.0.conv1.weight": block,
        "encoder.backbone.conv1.bias": torch.ones(2),
        "conv1.weight": rgb,
    }
    folded = convert_in_channels_mode(state, "fold")
    assert folded.keys() == state.keys() and state["conv1.weight"] is rgb  # input untouched
    torch.testing.assert_close(folded["encoder.backbone.conv1.weight"], fold_conv1_weight(rgb))
    torch.testing.assert_close(folded["conv1.weight"], fold_conv1_weight(rgb))
    for key in ("encoder.backbone.layer1.0.conv1.weight", "encoder.backbone.conv1.bias", "head.weight"):
        assert folded[key] is state[key]
    assert convert_in_channels_mode({"conv1.weight": gray}, "fold")["conv1.weight"] is gray  # already folded
    back = convert_in_channels_mode({"x.backbone.conv1.weight": gray, "conv1.weight": rgb}, "repeat")
    torch.testing.assert_close(back["x.backbone.conv1.weight"], repeat_conv1_weight(gray))
    assert back["conv1.weight"] is rgb  # already 3 channels
    with pytest.raises(ValueError, match=r"unknown in_channels_mode 'sum'; choose one of fold, repeat"):
        convert_in_channels_mode(state, "sum")


def test_first_conv_is_the_first_plain_three_channel_conv_and_is_folded_in_place() -> None:
    """A depthwise 3-channel conv or a 1-channel conv is not the stem; the fold keeps the module (same seeded
    function) with a 1-channel weight equal to the RGB kernel's channel sum."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 1),
        nn.Sequential(nn.Conv2d(3, 3, 3, groups=3), nn.Conv2d(3, 4, 3)),
        nn.Conv2d(3, 2, 1),
    )
    assert enc._first_conv_key(model) == "1.1.weight"
    stem = model[1][1]
    rgb = stem.weight.detach().clone()
    enc._fold_first_conv(model)
    assert model[1][1] is stem and stem.in_channels == 1 and isinstance(stem.weight, nn.Parameter)
    torch.testing.assert_close(stem.weight, fold_conv1_weight(rgb), rtol=0, atol=0)
    assert model[2].in_channels == 3 and model[2].weight.shape[1] == 3  # only the first one
    plain = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Linear(2, 2))
    assert enc._first_conv_key(plain) is None
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    enc._fold_first_conv(plain)  # nothing to fold: unchanged
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_resnet_fold_and_repeat_start_as_the_same_seeded_function() -> None:
    """fold (default): a 1-channel conv1 holding the channel sum of the seeded RGB kernel; repeat: the RGB
    conv1 on 3 copies of the slice; both give the 512 pooled features of each slice, no classifier."""
    torch.manual_seed(3)
    repeat = ResNetEncoder("resnet18", in_channels_mode="repeat").eval()
    torch.manual_seed(3)
    fold = ResNetEncoder().eval()
    assert (fold.arch, fold.in_channels_mode, fold.out_features) == ("resnet18", "fold", 512)
    assert (repeat.in_channels_mode, repeat.backbone.conv1.in_channels) == ("repeat", 3)
    assert fold.backbone.conv1.in_channels == 1 and isinstance(fold.backbone.fc, nn.Identity)
    torch.testing.assert_close(
        fold.backbone.conv1.weight, fold_conv1_weight(repeat.backbone.conv1.weight), rtol=0, atol=0
    )
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = fold(x)
        torch.testing.assert_close(out, repeat(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 512)
    with pytest.raises(ValueError, match=r"unknown ResNet 'resnet9'; choose one of resnet18, resnet34"):
        ResNetEncoder("resnet9")
    with pytest.raises(ValueError, match=r"unknown in_channels_mode 'sum'; choose one of fold, repeat"):
        ResNetEncoder("resnet18", in_channels_mode="sum")


@pytest.mark.parametrize("dims", [2, 3])
def test_min_pool_max_halves_sides_of_four_or_more_and_keeps_smaller_ones(dims: int) -> None:
    """Kernel 2 along a side >= 4 voxels, 1 along a shorter one; all sides < 4: the input itself."""
    shape = (1, 2, 4, 3) if dims == 2 else (1, 2, 3, 5, 4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(dims))
    out = min_pool_max(x, dims)
    if dims == 2:
        assert out.shape == (1, 2, 2, 3)
        torch.testing.assert_close(out, torch.maximum(x[:, :, 0::2], x[:, :, 1::2]), rtol=0, atol=0)
    else:
        assert out.shape == (1, 2, 3, 2, 2)
        pairs = torch.maximum(x[..., :4, :][..., 0::2, :], x[..., :4, :][..., 1::2, :])
        torch.testing.assert_close(out, torch.maximum(pairs[..., 0::2], pairs[..., 1::2]), rtol=0, atol=0)
    small = torch.randn(1, 1, 3, 2, 3)
    flat = small[0]  # [1, 3, 2, 3]: its two last sides are < 4 as well
    assert min_pool_max(small, 3) is small and min_pool_max(flat, 2) is flat
    bf16 = torch.randn(1, 1, 4, 4, 4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert min_pool_max(bf16, 3).dtype == torch.bfloat16
