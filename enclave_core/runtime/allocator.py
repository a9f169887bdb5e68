"""Keep freed memory in the runtime's heap instead of handing it back to the kernel at once.

glibc serves allocations above its mmap threshold (128 KiB at first, raised on the fly up to
32 MiB) with fresh ``mmap`` pages and trims the top of the heap as soon as more than twice that
is free. The runtime allocates and frees a few object-sized buffers per storage call (the
ciphertext read from the backend, the plaintext returned to the app), so with the defaults a
1 MiB get pays for 256 page faults and zeroed pages on every call: measured, that tripled the
cost of decrypting a 1 MiB object (docs/benchmarks.md).

Inside a Nitro Enclave the memory is carved out for the enclave at launch and nobody else can
use it, so pages returned to the enclave's kernel are wasted work. :func:`tune_allocator` sets
fixed thresholds that fit the largest object the app API accepts (10 MiB) with room to spare;
the price is that up to :data:`TRIM_THRESHOLD` bytes of freed memory stay resident after a
burst of large objects. The idle footprint is unchanged (nothing is allocated until it is used).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from loguru import logger

# mallopt(3) parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 16 << 20  # allocations below this come from the heap and are reused
TRIM_THRESHOLD = 64 << 20  # free memory at the top of the heap kept for the next request


def tune_allocator() -> bool:
    """Apply the thresholds on glibc; return whether they took effect (False elsewhere)."""
    if platform.libc_ver()[0] != "glibc":
        return False  # musl and others have no mallopt with these meanings
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        logger.warning("could not set the allocator thresholds; large objects cost more")
    return ok
