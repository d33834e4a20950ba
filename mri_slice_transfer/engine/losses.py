"""Training losses: BCE-with-logits for AD vs CN, MSE for brain age (both in fp32)."""

from __future__ import annotations

import torch

__all__ = ["TaskLoss", "make_loss"]


class TaskLoss(torch.nn.Module):
    """Loss on flattened fp32 predictions and labels (shapes ``[B, 1]`` or ``[B]``)."""

    def __init__(self, task: str) -> None:
        super().__init__()
        if task == "adni_ad":
            self.fn: torch.nn.Module = torch.nn.BCEWithLogitsLoss()
        elif task == "brain_age":
            self.fn = torch.nn.MSELoss()
        else:
            raise ValueError(f"unknown task {task!r}; expected 'adni_ad' or 'brain_age'")
        self.task = task

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.fn(pred.float().reshape(-1), label.float().reshape(-1))


def make_loss(task: str) -> TaskLoss:
    """The paper's loss for ``task``."""
    return TaskLoss(task)
