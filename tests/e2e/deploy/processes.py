"""TEST-ONLY: processes the deploy harness starts, recorded by pid so they are stopped by pid.

A record is a file holding ``<pid> <start ticks>``: the start time from ``/proc/<pid>/stat``
tells the process apart from a later one that got the same pid, so a stale record never stops
a stranger.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

POLL_S = 0.05


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks, or None when it is gone or a zombie."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if rest[0] in ("Z", "X") else rest[19]


def write_record(path: Path, pid: int) -> None:
    """Record ``pid`` (and its start time) in ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {start_ticks(pid) or ''}\n", encoding="ascii")


def read_record(path: Path) -> tuple[int, str] | None:
    """The recorded pid and start time, or None without a (readable) record."""
    try:
        pid, ticks = path.read_text(encoding="ascii").split()
        return int(pid), ticks
    except (OSError, ValueError):
        return None


def alive(record: tuple[int, str] | None) -> bool:
    """Whether the recorded process still runs (the same one: same start time)."""
    return record is not None and start_ticks(record[0]) == record[1]


def stop(record: tuple[int, str] | None, *, grace_s: float) -> None:
    """SIGTERM the recorded process, then SIGKILL its process group after ``grace_s``.

    The processes the harness starts lead their own session (``start_new_session``), so the
    group is theirs alone: what they started and left behind goes with them.
    """
    if not alive(record):
        return
    assert record is not None
    pid = record[0]
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace_s
    while alive(record) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass  # the group is gone with its leader
    deadline = time.monotonic() + grace_s
    while alive(record) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def stop_recorded(path: Path, *, grace_s: float) -> None:
    """:func:`stop` the process recorded in ``path``, if any."""
    stop(read_record(path), grace_s=grace_s)
