"""What the benchmark compares: the model names and the training / inference variants (no heavy imports).

A *variant* is a set of speed settings applied to the same network:

- ``baseline``: the reference-style recipe: fp32, contiguous memory, the grayscale slice repeated to
  3 channels for the ResNets (``in_channels_mode="repeat"``), eager.
- ``fast``: the project's fast path as the bundles run it by default (``amp: auto``): mixed precision
  where the hardware computes it natively (bf16 autocast on CPUs with AVX512-BF16 / AMX, fp16 autocast
  + GradScaler on CUDA; fp32 elsewhere), channels-last 2D conv weights (slice models only, see below),
  the 1-channel folded ``conv1`` (``in_channels_mode="fold"``), the CPU convolution workarounds
  (:mod:`mri_slice_transfer.networks.cpu_conv`), malloc keeping freed memory for reuse
  (:func:`mri_slice_transfer.engine.keep_freed_memory`), fused Adam, eager.
- ``fast+compile`` (opt-in, ``--compile``): ``fast`` with ``torch.compile``.
- ``fast-fp32`` (opt-in, ``--fast-fp32``): ``fast`` without mixed precision, i.e. what the bundles
  run with ``amp: false``.

Channels-last is applied through :func:`mri_slice_transfer.engine.network.build_network`, which only
supports 4D (2D conv) weights; the 3D-CNN therefore runs in contiguous memory in every variant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mri_slice_transfer.vocabulary import Encoder, canonical, names

__all__ = [
    "Variant",
    "VARIANTS",
    "BASELINE",
    "FAST",
    "DEFAULT_MODELS",
    "BENCH_MODELS",
    "DEFAULTS",
    "QUICK_DEFAULTS",
    "is_conv3d",
    "model_label",
]


@dataclass(frozen=True)
class Variant:
    """Speed settings of one benchmark column.

    Attributes:
        name: column name (``"baseline"``, ``"fast"``, ...).
        amp: the bundles' ``amp``: ``"auto"`` (mixed precision where native), True (bf16 autocast on
            the CPU, fp16 AMP + GradScaler on CUDA) or False (fp32); see
            :func:`mri_slice_transfer.engine.precision.choose_precision`.
        channels_last: 2D conv weights in channels-last memory format (ignored for the 3D-CNN).
        in_channels_mode: ``"repeat"`` (3-channel ``conv1``) or ``"fold"`` (1-channel ``conv1``).
        compile: wrap the network in ``torch.compile``.
        fast_cpu_convs: :func:`mri_slice_transfer.networks.cpu_conv.use_fast_cpu_convs` (acts only
            under CPU autocast).
        keep_freed_memory: :func:`mri_slice_transfer.engine.keep_freed_memory` in the measurement
            process (glibc only).
        fused_adam: ``torch.optim.Adam(fused=True)``, as the bundles (one kernel per step instead of
            torch's default per-parameter loop on the CPU).
    """

    name: str
    amp: bool | str
    channels_last: bool
    in_channels_mode: str
    compile: bool = False
    fast_cpu_convs: bool = True
    keep_freed_memory: bool = True
    fused_adam: bool = True

    def describe(self) -> str:
        """Short human-readable summary, e.g. ``"fp32, contiguous, repeat, eager"``."""
        parts = [
            {"auto": "amp auto (mixed precision where native)", True: "mixed precision"}.get(
                self.amp, "fp32"
            ),
            "channels-last" if self.channels_last else "contiguous",
            self.in_channels_mode,
            "torch.compile" if self.compile else "eager",
        ]
        if self.amp and self.fast_cpu_convs:
            parts.append("CPU conv workarounds")
        if self.keep_freed_memory:
            parts.append("malloc keeps freed memory")
        if self.fused_adam:
            parts.append("fused Adam")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        """The settings as a JSON-friendly dict."""
        return asdict(self)


BASELINE = Variant(
    "baseline",
    amp=False,
    channels_last=False,
    in_channels_mode="repeat",
    fast_cpu_convs=False,
    keep_freed_memory=False,
    fused_adam=False,
)
FAST = Variant("fast", amp="auto", channels_last=True, in_channels_mode="fold")
#: Every variant the benchmark knows, by name.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        BASELINE,
        FAST,
        Variant("fast+compile", amp="auto", channels_last=True, in_channels_mode="fold", compile=True),
        Variant("fast-fp32", amp=False, channels_last=True, in_channels_mode="fold"),
    )
}

#: Models of the default run: three slice encoders and the 3D-CNN.
DEFAULT_MODELS: tuple[str, ...] = ("cnn5", "resnet18", "resnet50", "conv3d")
#: Every model name ``--models`` accepts (``build_model``'s encoder names and aliases).
BENCH_MODELS: tuple[str, ...] = names(Encoder, aliases=True)


def is_conv3d(model: str) -> bool:
    """True for the 3D-CNN names (``"conv3d"`` and its aliases ``"3dcnn"``, ``"3d-cnn"``)."""
    return canonical(model, Encoder) == Encoder.CONV3D


def model_label(model: str) -> str:
    """Display name: ``"3D-CNN"`` for the 3D-CNN, else the encoder name."""
    return "3D-CNN" if is_conv3d(model) else model


#: Defaults of the full run (an option not given on the command line takes its value from here).
DEFAULTS: dict[str, Any] = {
    "models": list(DEFAULT_MODELS),
    "batch_size": 8,
    "repeats": 3,
    "warmup": 2,
    "min_time": 2.0,
    "input_scale": 1.0,
    "chunk": 32,
    "chunk_model": "resnet50",
    "chunk_batch_size": 8,
    "pipeline_scans": 8,
    "pipeline_source": "synthetic",
    "data_path_sizes": [200, 2000, 10000],
    "data_path_files": 200,
    "data_path_memory_max": 2000,
    "scaling_batch_sizes": [1, 2, 4, 8],
    "scaling_scales": [0.5, 0.75, 1.0],
}
#: What ``--quick`` changes (a CI-sized smoke run: tiny grid, one repeat, cnn5 only).
QUICK_DEFAULTS: dict[str, Any] = {
    "models": ["cnn5"],
    "batch_size": 2,
    "repeats": 1,
    "warmup": 1,
    "min_time": 0.2,
    "input_scale": 0.25,
    "chunk": 8,
    "chunk_model": "cnn5",
    "chunk_batch_size": 2,
    "pipeline_scans": 2,
    "pipeline_source": "phantom",
    "data_path_sizes": [4, 8],
    "data_path_files": 2,
    "data_path_memory_max": 8,
    "scaling_batch_sizes": [1, 2],
    "scaling_scales": [0.15, 0.25],
}
