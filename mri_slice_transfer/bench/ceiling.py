"""The machine's own throughput ceilings: a large matrix product and a representative convolution.

Each training row of ``mri-slice-transfer bench`` is reported as a fraction of these (achieved TFLOP/s
/ ceiling TFLOP/s) in its precision: fp32 for ``baseline`` / ``fast-fp32``, the autocast dtype (bf16 on
the CPU, fp16 on CUDA) for mixed-precision rows. The ceilings are measured, not the vendor's peak:
what this torch build reaches on this device for its best-shaped work.

- GEMM: ``[n, n] @ [n, n]`` (default ``n`` 4096; 2 n^3 FLOPs).
- conv: a ResNet-18 ``layer1`` 3 x 3 convolution (64 -> 64 channels, padding 1) on the slices of a
  batch of 8 full-size scans after the stem (728 slices of 23 x 28), channels-last, forward only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mri_slice_transfer.engine.precision import choose_precision

__all__ = ["CONV_SHAPE", "measure_ceilings"]

#: ``(N, C_in, H, W, C_out, kernel)`` of the representative convolution.
CONV_SHAPE: tuple[int, int, int, int, int, int] = (728, 64, 23, 28, 64, 3)


def _best_tflops(fn: Callable[[], Any], flops: float, min_time: float, sync: Callable[[], None]) -> float:
    """Highest TFLOP/s of single calls of ``fn`` over ``min_time`` seconds (after one warm-up call)."""
    fn()
    sync()
    best, start = 0.0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        sync()
        best = max(best, flops / (time.perf_counter() - t0) / 1e12)
        if time.perf_counter() - start >= min_time:
            return best


def measure_ceilings(
    device: str = "cpu", gemm_n: int = 4096, min_time: float = 2.0, conv_shape: tuple[int, ...] = CONV_SHAPE
) -> dict[str, dict[str, float]]:
    """Measured TFLOP/s ceilings of a GEMM and a convolution in fp32 and the mixed-precision dtype.

    Args:
        device: ``"cpu"`` or a CUDA device.
        gemm_n: size of the square matrix product.
        min_time: seconds of timed calls per measurement (the best call counts).
        conv_shape: ``(N, C_in, H, W, C_out, kernel)`` of the convolution (stride 1, "same" padding).

    Returns:
        ``{dtype name: {"gemm": TFLOP/s, "conv": TFLOP/s}}`` for ``float32`` and ``bfloat16`` (CPU) or
        ``float16`` (CUDA), plus ``"settings"`` with the shapes.
    """
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    n, c_in, h, w, c_out, k = conv_shape
    out: dict[str, Any] = {"settings": {"gemm_n": gemm_n, "conv_shape": list(conv_shape)}}
    gen = torch.Generator().manual_seed(0)
    mixed = choose_precision(True, dev)
    for dtype in (torch.float32, *((mixed.dtype,) if mixed.mixed else ())):
        name = str(dtype).removeprefix("torch.")
        a = torch.randn(gemm_n, gemm_n, generator=gen).to(dev, dtype)
        b = torch.randn(gemm_n, gemm_n, generator=gen).to(dev, dtype)
        gemm = _best_tflops(lambda a=a, b=b: a @ b, 2.0 * gemm_n**3, min_time, sync)
        del a, b
        x = (
            torch.randn(n, c_in, h, w, generator=gen)
            .to(dev, dtype)
            .contiguous(memory_format=torch.channels_last)
        )
        wt = (
            torch.randn(c_out, c_in, k, k, generator=gen)
            .to(dev, dtype)
            .contiguous(memory_format=torch.channels_last)
        )
        conv_flops = 2.0 * n * c_out * h * w * c_in * k * k
        conv = _best_tflops(lambda x=x, wt=wt: F.conv2d(x, wt, padding=k // 2), conv_flops, min_time, sync)
        out[name] = {"gemm": gemm, "conv": conv}
    return out
