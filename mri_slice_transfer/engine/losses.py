"""Training losses: BCE-with-logits for AD vs CN (optionally class-balanced), MSE for brain age (fp32)."""

from __future__ import annotations

from typing import Any

import torch

from mri_slice_transfer.engine.options import as_bool
from mri_slice_transfer.vocabulary import task_spec

__all__ = ["TaskLoss", "make_loss"]


class TaskLoss(torch.nn.Module):
    """Loss on flattened fp32 predictions and labels (shapes ``[B, 1]`` or ``[B]``).

    Args:
        task: ``"adni_ad"`` (BCE with logits) or ``"brain_age"`` (MSE).
        pos_weight: AD only: weight of the AD (positive) terms, e.g. ``n_CN / n_AD`` of the training
            list so that both classes count equally (what balanced accuracy, the key metric, rewards);
            None for the plain loss.
    """

    def __init__(self, task: str, pos_weight: float | None = None) -> None:
        super().__init__()
        if task_spec(task).loss == "bce_with_logits":
            weight = None if pos_weight is None else torch.tensor(float(pos_weight))
            self.fn: torch.nn.Module = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        else:
            self.fn = torch.nn.MSELoss()
        self.task = task

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.fn(pred.float().reshape(-1), label.float().reshape(-1))


def make_loss(
    task: str, pos_weight: float | None = None, data: Any = None, class_balance: Any = False
) -> TaskLoss:
    """The paper's loss for ``task`` (AD: optionally class-balanced).

    Args:
        task: ``"adni_ad"`` or ``"brain_age"``.
        pos_weight: AD only: an explicit BCE ``pos_weight``.
        data: the run's :class:`~mri_slice_transfer.engine.datasets.DataSource`; with
            ``class_balance``, ``pos_weight`` = n_CN / n_AD of its training list.
        class_balance: balance the classes of a binary task (a bool or its command-line string); no
            effect for a regression task, which has no classes.

    Returns:
        the loss module.
    """
    if pos_weight is not None and not task_spec(task).is_binary:
        raise ValueError(f"pos_weight only applies to the AD task, not {task!r}")
    if pos_weight is None and data is not None and as_bool(class_balance) and task_spec(task).is_binary:
        pos_weight = data.positive_weight("train")
    return TaskLoss(task, pos_weight)
