"""Keep freed memory for reuse: a glibc ``malloc`` setting that speeds up CPU training (standard library).

PyTorch allocates CPU tensors with ``malloc``. glibc serves every block above its mmap threshold (at
most 32 MB) with a fresh ``mmap`` and returns it with ``munmap`` when it is freed, so each training
step gets its large activations (hundreds of MB for a batch of 728 slices) as new pages, which the
kernel must fault in and zero again. Measurements: ``docs/benchmarks.md``, "Why the fast path has its
own CPU convolutions and malloc setting" (``scripts/bench_cpu_kernels.py``). The price is a higher
peak resident memory, because the heap keeps its largest size and can fragment.

The same effect is what ``LD_PRELOAD``-ing jemalloc or tcmalloc gives (Intel's usual advice for
PyTorch on CPUs); :func:`keep_freed_memory` gets it from the running process with ``mallopt``, so a
``python -m monai.bundle run`` needs no wrapper.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

from mri_slice_transfer.engine.options import as_bool

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: mallopt takes an int: the largest trim threshold it accepts (2 GiB of free heap top kept).
_MAX_TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory(enabled: bool | str = True) -> bool:
    """Make glibc ``malloc`` serve large blocks from its heap and keep freed memory for reuse.

    Sets ``M_MMAP_MAX = 0`` (no ``mmap`` per large block) and ``M_TRIM_THRESHOLD`` to 2 GiB (freed
    memory at the top of the heap is not given back to the system below that). Affects the whole
    process from now on; memory already allocated is unchanged.

    Args:
        enabled: False (or ``"false"``) does nothing (so a bundle config can switch it off).

    Returns:
        True if the settings were applied; False if ``enabled`` is False or the C library is not glibc
        (macOS, Windows, musl), where nothing is changed.
    """
    if not as_bool(enabled) or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has no such symbol
    except (OSError, AttributeError):
        logger.info("keep_freed_memory: not glibc, malloc settings unchanged")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _MAX_TRIM_THRESHOLD))
    if ok:
        logger.info("malloc keeps freed memory for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)")
    return ok
