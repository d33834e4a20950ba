"""Full precision for the numerically delicate parts of a network under autocast.

Under mixed precision (``torch.autocast``) only the convolutional encoders should compute in bf16 /
fp16: they hold nearly all the FLOPs and tolerate the rounding. What follows them (the positional
encoding and its LayerNorm, the aggregation, plane fusion and the head) sees small differences between
scans early in training: bf16 rounding of the embeddings and logits (about 3 significant digits) is
larger than those differences and scrambles the ranking of scans. These parts run in fp32 inside
:func:`full_precision`; outside autocast it changes nothing.
"""

from __future__ import annotations

import torch

__all__ = ["full_precision", "to_full"]

_LOW = (torch.bfloat16, torch.float16)


def full_precision(x: torch.Tensor) -> torch.autocast:
    """A context with autocast off on ``x``'s device (the code inside computes in its inputs' dtype)."""
    return torch.autocast(x.device.type, enabled=False)


def to_full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 if it is bf16 / fp16 (an autocast output), else unchanged (fp32 / fp64 stay)."""
    return x.float() if x.dtype in _LOW else x
