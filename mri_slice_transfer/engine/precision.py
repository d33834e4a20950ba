"""Mixed precision: bf16 autocast on the CPU, MONAI's AMP (fp16 + GradScaler) on CUDA.

MONAI's engines only autocast on CUDA (``amp=True``). On the CPU the forward pass is wrapped here, in
the inferer, so that the trainer and the evaluator both use it; the prediction is cast back to fp32
so the loss and the metrics stay in full precision.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import SimpleInferer

from mri_slice_transfer.engine.options import as_bool

__all__ = ["AutocastInferer", "cpu_autocast_enabled", "cuda_amp_enabled", "make_inferer", "precision_label"]


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def cpu_autocast_enabled(amp: bool | str, device: torch.device | str) -> bool:
    """Whether to run the forward pass under bf16 autocast on the CPU (``amp`` may be ``"true"``)."""
    return as_bool(amp) and _device_type(device) == "cpu"


def cuda_amp_enabled(amp: bool | str, device: torch.device | str) -> bool:
    """Whether to switch on MONAI's engine ``amp`` (CUDA only; ``amp`` may be ``"true"``)."""
    return as_bool(amp) and _device_type(device) == "cuda"


def make_inferer(amp: bool | str, device: torch.device | str) -> AutocastInferer:
    """The bundles' inferer: :class:`AutocastInferer`, on when ``amp`` is set and the device is a CPU.

    Args:
        amp: the ``amp`` option (a bool or its command-line string).
        device: the run's device.

    Returns:
        the inferer.
    """
    return AutocastInferer(enabled=cpu_autocast_enabled(amp, device))


def precision_label(amp: bool, device: torch.device | str) -> str:
    """Human-readable precision for the run log."""
    if cpu_autocast_enabled(amp, device):
        return "bf16 autocast on CPU (loss and metrics in fp32)"
    if cuda_amp_enabled(amp, device):
        return "fp16 AMP on CUDA with GradScaler"
    return "fp32"


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
