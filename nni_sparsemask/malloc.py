"""The process's CPU memory allocator: glibc's malloc, tuned the way jemalloc and tcmalloc behave.

By default glibc gives every block above a moving threshold (128 KiB at first) its own ``mmap`` and returns freed
memory at the top of the heap to the system. A segmentation network at batch 1 allocates the same large feature
maps on every forward and backward pass, so each pass faults fresh pages in again. Two ``mallopt`` settings stop
that: blocks up to 32 MiB come from the heap (``M_MMAP_THRESHOLD``), and the heap is not trimmed below 1 GiB of
free memory (``M_TRIM_THRESHOLD``). The numerics do not change; the memory a process holds stays at its peak.

The ``sparsemask`` commands and the comparison's trials call :func:`tune` first. Importing the library changes
nothing: a Python program decides its own allocator (or sets the same ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` environment variables, or preloads jemalloc). ``NNI_SPARSEMASK_MALLOC=default`` keeps
glibc's behaviour in the commands too, e.g. to time networks the way an untuned PyTorch process runs them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune", "state"]

ENV = "NNI_SPARSEMASK_MALLOC"
MMAP_THRESHOLD = 32 << 20     # bytes: blocks up to this size come from the heap
TRIM_THRESHOLD = 1 << 30      # bytes of free memory at the heap's top before it is returned to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's malloc.h
_MODES = ("tuned", "default")
_state = "default (glibc's settings: not changed by this process)"


def _requested() -> str:
    mode = os.environ.get(ENV, "tuned").strip().lower() or "tuned"
    if mode not in _MODES:
        raise ValueError(f"{ENV} must be 'tuned' or 'default', got {os.environ[ENV]!r}")
    return mode


def tune() -> str:
    """Apply the tuned settings to this process unless ``NNI_SPARSEMASK_MALLOC=default``; returns :func:`state`.

    A no-op, said so in the returned text, where the C library is not glibc (macOS, Windows, musl). A value of
    ``NNI_SPARSEMASK_MALLOC`` other than ``tuned`` or ``default`` is a ``ValueError``."""
    global _state
    if _requested() == "default":
        _state = f"default ({ENV}=default)"
        return _state
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = f"default (not glibc: {platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
        return _state
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state = (f"tuned (glibc mallopt: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
              f"{TRIM_THRESHOLD >> 30} GiB)" if ok else "default (glibc refused mallopt)")
    return _state


def state() -> str:
    """What this process's allocator is, as a line for a log or a results file."""
    return _state
