"""Keep freed memory in the runtime's heap instead of handing it back to the kernel at once.

:func:`tune_allocator` sets fixed glibc thresholds that fit the largest object the app API
accepts (10 MiB), so a storage call does not fault in fresh pages each time; up to
:data:`TRIM_THRESHOLD` bytes of freed memory may stay resident. Measurements and reasons:
docs/architecture.md, "The runtime's allocator".
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
