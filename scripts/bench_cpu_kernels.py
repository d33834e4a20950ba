"""Why the fast path has its own CPU convolutions and malloc setting: the measurements behind them.

Prints three small tables (docs/benchmarks.md, "Why the fast path ..."):

1. bf16 conv weight gradients of ResNet-18 slice-model shapes (batch 8 x 91 slices of 109 x 91):
   oneDNN's kernel vs :func:`mri_slice_transfer.networks.cpu_conv.conv_weight_grad` (matrix products).
2. The 3D-CNN's first convolution (1 -> 32 channels) forward in bf16 vs fp32.
3. One fast-path training step (batch 8) with glibc's default malloc vs
   :func:`mri_slice_transfer.engine.keep_freed_memory`, each in a fresh process, with its peak RSS.
4. One Adam step over ResNet-18's slice-model parameters (11.2 M): torch's CPU default (a loop over the
   parameters), ``foreach=True`` and ``fused=True`` (the bundles' since 0.9.0; issue 17).
5. The 1-channel 2D convolutions (ResNet stem 7x7/2 -> 64, cnn5's first 3x3 -> 32) on 182 slices,
   forward + weight gradient: fp32 then cast to bf16 (what ``networks.cpu_conv`` does under autocast)
   vs bf16 (issue 17).

Usage: ``python scripts/bench_cpu_kernels.py [--repeats 3] [--models cnn5,resnet18,conv3d]
[--sections weights,conv3d,malloc,adam,stem]``. Run it on a quiet machine; it takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mri_slice_transfer.engine.allocator import keep_freed_memory
from mri_slice_transfer.networks.cpu_conv import conv_weight_grad

#: (C_in, C_out, H, W, kernel, stride, padding) of ResNet-18 convs on 109 x 91 slices (N = 728).
RESNET18_CONVS = [
    (64, 64, 23, 28, 3, 1, 1),
    (128, 128, 12, 14, 3, 1, 1),
    (128, 256, 12, 14, 3, 2, 1),
    (256, 256, 6, 7, 3, 1, 1),
    (256, 512, 6, 7, 3, 2, 1),
    (256, 512, 6, 7, 1, 2, 0),
    (512, 512, 3, 4, 3, 1, 1),
]

_STEP = """
import resource, sys, time
from mri_slice_transfer.engine import keep_freed_memory
from mri_slice_transfer.bench.measure import BenchRunner, build_bench_model
from mri_slice_transfer.bench.specs import VARIANTS
model, tuned, repeats = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
if tuned:
    keep_freed_memory()
v = VARIANTS["fast"]
net = build_bench_model(model, v, (91, 109, 91))
runner = BenchRunner(net, v, "cpu", 8, (91, 109, 91))
runner.train_step()
times = []
for _ in range(repeats):
    t = time.perf_counter()
    runner.train_step()
    times.append(time.perf_counter() - t)
