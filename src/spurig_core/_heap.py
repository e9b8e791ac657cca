"""Freed memory kept for reuse inside the gridded operator's heavy calls (issue #14).

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
mapping and unmaps it when it is freed, so the kernel faults in and zeroes its pages again on every
use.  The gridded data term allocates and frees such blocks all the time: each of a gram's
``2 × basis × coils`` FFT results (287 MB at 220³ on the 1.5× grid, 681 MB on LLR's 2× grid).  At
96³ a SPUR-iG reconstruction took 2.5–3.6 million minor page faults (10–14 GB of fresh pages).

:func:`reusing_freed_memory` (a context manager and a decorator) turns both off for its duration:
no blocks of their own mapping (``M_MMAP_MAX = 0``) and no returning of freed memory to the system
(``M_TRIM_THRESHOLD = -1``), so a freed block's pages are reused by the next allocation.  On the
way out glibc's defaults are restored and the freed memory is handed back (``malloc_trim(0)``).
:class:`~spurig_core.operators.encoding.GriddedSubspaceEncoding` runs its forward, adjoint, gram
and ``A^H b`` inside it, one call at a time: their blocks are all of one size, so what is freed is
reused, and the peak does not rise (220³ DC steps only: 180 → 117 s, peak 13.4 → 13.4–13.9 GB;
``benchmarks/RESULTS.md``, session 31).  Held over a whole reconstruction, or over the UNet's
activations of many sizes, the holes it leaves raised the peak instead (220³ SPUR-iG: 16.6 →
21.4 GB over the UNet, 24 GB and killed over the whole reconstruction), so neither does.

It does nothing where it cannot or should not act: outside glibc (macOS, Windows, musl), when the
process started with malloc tuned (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``GLIBC_TUNABLES``: a user's, or dask's for its
workers), and when ``SPURIG_HEAP_REUSE=0``.  Nested and
concurrent uses share one setting: the last one to leave restores the defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["heap_reuse_available", "reusing_freed_memory"]

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's defaults (malloc/malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX)
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536

_USER_TUNED = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)

_lock = threading.Lock()
_depth = 0
_libc: Any = None
_started_with: frozenset[str] | None = None


def _glibc() -> Any:
    """Return the process's glibc (with ``mallopt`` and ``malloc_trim``), else ``None``."""
    global _libc
    if _libc is None:
        lib: Any = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                cand = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(cand, "mallopt") and hasattr(cand, "malloc_trim"):
                    cand.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    cand.mallopt.restype = ctypes.c_int
                    cand.malloc_trim.argtypes = [ctypes.c_size_t]
                    cand.malloc_trim.restype = ctypes.c_int
                    lib = cand
            except OSError:
                lib = False
        _libc = lib
    return _libc or None


def _startup_names() -> frozenset[str]:
    """Names of the environment the process started with (what glibc read), cached."""
    global _started_with
    if _started_with is None:
        try:
            with open("/proc/self/environ", "rb") as f:
                raw = f.read().split(b"\0")
            _started_with = frozenset(
                v.split(b"=", 1)[0].decode(errors="replace") for v in raw if v
            )
        except OSError:
            _started_with = frozenset(os.environ)
    return _started_with


def heap_reuse_available() -> bool:
    """Whether :func:`reusing_freed_memory` acts in this process (see the module's notes).

    A malloc variable counts when the process started with it, as glibc reads them only then:
    dask's nanny, for one, sets ``MALLOC_TRIM_THRESHOLD_`` in its parent's ``os.environ`` for
    the workers it spawns (those then start with it, and are left alone).
    """
    if os.environ.get("SPURIG_HEAP_REUSE", "1").strip() == "0":
        return False
    if any(name in _startup_names() for name in _USER_TUNED):
        return False
    return _glibc() is not None


def _enter() -> bool:
    global _depth
    if not heap_reuse_available():
        return False
    libc = _glibc()
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, -1)  # -1: never trim
        _depth += 1
    return True


def _leave() -> None:
    global _depth
    libc = _glibc()
    with _lock:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.malloc_trim(0)


@contextlib.contextmanager
def reusing_freed_memory() -> Iterator[bool]:
    """Keep freed memory in the process for reuse inside the block (glibc; else a no-op).

    Usable as ``with reusing_freed_memory():`` or as a decorator.

    Yields
    ------
    bool
        Whether the setting is in effect (:func:`heap_reuse_available`).
    """
    active = _enter()
    try:
        yield active
    finally:
        if active:
            _leave()
