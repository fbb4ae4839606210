"""Keep freed tensor memory in the process for CPU inference (glibc only).

torch's CPU tensors come from malloc. glibc serves blocks above its mmap threshold with fresh pages from the
kernel and trims freed memory at the top of the heap back to it, so every frame faulted its multi-megabyte
temporaries in again, page by page: 4k-60k minor faults and 36-200 ms of system time per lite prediction on 2
cores. A 32 MB mmap threshold with a 128 MB trim threshold reuses that memory instead: ~0-1k faults and 10-25 ms of
system time, the same peak RSS (lite 0.54-0.56 GB; paper 3.45 GB against 3.44 GB untuned). Larger thresholds
(256 / 512 MB) kept more of the paper model's big temporaries in the heap and raised its peak RSS to 4.6 GB.

The two settings go together: a trim threshold alone switches off glibc's adaptive mmap threshold at its 128 KB
start, which made every large tensor an mmap and a prediction twice as slow. ``SCANSSC_MALLOC_TUNING=0`` leaves
malloc alone. Outputs do not depend on it.

32 MB is the largest mmap threshold 64-bit glibc accepts, and the paper model's volumes are 110-400 MB: it still
takes 2.3-2.7 M faults (10 GB of fresh pages) and 7-8 s of system time per frame, most in the mixers and the
depth stage. ``SCANSSC_MALLOC_TUNING=heap`` switches mmap off for malloc (every block from the heap) and heap
trimming with it, so one frame's memory is reused by the next: paper frames from the second on 0-100k faults,
0.3-2 s of system time and 30-35 s against 36-43 s (alternating processes, 3 frames each, 2026-12-04), lite
unchanged (it has ~0 faults either way). It is opt-in because the heap fragments: the paper's peak RSS was
3.46-3.92 GB over seven processes against 2.7 GB, and with the leaner code of 2026-12-05 still 3.08-3.57 GB over
three (23.3-23.8 s per frame) against 2.6 GB: above what a laptop replaying bags may want to give, and the process
keeps that memory. Within one frame the model itself now reuses its 134 MB volumes (``model/buffer_pool.py``):
0.9-1.1 M instead of 1.4-1.6 M faults per paper frame in the default setting (2026-12-05 afternoon).

All threads allocate from glibc's one main arena (``M_ARENA_MAX`` 1), where the thresholds above apply. The node
runs inference on a worker thread, and a thread's own arena grows in heaps of at most 64 MB that glibc gives back
when they empty: lite inference on such a thread took ~38 k page faults and ~100 ms of system time per frame,
against none and 4 ms on the main arena (2026-12-05 evening). The setting binds threads that have not allocated
yet, so ``scanssc_node`` applies it before ROS starts any thread; threads that already have an arena keep it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
from typing import Optional

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8  # glibc <malloc.h>
MMAP_THRESHOLD = 32 << 20  # the largest value every 64-bit glibc accepts
TRIM_THRESHOLD = 128 << 20
_APPLIED: dict = {}
log = logging.getLogger(__name__)


def tune_malloc() -> Optional[str]:
    """Set glibc's mmap and trim thresholds (and one arena for all threads) once per process. Returns what was
    set, or None (not glibc, opted out, or refused)."""
    if "result" in _APPLIED:
        return _APPLIED["result"]
    _APPLIED["result"] = result = _apply()
    if result:
        log.info("malloc: %s", result)
    return result


def _apply() -> Optional[str]:
    mode = os.environ.get("SCANSSC_MALLOC_TUNING", "1").strip().lower()
    if mode in ("0", "false", "no", "off"):
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mode == "heap":  # trim threshold -1: never trim (mallopt(3))
        mmap, trim, what = (_M_MMAP_MAX, 0), -1, "glibc mmap off, heap trimming off"
    else:
        mmap, trim = (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), TRIM_THRESHOLD
        what = f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MB, trim threshold {TRIM_THRESHOLD >> 20} MB"
    if mallopt(*mmap) != 1:
        return None  # never the trim threshold alone (see above)
    if mallopt(_M_TRIM_THRESHOLD, trim) != 1:
        return None
    if mallopt(_M_ARENA_MAX, 1) == 1:
        what += ", one arena"
    return what
