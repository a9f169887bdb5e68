"""The runtime's allocator thresholds: applied on glibc, reported honestly elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys

from enclave_core.runtime import allocator


def test_thresholds_take_effect_on_glibc() -> None:
    # In a child process: the thresholds are process-wide and must not leak into the test run.
    code = "from enclave_core.runtime.allocator import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == str(expected)


def test_other_c_libraries_are_left_alone(monkeypatch) -> None:
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.tune_allocator() is False


def test_thresholds_fit_the_largest_stored_object() -> None:
    # The app API takes storage bodies up to 10 MiB (README: App API): those must stay on the heap.
    assert allocator.MMAP_THRESHOLD > 10 << 20
    assert allocator.TRIM_THRESHOLD >= 2 * allocator.MMAP_THRESHOLD
