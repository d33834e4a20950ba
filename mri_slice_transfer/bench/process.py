"""Run one measurement in a fresh process and read its memory use (standard library only).

Every configuration of the benchmark runs in its own child process, so that its peak memory is its
own and a crash (e.g. out of memory) only loses that row. By default the children are forked from a
multiprocessing *forkserver* that has imported torch, MONAI and the package once (:data:`PRELOAD`) but
has run no tensor operation: each child starts in milliseconds from a clean state (no allocator
caches, no thread pools, no CUDA context) instead of paying several seconds of imports.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import resource
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = [
    "ISOLATIONS",
    "PRELOAD",
    "WorkerError",
    "default_isolation",
    "run_isolated",
    "rss_mb",
    "peak_rss_mb",
]

#: How measurements are isolated: ``forkserver`` / ``spawn`` (a fresh child process each) or ``none``
#: (in this process: faster to start, but the peak memory then includes everything run before).
ISOLATIONS: tuple[str, ...] = ("forkserver", "spawn", "none")
#: Modules the forkserver imports once before forking the measurement children.
PRELOAD: tuple[str, ...] = ("mri_slice_transfer.bench.measure", "mri_slice_transfer.bench.pipeline")


class WorkerError(RuntimeError):
    """A measurement failed in its child process (the message says how, with the child's traceback)."""


def default_isolation() -> str:
    """``forkserver`` where the platform has it (Linux, macOS), else ``spawn``."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def rss_mb() -> float | None:
    """Current resident set size of this process in MiB (None if it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (``getrusage(RUSAGE_SELF).ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _child(conn: Any, target: str, kwargs: dict) -> None:
    try:
        result = _resolve(target)(**kwargs)
        conn.send(("ok", result))
    except BaseException as exc:  # report everything, including KeyboardInterrupt, to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code} without a result"


def run_isolated(
    target: str, kwargs: dict[str, Any], isolation: str = "forkserver", timeout: float | None = None
) -> Any:
    """Call ``module:function`` with ``kwargs`` in a fresh child process and return its result.

    Args:
        target: ``"package.module:function"``; the function and its result must be picklable.
        kwargs: keyword arguments (picklable).
        isolation: one of :data:`ISOLATIONS`; ``"none"`` calls the function in this process.
        timeout: seconds before the child is killed (None: no limit).

    Raises:
        WorkerError: the function raised (message and the child's traceback), the child died (e.g.
            killed by the out-of-memory killer) or timed out.
    """
    if isolation not in ISOLATIONS:
        raise ValueError(f"unknown isolation {isolation!r}; choose one of {', '.join(ISOLATIONS)}")
    if isolation == "none":
        try:
            return _resolve(target)(**kwargs)
        except Exception as exc:
            raise WorkerError(f"{type(exc).__name__}: {exc}") from exc
    ctx = mp.get_context(isolation)
    if isolation == "forkserver":
        ctx.set_forkserver_preload(list(PRELOAD))
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, target, kwargs), daemon=True)
    proc.start()
    send.close()  # only the child holds the write end: its exit makes recv() fail instead of hang
    message = None
    timed_out = False
    try:
        if recv.poll(timeout):
            message = recv.recv()
        else:
            timed_out = True
    except EOFError:
        message = None
    finally:
        if message is None and proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
    if message is None:
        if timed_out:
            raise WorkerError(f"measurement process timed out after {timeout:g} s and was killed")
        raise WorkerError(f"measurement process {_exit_reason(proc.exitcode)}")
    if message[0] == "ok":
        return message[1]
    raise WorkerError(f"{message[1]}\n--- traceback in the measurement process ---\n{message[2]}")
