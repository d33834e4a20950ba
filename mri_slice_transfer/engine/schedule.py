"""Learning-rate schedules of the bundles, stepped once per epoch by MONAI's ``LrScheduleHandler``.

``constant`` is the paper's recipe (Adam at a fixed learning rate for 100 epochs, best epoch chosen on
validation). ``cosine`` decays the learning rate from its start value to 0 over the run, so the last
epochs take small steps: in a short run (the 10-epoch CPU demo) the weights, and with them the logits'
offset that a 0.5 probability threshold depends on, then settle instead of jumping between epochs.
"""

from __future__ import annotations

import math

import torch

__all__ = ["LR_SCHEDULES", "make_lr_scheduler"]

#: Names accepted by :func:`make_lr_scheduler`.
LR_SCHEDULES = ("constant", "cosine")


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, max_epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch learning-rate scheduler.

    Args:
        optimizer: the training optimizer (its current learning rate is the start value).
        schedule: ``"constant"`` (the learning rate never changes) or ``"cosine"`` (cosine decay to 0
            at ``max_epochs``: epoch ``e`` of ``max_epochs`` trains at ``lr * (1 + cos(pi * (e - 1) /
            max_epochs)) / 2``).
        max_epochs: length of the run in epochs (>= 1). The scheduler's ``state_dict`` holds how many
            epochs have passed, so a resumed run (checkpoint ``extras``) continues the same schedule.

    Raises:
        ValueError: unknown ``schedule`` or ``max_epochs`` < 1; the message lists the choices.
    """
    name = str(schedule).strip().lower()
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if int(max_epochs) < 1:
        raise ValueError(f"max_epochs must be >= 1 for an lr_schedule, got {max_epochs}")
    n = int(max_epochs)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    # A plain function, not CosineAnnealingLR: LambdaLR's state_dict keeps the epoch count but not the
    # function, so a run resumed with another --epochs follows the cosine of its new length.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 0.5 * (1.0 + math.cos(math.pi * min(epoch, n) / n))
    )
