"""Mixed precision: bf16 autocast on the CPU, MONAI's AMP (fp16 + GradScaler) on CUDA.

The ``amp`` option of the bundles is ``"auto"`` (default), ``true`` or ``false``; :func:`choose_precision`
turns it and the device into a :class:`Precision` with the reason for the choice, which the run log
prints. ``"auto"`` is mixed precision where the hardware computes it natively (CUDA; a CPU with
AVX512-BF16 or AMX bf16 units) and fp32 elsewhere.

MONAI's engines only autocast on CUDA (``amp=True``). On the CPU the forward pass is wrapped here, in
the inferer, so that the trainer and the evaluator both use it; the prediction is cast back to fp32
so the loss and the metrics stay in full precision. Inside the networks only the convolutional
encoders run in low precision: positional encoding, LayerNorm, aggregation, plane fusion and head run
in fp32 (:mod:`mri_slice_transfer.networks.precision`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from monai.inferers import SimpleInferer

from mri_slice_transfer.engine.options import as_bool

__all__ = [
    "AMP_AUTO",
    "AutocastInferer",
    "Precision",
    "choose_precision",
    "cpu_autocast_enabled",
    "cpu_has_native_bf16",
    "cuda_amp_enabled",
    "make_inferer",
    "precision_label",
]

#: The ``amp`` value that picks mixed precision where the hardware supports it.
AMP_AUTO = "auto"


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in.

    Attributes:
        mixed: the forward pass runs under autocast (the encoders in ``dtype``, the rest in fp32).
        dtype: the low-precision dtype (``torch.bfloat16`` on the CPU, ``torch.float16`` on CUDA) or None.
        device_type: ``"cpu"``, ``"cuda"``, ...
        reason: why this precision was chosen (for the run log).
    """

    mixed: bool
    dtype: torch.dtype | None
    device_type: str
    reason: str

    @property
    def label(self) -> str:
        """Short name for logs and tables."""
        if not self.mixed:
            return "fp32"
        if self.device_type == "cuda":
            return "fp16 AMP on CUDA with GradScaler (encoder in fp16; loss and metrics in fp32)"
        return "bf16 autocast on CPU (encoder in bf16; positions, aggregation, head, loss, metrics in fp32)"


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _parse_amp(amp: bool | str | None) -> bool | str:
    if isinstance(amp, str) and amp.strip().lower() == AMP_AUTO:
        return AMP_AUTO
    try:
        return as_bool(amp)
    except ValueError:
        raise ValueError(f"amp must be auto, true or false, not {amp!r}") from None


def choose_precision(amp: bool | str | None, device: torch.device | str) -> Precision:
    """The precision of a run with option ``amp`` (``"auto"``, true or false; text too) on ``device``.

    Args:
        amp: ``"auto"``: mixed precision on CUDA and on CPUs with native bf16, fp32 elsewhere;
            true: mixed precision on CPU and CUDA (also where it is slow); false: fp32.
        device: the run's device.

    Returns:
        the :class:`Precision`, with the reason for the log.

    Raises:
        ValueError: ``amp`` is none of these.
    """
    kind = _device_type(device)
    choice = _parse_amp(amp)
    if kind not in ("cpu", "cuda"):
        return Precision(False, None, kind, f"mixed precision is not supported on {kind}")
    if choice is False:
        return Precision(False, None, kind, "amp false")
    dtype = torch.float16 if kind == "cuda" else torch.bfloat16
    if kind == "cuda":
        return Precision(True, dtype, kind, f"amp {str(choice).lower()}: CUDA")
    if choice is True:
        native = "native bf16" if cpu_has_native_bf16() else "NO native bf16 (slower than fp32)"
        return Precision(True, dtype, kind, f"amp true: CPU with {native}")
    if cpu_has_native_bf16():
        return Precision(True, dtype, kind, "amp auto: this CPU computes bf16 natively (AVX512-BF16 / AMX)")
    reason = "amp auto: this CPU has no native bf16 (AVX512-BF16 / AMX), fp32 is faster"
    return Precision(False, None, kind, reason)


def cpu_autocast_enabled(amp: bool | str, device: torch.device | str) -> bool:
    """Whether to run the forward pass under bf16 autocast on the CPU (see :func:`choose_precision`)."""
    p = choose_precision(amp, device)
    return p.mixed and p.device_type == "cpu"


def cuda_amp_enabled(amp: bool | str, device: torch.device | str) -> bool:
    """Whether to switch on MONAI's engine ``amp`` (CUDA only; see :func:`choose_precision`)."""
    p = choose_precision(amp, device)
    return p.mixed and p.device_type == "cuda"


def make_inferer(amp: bool | str, device: torch.device | str) -> AutocastInferer:
    """The bundles' inferer: :class:`AutocastInferer`, on when the run's precision is CPU mixed precision.

    Args:
        amp: the ``amp`` option (``"auto"``, a bool or its command-line string).
        device: the run's device.

    Returns:
        the inferer.
    """
    return AutocastInferer(enabled=cpu_autocast_enabled(amp, device))


def precision_label(amp: bool | str, device: torch.device | str) -> str:
    """Human-readable precision for the run log, with the reason for the choice."""
    p = choose_precision(amp, device)
    return f"{p.label} ({p.reason})"


class AutocastInferer(SimpleInferer):
    """``SimpleInferer`` whose forward pass runs under ``torch.autocast('cpu', bfloat16)`` if enabled.

    Args:
        enabled: autocast on (usually ``cpu_autocast_enabled(amp, device)``).
        dtype: autocast dtype, bf16 by default.
    """

    def __init__(self, enabled: bool = True, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.enabled = bool(enabled)
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled:
            return network(inputs, *args, **kwargs)
        with torch.autocast("cpu", dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        return out.float()
