"""glibc malloc settings for XLA on the CPU: keep freed memory instead of handing it back.

XLA's CPU runtime allocates each executable's temporaries afresh on every call. With glibc's
defaults, blocks that large are mmap'ed (or come from per-thread arenas that are trimmed), so
every call page-faults its whole working set back in, and the kernel zeroes each page. Measured
on a 2-core Intel Xeon with AVX-512 (jax 0.10.2): one serving decode step of the tiny preset
(16 slots, 256 cached positions) spent 42% of its time in the kernel (`exc_page_fault`,
`clear_page_erms`) and took 38 ms; with one arena, no mmap and a high trim threshold it takes
19 ms. (A training step of the cpu-ref benchmark, whose temporaries are reused within one long
call, did not change: 1,236 vs 1,247 ms, median of 12, `--no-malloc-tuning` in
experiments/benchmark.) Setting the variables
MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... does the same from outside;
`mallopt` does it from inside the process, and works after JAX has started.

The price: the process keeps up to TRIM_THRESHOLD bytes of freed heap mapped rather than
returning it to the system. Only the CPU backend needs this (accelerator buffers are not
malloc'ed), so it is applied there only; LLMOS_TUNE_MALLOC=0 turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 1 << 30  # an int (mallopt takes a C int): 1 GiB of freed heap kept at most

_applied = False


def tune_malloc_for_cpu(backend: str | None = None) -> bool:
    """Applies the settings once per process when JAX runs on the CPU under glibc.

    `backend`: the JAX backend name, when the caller knows it (else asks JAX, which starts it).
    Returns whether the settings are in force.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("LLMOS_TUNE_MALLOC", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend != "cpu":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        log.warning("mallopt refused a setting; XLA CPU calls may page-fault their temporaries")
    _applied = ok
    return ok
