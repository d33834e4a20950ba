"""Small DDP helpers that work the same with and without a process group."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "barrier",
    "init_distributed",
    "default_device",
    "distributed_device",
    "handlers_for_rank",
    "cleanup_distributed",
    "unwrap",
    "quiet_other_ranks",
]


def is_distributed() -> bool:
    """Whether a torch.distributed process group is running."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a plain run)."""
    return rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when distributed, else nothing."""
    if is_distributed():
        dist.barrier()


def init_distributed(backend: str | None = None) -> str:
    """Start the process group from torchrun's env vars: NCCL on GPUs, gloo on the CPU."""
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not is_distributed():
        dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return backend


def distributed_device() -> torch.device:
    """``cuda:LOCAL_RANK`` if CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def cleanup_distributed() -> None:
    """Destroy the process group if there is one."""
    if is_distributed():
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    return getattr(model, "module", model)


def quiet_other_ranks(*engines: object, **named: object) -> None:
    """Only rank 0 logs at INFO level: other ranks' engine loggers are set to WARNING.

    Args:
        engines, named: the engines (configs name them: ``trainer=``, ``evaluator=``).
    """
    engines = (*engines, *named.values())
    if is_main_process():
        return
    for engine in engines:
        getattr(engine, "logger", logging.getLogger()).setLevel(logging.WARNING)


def default_device() -> torch.device:
    """``cuda:0`` when a GPU is available, else the CPU (the bundles' ``device``)."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


#: Names of handler types that only log or write, attached on rank 0 only (:func:`handlers_for_rank`).
RANK0_ONLY_HANDLERS: tuple[str, ...] = (
    "MetricsWriter",
    "ProgressBar",
    "StatsHandler",
    "TensorBoardStatsHandler",
    "TrainingLog",
)


def handlers_for_rank(handlers: list) -> list:
    """The handlers this process attaches: all on rank 0; on other ranks those that are not logging or
    writing (types named in :data:`RANK0_ONLY_HANDLERS`), so the others keep their order.

    Args:
        handlers: the bundle's handler list (``train#handlers``, ``validate#handlers``).

    Returns:
        the list to attach on this rank.
    """
    if rank() == 0:
        return list(handlers)
    return [h for h in handlers if type(h).__name__ not in RANK0_ONLY_HANDLERS]
