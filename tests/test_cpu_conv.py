"""CPU convolution workarounds for bf16 training (``networks.cpu_conv``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mri_slice_transfer.networks import SliceSetNet
from mri_slice_transfer.networks.cpu_conv import conv_weight_grad, use_fast_cpu_convs


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding"),
    [
        ((3, 16, 7, 9), (3, 3), (1, 1), (1, 1)),
        ((3, 16, 7, 9), (3, 3), (2, 2), (1, 1)),  # ResNet downsampling 3x3
        ((3, 16, 7, 9), (1, 1), (2, 2), (0, 0)),  # ResNet 1x1 shortcut
        ((2, 16, 5, 6), (5, 3), (1, 2), (2, 0)),  # uneven kernel, stride and padding
        ((2, 16, 5, 6, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # 3D
        ((2, 16, 7, 6, 5), (3, 3, 3), (2, 1, 2), (0, 1, 1)),
    ],
)
def test_weight_grad_equals_autograd_fp64(shape, kernel, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d if len(shape) == 4 else nn.Conv3d
    layer = conv(shape[1], 8, kernel, stride=stride, padding=padding).double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = layer(x)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, layer.weight, g)
    got = conv_weight_grad(x, g, kernel, stride, padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def _grads(net: nn.Module, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = net(x)
    y.float().square().sum().backward()
    return y.detach().float(), [p.grad.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("encoder", ["resnet18", "conv3d"])
def test_patched_model_computes_the_same_function(encoder):
    torch.manual_seed(0)
    size = (16, 20, 12) if encoder == "resnet18" else (24, 24, 24)
    if encoder == "conv3d":
        from mri_slice_transfer.networks import build_model

        plain = build_model(encoder="conv3d", spatial_size=size)
    else:
        plain = SliceSetNet(encoder=encoder, spatial_size=size)
    patched = copy.deepcopy(plain)
    assert use_fast_cpu_convs(patched) > 0
    assert patched.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 1, *size)

    # fp32: the plain forward and backward, bit for bit
    y0, g0 = _grads(plain, x, autocast=False)
    y1, g1 = _grads(patched, x, autocast=False)
    assert torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))

    # bf16 autocast: as close to the fp32 result as the plain bf16 path (bf16 gradients of a tiny
    # network are rough: 10-50 % relative error per tensor for both paths in a development run)
    _, g_ref = _grads(plain, x, autocast=False)
    y0, g0 = _grads(plain, x, autocast=True)
    y1, g1 = _grads(patched, x, autocast=True)
    torch.testing.assert_close(y1, y0, rtol=0.05, atol=0.05 * float(y0.abs().max()))
    names = [n for n, _ in plain.named_parameters()]
    for name, ref, a, b in zip(names, g_ref, g0, g1, strict=True):
        assert a.dtype == b.dtype == torch.float32  # master weights stay fp32
        if name.endswith("conv.bias") or name == "conv_out.bias":
            continue  # biases before an instance norm: true gradient 0, only rounding left
        plain_err = float((a - ref).norm() / ref.norm())
        patched_err = float((b - ref).norm() / ref.norm())
        assert patched_err <= 1.6 * plain_err + 0.05, (name, plain_err, patched_err)


def test_each_layer_takes_its_path(monkeypatch):
    from mri_slice_transfer.networks import cpu_conv

    calls: list[tuple[int, ...]] = []
    real = cpu_conv.conv_weight_grad
    monkeypatch.setattr(
        cpu_conv, "conv_weight_grad", lambda x, g, *a: calls.append(g.shape) or real(x, g, *a)
    )
    torch.manual_seed(0)
    small = nn.Conv2d(32, 8, 3, padding=1)  # 5 x 5 = 25 output positions: matrix products
    large = nn.Conv2d(32, 8, 3, padding=1)  # 9 x 9 = 81 > MAX_OUT_POSITIONS: oneDNN
    grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
    one_channel = nn.Conv2d(1, 8, 3, padding=1)
    reference = {m: copy.deepcopy(m) for m in (small, large, grouped, one_channel)}
    for m in reference:
        use_fast_cpu_convs(m)
    for m, x in (
        (small, torch.randn(2, 32, 5, 5)),
        (large, torch.randn(2, 32, 9, 9)),
        (grouped, torch.randn(2, 32, 5, 5)),
    ):
        calls.clear()
        _, got = _grads(m, x, autocast=True)
        _, expected = _grads(reference[m], x, autocast=True)
        assert len(calls) == (1 if m is small else 0)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0.05, atol=0.02 * float(b.abs().max()) + 1e-6)
    # a 1-channel input: computed in fp32, handed on in bf16
    x = torch.randn(2, 1, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = one_channel(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, reference[one_channel](x).to(torch.bfloat16))
    # without autocast, and without gradients, nothing changes
    assert torch.equal(small(torch.ones(1, 32, 5, 5)), reference[small](torch.ones(1, 32, 5, 5)))
    calls.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        small(torch.ones(1, 32, 5, 5))
    assert not calls
