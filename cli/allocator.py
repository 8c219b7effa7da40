"""Keep the memory a scoring batch frees for the next batch, instead of handing it back to the kernel.

Every batch allocates the same few dozen tensors of 1-5 MiB (network activations, the patch bank of
the frame's neighbours, decoded 960x540 frames). glibc's malloc serves blocks that large with fresh
`mmap`s, or trims them off the top of its heap when they are freed, so the next batch faults every
page in again: on the fleet model that was a third of the time `score_prepared` takes in PyTorch
(3.2-4.2 against 2.2-2.9 ms a frame, in-process, alternating). Raising the mmap threshold and the trim
threshold keeps those pages mapped between batches; the process's peak memory is what it already
needed for one batch, plus at most the trim threshold kept at the top of the heap.

Process-wide, so it is set once at the command line's edge, never by the core; the processes the
command starts (`anomaly score --engine ray`'s workers) get it as environment variables
(`worker_environment`). A no-op where the C library is not glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes

# mallopt(3) parameters of glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit; above any one tensor of a batch
TRIM_THRESHOLD = 256 << 20
TOP_PAD = 64 << 20


def worker_environment() -> dict[str, str]:
    """The same settings as the environment variables glibc's malloc reads when a process starts
    (mallopt(3)), for the processes this one has started for it (Ray's scoring and decoding workers),
    which `keep_freed_memory` here cannot reach. Ignored by other C libraries."""
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
        "MALLOC_TOP_PAD_": str(TOP_PAD),
    }


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; True when it took effect."""
    try:  # the process's own symbols, libc's among them: no `find_library`, which runs `ldconfig` to look
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, TypeError, AttributeError):  # no mallopt (not glibc), or no such handle (Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