print(*times, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _weight_grad_ms(conv: tuple[int, ...], repeats: int) -> tuple[float, float]:
    """Median ms of oneDNN's and the matmul weight gradient of one ``RESNET18_CONVS`` entry."""
    c_in, c_out, h, w, k, s, p = conv
    x = torch.randn(728, c_in, h, w, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    grad = torch.randn_like(F.conv2d(x, weight, stride=s, padding=p))
    mask = [False, True, False]  # weight gradient only
    onednn = _median_ms(
        lambda: torch.ops.aten.convolution_backward(
            grad, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
        ),
        repeats,
    )
    matmul = _median_ms(lambda: conv_weight_grad(x, grad, (k, k), (s, s), (p, p)), repeats)
    return onednn, matmul


def weight_grads(repeats: int) -> None:
    print("bf16 conv weight gradient, N = 728 slices, channels-last (median ms)")
    print(f"{'conv':<28}{'oneDNN':>10}{'matmul':>10}")
    for conv in RESNET18_CONVS:
        c_in, c_out, h, w, k, s, _ = conv
        onednn, matmul = _weight_grad_ms(conv, repeats)
        print(f"{f'{c_in}->{c_out} {k}x{k}/{s} on {h}x{w}':<28}{onednn:>10.0f}{matmul:>10.0f}")


def first_conv3d(repeats: int) -> None:
    print("\n3D-CNN first conv forward, 8 x 1 x 91 x 109 x 91 -> 32 channels (median ms)")
    x = torch.randn(8, 1, 91, 109, 91)
    weight, bias = torch.randn(32, 1, 3, 3, 3), torch.randn(32)
    for dtype in (torch.float32, torch.bfloat16):
        xx, ww, bb = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ms = _median_ms(lambda xx=xx, ww=ww, bb=bb: F.conv3d(xx, ww, bb, padding=1), repeats)
        print(f"{str(dtype).removeprefix('torch.'):<10}{ms:>8.0f}")


def malloc_steps(models: list[str], repeats: int) -> None:
    print(
        "\nfast-path training step, batch 8, glibc malloc default vs keep_freed_memory (fresh process each)"
    )
    print(f"{'model':<10}{'malloc':<20}{'s/step (median)':>16}{'peak RSS MB':>13}")
    for model in models:
        for tuned in (False, True):
            out = subprocess.run(
                [sys.executable, "-c", _STEP, model, "1" if tuned else "0", str(repeats)],
                capture_output=True, text=True, check=True, encoding="utf-8",
            ).stdout.split()  # fmt: skip
            *times, peak = (float(v) for v in out)
            label = "keep_freed_memory" if tuned else "default"
            print(f"{model:<10}{label:<20}{statistics.median(times):>16.2f}{peak:>13.0f}")


def adam_steps(repeats: int) -> None:
    from mri_slice_transfer.bench.measure import build_bench_model

    params = list(build_bench_model("resnet18", "fast", (91, 109, 91)).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    n = sum(p.numel() for p in params)
    print(f"\nAdam step over ResNet-18 slice-model parameters ({n / 1e6:.1f} M), median ms")
    for name, kwargs in (
        ("default (per-parameter loop)", {}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-4, **kwargs)
        print(f"{name:<30}{_median_ms(opt.step, repeats):>8.0f}")


def _one_channel_ms(x: torch.Tensor, conv: tuple[int, int, int, int], repeats: int) -> tuple[float, float]:
    """Median ms of forward + weight gradient: fp32 then cast to bf16, and bf16."""
    c_out, k, stride, pad = conv
    weight = torch.randn(c_out, 1, k, k).to(memory_format=torch.channels_last).requires_grad_()

    def fp32_cast() -> None:
        y = F.conv2d(x, weight, stride=stride, padding=pad).to(torch.bfloat16)
        y.backward(torch.ones_like(y))

    def bf16() -> None:
        y = F.conv2d(x.bfloat16(), weight.bfloat16(), stride=stride, padding=pad)
        y.backward(torch.ones_like(y))

    return _median_ms(fp32_cast, repeats), _median_ms(bf16, repeats)


def one_channel_convs(repeats: int) -> None:
    print("\n1-channel 2D convs on 182 x 1 x 91 x 109, forward + weight gradient (median ms)")
    print(f"{'conv':<28}{'fp32 + cast':>12}{'bf16':>8}")
    x = torch.randn(182, 1, 91, 109)
    for name, conv in (("ResNet stem 7x7/2 -> 64", (64, 7, 2, 3)), ("cnn5 3x3/1 -> 32", (32, 3, 1, 1))):
        fp32_cast, bf16 = _one_channel_ms(x, conv, repeats)
        print(f"{name:<28}{fp32_cast:>12.0f}{bf16:>8.0f}")


SECTIONS = ("weights", "conv3d", "malloc", "adam", "stem")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--models", default="cnn5,resnet18,conv3d", help="models of the malloc table ('' skips it)"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    # the kernel timings below run as the fast path does, with freed memory kept for reuse (without it
    # page faults on the large outputs dominate); the malloc comparison uses fresh processes
    keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, malloc keeps freed memory\n")
    if "weights" in sections:
        weight_grads(args.repeats)
    if "conv3d" in sections:
        first_conv3d(args.repeats)
    if args.models and "malloc" in sections:
        malloc_steps(args.models.split(","), args.repeats)
    if "adam" in sections:
        adam_steps(args.repeats)
    if "stem" in sections:
        one_channel_convs(args.repeats)


if __name__ == "__main__":
    main()
