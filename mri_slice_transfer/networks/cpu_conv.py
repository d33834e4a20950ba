"""Convolutions for bf16 / fp16 training on the CPU: two workarounds for slow oneDNN kernels.

Measured with the oneDNN that ships with torch 2.14 on this CPU class (AMX; ``docs/benchmarks.md``,
"Why the fast path has its own CPU convolutions and malloc setting"):

1. **Weight gradients on small feature maps.** The bf16 backward-weights kernel (``brgconv_bwd_w``) is
   slow on the ResNet shapes of slice models: many slices (``N = B * K``, e.g. 728) of small maps.
   For ResNet-18's layer-4 3x3 conv it took 536 ms where the same work as matrix products takes
   128 ms (``scripts/bench_cpu_kernels.py``), and 2-6 s when another process competed for the cores.
   The weight gradient of a convolution (groups 1, dilation 1) is a sum over kernel offsets of matrix
   products: for each offset ``o``, ``dW[:, :, o] = dY^T @ X_o``, with ``X_o`` the zero-padded input
   shifted by ``o`` and subsampled by the stride, both flattened to ``[N * out_positions, channels]``
   (:func:`conv_weight_grad`).
2. **Convolutions of 1-channel inputs.** In bf16 the first convolution of the 3D-CNN (1 -> 32
   channels, 3x3x3, on 8 volumes of 91 x 109 x 91) took 1.26 s forward against 0.19 s in fp32. Layers
   with fewer than :data:`MIN_IN_CHANNELS` input channels therefore compute in fp32 under autocast
   and hand on an output in the autocast dtype.

:class:`FastCPUConv` applies both to ``nn.Conv2d`` / ``nn.Conv3d`` layers (:func:`use_fast_cpu_convs`).
Without CPU autocast (fp32 training, CUDA) it is the plain forward.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv_weight_grad", "FastCPUConv", "use_fast_cpu_convs", "MIN_IN_CHANNELS", "MAX_OUT_POSITIONS"]

#: Convolutions with fewer input channels (a 1-channel ``conv1``) compute in fp32 under autocast.
MIN_IN_CHANNELS = 16
#: Only outputs with at most this many positions per sample (e.g. ResNet layers 3 and 4 on 109 x 91
#: slices: 6 x 7 and 3 x 4) use the matrix-product weight gradient; on larger maps oneDNN was faster.
MAX_OUT_POSITIONS = 64

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def conv_weight_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
) -> torch.Tensor:
    """Weight gradient of ``conv(x, w, stride, padding)`` (groups 1, dilation 1) as matrix products.

    Args:
        x: input ``[N, C_in, *spatial]`` (2 or 3 spatial dims), any memory format.
        grad_out: gradient of the output ``[N, C_out, *out_spatial]``.
        kernel_size, stride, padding: per spatial dim.

    Returns:
        ``[C_out, C_in, *kernel_size]`` in ``grad_out``'s dtype.
    """
    c_in, c_out = x.shape[1], grad_out.shape[1]
    out_spatial = grad_out.shape[2:]
    pads = [p for p in reversed(padding) for _ in range(2)]
    xp = F.pad(x, pads) if any(padding) else x
    g = grad_out.movedim(1, -1).reshape(-1, c_out).t()  # [C_out, M]; a view for channels-last
    out = grad_out.new_empty(c_out, *kernel_size, c_in)
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        window = (slice(None), slice(None)) + tuple(
            slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, stride, out_spatial, strict=True)
        )
        shifted = xp[window].movedim(1, -1).reshape(-1, c_in)  # [M, C_in]
        torch.mm(g, shifted, out=out[(slice(None), *offset)])
    return out.movedim(-1, 1)


class _MatmulWeightGradFn(torch.autograd.Function):
    """``conv{2,3}d`` whose backward computes the weight gradient with :func:`conv_weight_grad`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        conv = F.conv2d if x.ndim == 4 else F.conv3d
        return conv(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        matmul = ctx.needs_input_grad[1] and math.prod(grad_out.shape[2:]) <= MAX_OUT_POSITIONS
        mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]) and not matmul, False]
        if any(mask):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, ctx.stride, ctx.padding, [1] * len(ctx.stride),
                False, [0] * len(ctx.stride), 1, mask,
            )  # fmt: skip
        if matmul:
            grad_w = conv_weight_grad(x, grad_out, tuple(weight.shape[2:]), ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=[0, *range(2, grad_out.ndim)])
        return grad_x, grad_w, grad_b, None, None


class FastCPUConv:
    """Mixin forward for ``nn.Conv2d`` / ``nn.Conv3d`` under bf16 / fp16 autocast on the CPU.

    Layers with fewer than :data:`MIN_IN_CHANNELS` input channels compute in fp32 and return the
    autocast dtype; the others (groups 1, dilation 1, zero padding, trainable weight) compute the
    weight gradient of small outputs as matrix products. Everything else is the plain forward.
    Installed on existing layers by :func:`use_fast_cpu_convs` (parameters and state dict unchanged).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu")
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or dtype not in _LOW_PRECISION:
            return super().forward(x)  # type: ignore[misc]
        if self.in_channels < MIN_IN_CHANNELS:
            with torch.autocast("cpu", enabled=False):
                y = super().forward(x.float())  # type: ignore[misc]
            return y.to(dtype)
        if not _use_matmul_path(self):
            return super().forward(x)  # type: ignore[misc]
        weight = self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        stride, padding = tuple(self.stride), tuple(self.padding)
        with torch.autocast("cpu", enabled=False):
            return _MatmulWeightGradFn.apply(x.to(dtype), weight, bias, stride, padding)


def _use_matmul_path(conv: nn.modules.conv._ConvNd) -> bool:
    return (
        torch.is_grad_enabled()
        and conv.weight.requires_grad
        and conv.groups == 1
        and all(d == 1 for d in conv.dilation)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


class _FastConv2d(FastCPUConv, nn.Conv2d):
    pass


class _FastConv3d(FastCPUConv, nn.Conv3d):
    pass


def use_fast_cpu_convs(module: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` / ``nn.Conv3d`` in ``module`` a :class:`FastCPUConv`.

    The layers keep their parameters, buffers and state-dict keys (only their class changes), so
    checkpoints load either way. Returns the number of layers changed.
    """
    count = 0
    for layer in module.modules():
        if type(layer) is nn.Conv2d:
            layer.__class__ = _FastConv2d
        elif type(layer) is nn.Conv3d:
            layer.__class__ = _FastConv3d
        else:
            continue
        count += 1
    return count
