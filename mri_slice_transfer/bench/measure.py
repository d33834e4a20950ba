"""Training and inference throughput of one network in one variant (runs inside a measurement process).

The training step is the bundles' step (MONAI ``SupervisedTrainer``): ``zero_grad``, forward through
:class:`~mri_slice_transfer.engine.precision.AutocastInferer` (bf16 autocast on the CPU when mixed
precision is on), the task loss in fp32 (:func:`~mri_slice_transfer.engine.losses.make_loss`),
backward, Adam step; on CUDA with mixed precision the forward and loss run under
``torch.autocast("cuda")`` (fp16) with a ``GradScaler``, as MONAI's ``amp=True`` does. The network is
built by :func:`~mri_slice_transfer.engine.network.build_network` (which applies channels-last), i.e.
exactly what the bundle configs build.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mri_slice_transfer.bench.process import peak_rss_mb, rss_mb
from mri_slice_transfer.bench.specs import VARIANTS, Variant, is_conv3d
from mri_slice_transfer.engine.allocator import keep_freed_memory
from mri_slice_transfer.engine.losses import make_loss
from mri_slice_transfer.engine.network import build_network
from mri_slice_transfer.engine.precision import (
    AutocastInferer,
    choose_precision,
    cpu_autocast_enabled,
    cuda_amp_enabled,
    precision_label,
)
from mri_slice_transfer.engine.resize import scaled_size
from mri_slice_transfer.info import collect_info
from mri_slice_transfer.networks import count_parameters

__all__ = [
    "resolve_device",
    "environment",
    "count_flops",
    "build_bench_model",
    "BenchRunner",
    "time_repeats",
    "measure_model",
]


def resolve_device(device: str | None) -> str:
    """``None`` / ``"auto"``: ``"cuda"`` if available, else ``"cpu"``; anything else unchanged."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and device facts for the report (``mri-slice-transfer info`` plus the chosen device)."""
    info = collect_info()
    dev = resolve_device(device)
    info["bench_device"] = dev
    if torch.device(dev).type == "cuda":
        info["bench_device_name"] = torch.cuda.get_device_name(torch.device(dev))
    info.pop("paths", None)
    return info


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs executed by ``fn()`` as counted by :class:`torch.utils.flop_counter.FlopCounterMode`.

    Counts convolutions and matrix products (forward and backward; a multiply-add is 2 FLOPs);
    normalisations, activations, pooling and the optimizer are not counted. ``fn`` is really run.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def build_bench_model(
    model: str,
    variant: Variant | str,
    spatial_size: Sequence[int],
    *,
    axis: str = "axial",
    slice_chunk_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """The network of a benchmark row, built as the bundles build it.

    Slice models use the bundles' defaults (mean aggregation, learned positional encoding, no
    pretrained weights); ``variant`` decides ``in_channels_mode`` and channels-last. The same ``seed``
    gives the same function in every variant (the folded ``conv1`` is the channel sum of the seeded
    RGB kernel).

    Args:
        model: ``"cnn5"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"conv3d"`` / ``"3dcnn"``.
        variant: a :class:`~.specs.Variant` or its name in :data:`~.specs.VARIANTS`.
        spatial_size: input grid ``(x, y, z)``.
        axis: slicing axis of the slice models.
        slice_chunk_size: encode slices in chunks with activation checkpointing (slice models only).
        seed: torch seed for the initial weights.
        device: where the network goes.
    """
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    torch.manual_seed(seed)
    net = build_network(
        channels_last=v.channels_last and not is_conv3d(model),
        fast_cpu_convs=v.fast_cpu_convs,
        encoder=model,
        axis=axis,
        aggregation="mean",
        position_encoding="learned",
        pretrained=False,
        num_outputs=1,
        spatial_size=tuple(int(s) for s in spatial_size),
        in_channels_mode=v.in_channels_mode,
        slice_chunk_size=slice_chunk_size,
    )
    return net.to(device)


class BenchRunner:
    """A network with fixed random inputs, an Adam optimizer and the bundles' precision settings.

    Args:
        net: the network (from :func:`build_bench_model`).
        variant: its variant (mixed precision and ``torch.compile`` are applied here).
        device: device of ``net``.
        batch_size: scans per step.
        spatial_size: input grid.
        seed: seed of the random inputs and labels.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        variant: Variant,
        device: str | torch.device,
        batch_size: int,
        spatial_size: Sequence[int],
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.net = net
        self.variant = variant
        self.batch_size = int(batch_size)
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(self.batch_size, 1, *spatial_size, generator=gen).to(self.device)
        self.y = (torch.rand(self.batch_size, 1, generator=gen) > 0.5).float().to(self.device)
        self.loss_fn = make_loss("adni_ad").to(self.device)
        self.optimizer = torch.optim.Adam(
            net.parameters(), lr=1e-4, weight_decay=1e-4, fused=True if variant.fused_adam else None
        )
        self.cuda_amp = cuda_amp_enabled(variant.amp, self.device)
        self.inferer = AutocastInferer(enabled=cpu_autocast_enabled(variant.amp, self.device))
        self.scaler = torch.amp.GradScaler("cuda") if self.cuda_amp else None
        self.model: Callable[..., torch.Tensor] = torch.compile(net) if variant.compile else net

    def _cuda_autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda") if self.cuda_amp else contextlib.nullcontext()

    def train_step(self, eager: bool = False) -> float:
        """One training step (zero_grad, forward, loss, backward, Adam step); returns the loss."""
        model = self.net if eager else self.model
        self.net.train()
        self.optimizer.zero_grad(set_to_none=False)  # MONAI SupervisedTrainer's default
        with self._cuda_autocast():
            loss = self.loss_fn(self.inferer(self.x, model), self.y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    def infer_step(self, eager: bool = False) -> torch.Tensor:
        """One inference step (eval mode, no gradients, as MONAI's evaluator); returns the output."""
        model = self.net if eager else self.model
        self.net.eval()
        with torch.no_grad(), self._cuda_autocast():
            return self.inferer(self.x, model)

    def sync(self) -> None:
        """Wait for queued device work (CUDA); no-op on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def time_repeats(
    step: Callable[[], Any], repeats: int, min_time: float, sync: Callable[[], None] = lambda: None
) -> list[tuple[int, float]]:
    """Run ``step`` in ``repeats`` timed blocks of at least ``min_time`` seconds (and one step) each.

    Returns:
        ``(steps, seconds)`` per block.
    """
    out = []
    for _ in range(max(1, int(repeats))):
        sync()
        start = time.perf_counter()
        steps = 0
        while True:
            step()
            steps += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        out.append((steps, elapsed))
    return out


def _phase(runner: BenchRunner, train: bool, warmup: int, repeats: int, min_time: float) -> dict[str, Any]:
    """Warm up, then time ``repeats`` blocks of steps (FLOPs: :func:`_count_phase_flops`, afterwards)."""
    step = runner.train_step if train else runner.infer_step
    start = time.perf_counter()
    step()  # the first step (compilation happens here)
    runner.sync()
    first = time.perf_counter() - start
    for _ in range(max(0, int(warmup) - 1)):
        step()
    timings = time_repeats(step, repeats, min_time, runner.sync)
    b = runner.batch_size
    return {
        "first_step_s": first,
        "steps": [n for n, _ in timings],
        "seconds": [s for _, s in timings],
        "scans_per_s": [b * n / s for n, s in timings],
    }


def _count_phase_flops(runner: BenchRunner, train: bool, phase: dict[str, Any]) -> None:
    """Count the FLOPs of one more (eager) step and add ``flops_per_step/scan`` and ``tflops`` to ``phase``.

    Runs after the timing and after the training peak memory has been read: under ``FlopCounterMode``
    activation checkpointing keeps every recomputed activation alive (measured: ResNet-50, batch 8,
    chunked encoding peaked at 8.5 GB with the counter and 1.5 GB without), so counting first would
    hide what the memory option saves.
    """
    step = runner.train_step if train else runner.infer_step
    flops = count_flops(lambda: step(eager=True))
    phase["flops_per_step"] = flops
    phase["flops_per_scan"] = flops / runner.batch_size
    phase["tflops"] = [flops * n / s / 1e12 for n, s in zip(phase["steps"], phase["seconds"], strict=True)]


def measure_model(
    model: str,
    variant: str,
    batch_size: int,
    input_scale: float = 1.0,
    axis: str = "axial",
    slice_chunk_size: int | None = None,
    device: str | None = None,
    warmup: int = 2,
    repeats: int = 3,
    min_time: float = 2.0,
    seed: int = 0,
    train: bool = True,
    infer: bool = True,
) -> dict[str, Any]:
    """Measure one network in one variant: training, then inference (the job of a measurement process).

    The peak memory is read after the training phase (before inference), so it is the training peak:
    on the CPU the process's peak resident set size (``ru_maxrss``), also as an increment over the
    resident size when the measurement started; on CUDA ``torch.cuda.max_memory_allocated`` too.

    Args:
        model: network name (see :func:`build_bench_model`).
        variant: name in :data:`~.specs.VARIANTS`.
        batch_size: scans per step.
        input_scale: input grid :func:`~mri_slice_transfer.engine.resize.scaled_size` (1: 91 x 109 x 91).
        axis: slicing axis.
        slice_chunk_size: see :class:`~mri_slice_transfer.networks.SliceSetNet`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None: CUDA if available.
        warmup: untimed steps before timing (at least 1; FLOPs are counted in one extra step at the end).
        repeats: timed blocks.
        min_time: minimum seconds per timed block (at least one step each).
        seed: seed of weights and inputs.
        train, infer: which phases to run.

    Returns:
        a JSON-friendly dict with the configuration, ``train`` / ``infer`` results (per-block
        ``scans_per_s`` and ``tflops``, ``flops_per_scan``, ``first_step_s``) and ``memory``.
    """
    v = VARIANTS[variant]
    if v.keep_freed_memory:
        keep_freed_memory()  # process-wide: every row runs in its own process (see .process)
    rss_start = rss_mb()
    dev = torch.device(resolve_device(device))
    precision = choose_precision(v.amp, dev)
    size = scaled_size(input_scale)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    net = build_bench_model(
        model, v, size, axis=axis, slice_chunk_size=slice_chunk_size, seed=seed, device=dev
    )
    runner = BenchRunner(net, v, dev, batch_size, size, seed=seed)
    result: dict[str, Any] = {
        "model": model,
        "variant": variant,
        "settings": v.as_dict(),
        "channels_last_applied": bool(v.channels_last and not is_conv3d(model)),
        "precision": precision_label(v.amp, dev),
        "mixed": precision.mixed,
        "precision_dtype": str(precision.dtype or torch.float32).removeprefix("torch."),
        "batch_size": int(batch_size),
        "input_scale": float(input_scale),
        "spatial_size": list(size),
        "slices": None if is_conv3d(model) else int(getattr(net, "num_slices", 0)),
        "axis": None if is_conv3d(model) else axis,
        "slice_chunk_size": slice_chunk_size,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "params": count_parameters(net),
    }
    if train:
        result["train"] = _phase(runner, True, warmup, repeats, min_time)
        peak = peak_rss_mb()
        result["memory"] = {
            "rss_start_mb": rss_start,
            "peak_rss_mb": peak,
            "train_mb": None if rss_start is None else peak - rss_start,
            "cuda_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        }
        _count_phase_flops(runner, True, result["train"])
    if infer:
        result["infer"] = _phase(runner, False, warmup, repeats, min_time)
        _count_phase_flops(runner, False, result["infer"])
    return result
