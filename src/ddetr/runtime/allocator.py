"""Keep freed memory in the process (glibc's malloc): a training or inference step reuses its pages.

A Deformable DETR step allocates and frees tensors of a few MB each many times. glibc serves such blocks with
fresh ``mmap`` pages, or returns the freed top of its heap to the kernel, so the next step touches new pages
again: about 11,000 page faults per training step of the demo's model (each a zeroed 4 KiB page) on this
project's 2-core test machine (``bench/cpu_step.py``). :func:`keep_freed_memory` raises glibc's thresholds
(``mallopt``): blocks up to 32 MB come from the heap and freed memory stays there for the next step (about 540
page faults per step, and the step takes 0.82 of the time). The process's peak memory is unchanged; it is simply not handed back between steps.

This is process-wide, as PyTorch's advice to use jemalloc or tcmalloc is; ``DDETR_KEEP_FREED_MEMORY=0``
turns it off. Other C libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

#: mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: blocks up to this size come from the heap (glibc's largest allowed mmap threshold on 64-bit systems)
MMAP_THRESHOLD = 32 << 20
#: freed memory at the top of the heap is given back to the kernel only above this size
TRIM_THRESHOLD = 1 << 30
#: extra heap grown at a time, so that growing the heap is rare
TOP_PAD = 64 << 20

ENV = "DDETR_KEEP_FREED_MEMORY"

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds once per process; returns whether they are set.

    False (and nothing changed) off Linux, without glibc, or with ``DDETR_KEEP_FREED_MEMORY=0``.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    _done = all(mallopt(parameter, value) == 1 for parameter, value in settings)
    if not _done:
        logger.debug("mallopt refused ddetr's malloc thresholds; the C library's defaults stay")
    return _done
