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
    "init_from_launcher",
    "Shard",
    "parse_shard",
    "shard_records",
    "shard_path",
    "gather_shards",
    "interleave",
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


def init_from_launcher(backend: str | None = None) -> bool:
    """Start the process group when a launcher (torchrun, ``srun torchrun``) started this process.

    The evaluation and inference bundles call it: a plain ``python -m monai.bundle run`` runs as before,
    the same command under ``torchrun --nproc_per_node N`` shards the scans over the N processes.

    Args:
        backend: as in :func:`init_distributed` (None: NCCL on GPUs, gloo on the CPU).

    Returns:
        whether this process is one of several (a process group is running).
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        init_distributed(backend)
        return True
    return False


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


def pin_memory_for(device: torch.device | str) -> bool:
    """Page-locked batches and non-blocking copies pay off only for a CUDA device (the bundles'
    DataLoader ``pin_memory`` and engines' ``non_blocking``)."""
    return torch.device(device).type == "cuda"


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


#: A share of the inputs: ``(index, count)`` from ``--shard INDEX/COUNT`` (0-based, like SLURM array ids).
Shard = tuple[int, int]


def parse_shard(shard: str | Shard | None) -> Shard | None:
    """``"1/4"`` -> ``(1, 4)``; None or an empty text -> None.

    Args:
        shard: the ``--shard`` option: ``INDEX/COUNT`` with ``0 <= INDEX < COUNT``.

    Returns:
        ``(index, count)`` or None.

    Raises:
        ValueError: not of the form ``INDEX/COUNT``, naming the option.
    """
    if shard is None or (isinstance(shard, str) and not shard.strip()):
        return None
    bad = f"--shard must be INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 0/4), not {shard!r}"
    try:
        index, count = (int(part) for part in shard.split("/")) if isinstance(shard, str) else shard
    except (TypeError, ValueError):
        raise ValueError(bad) from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(bad)
    return int(index), int(count)


def _this_shard(shard: str | Shard | None) -> Shard | None:
    """The shard this process scores: its rank's under a launcher, else ``--shard``, else None."""
    chosen = parse_shard(shard)
    if is_distributed() and world_size() > 1:
        if chosen is not None:
            raise ValueError(
                f"--shard {shard} cannot be combined with a multi-process launcher (here {world_size()} "
                "processes): the processes already share the scans out; leave --shard out"
            )
        return rank(), world_size()
    return chosen


def shard_records(records: list[dict], shard: str | Shard | None = None) -> list[dict]:
    """This process's share of the inputs: scan ``i`` goes to shard ``i % count``.

    Under a multi-process launcher the shard is the rank; else ``shard`` (a SLURM array task); else all.
    Every scan is in exactly one shard (no padding, unlike ``DistributedSampler``), so
    :func:`interleave` of the shards' rows restores the input order.

    Args:
        records: the data dicts, in input order.
        shard: ``INDEX/COUNT`` or ``(index, count)`` (:func:`parse_shard`), or None.

    Returns:
        the records of this shard, in input order.
    """
    chosen = _this_shard(shard)
    if chosen is None:
        return list(records)
    index, count = chosen
    return list(records)[index::count]


def shard_path(path: str, shard: str | Shard | None = None) -> str:
    """The output path of one ``--shard`` (``x.csv`` -> ``x.shard-1-of-4.csv``); ``path`` without it.

    Under a multi-process launcher rank 0 writes the merged file under ``path`` itself.

    Args:
        path: the output file of a whole run.
        shard: the ``--shard`` option.

    Returns:
        the path this process writes.
    """
    chosen = parse_shard(shard)
    if chosen is None:
        return path
    stem, dot, suffix = path.rpartition(".")
    if not dot or "/" in suffix:
        stem, suffix = path, ""
    return f"{stem}.shard-{chosen[0]}-of-{chosen[1]}" + (f".{suffix}" if suffix else "")


def interleave(parts: list[list]) -> list:
    """The inverse of the sharding of :func:`shard_records`: item ``j`` of part ``k`` is item
    ``j * len(parts) + k`` of the result.

    Args:
        parts: every shard's items, in shard order.

    Returns:
        the items in input order.
    """
    out = []
    for j in range(max((len(p) for p in parts), default=0)):
        out.extend(p[j] for p in parts if j < len(p))
    return out


def gather_shards(items: list) -> list[list]:
    """Every rank's ``items`` (picklable), in rank order; ``[items]`` without a process group.

    Called on every rank (a collective).
    """
    if not is_distributed() or world_size() == 1:
        return [items]
    every: list = [None] * world_size()
    dist.all_gather_object(every, items)
    return every
