"""Low-level helpers of the app supervisor: parent-death signal, readiness probe, log relay."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

from loguru import logger

PR_SET_PDEATHSIG = 1
MAX_LINE_BYTES = 64 * 1024
PROBE_TIMEOUT_S = 5.0


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# Loaded once here: a preexec_fn should do as little as possible between fork and exec.
_LIBC = _load_libc()


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` making the child receive SIGKILL when the runtime dies (Linux)."""

    def preexec() -> None:
        if _LIBC is None:
            return
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


async def probe(port: int, health_path: str | None) -> str | None:
    """Check the app: None when its port accepts connections (and ``health_path`` answers 2xx).

    :returns: None when healthy, else a short description of what failed.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), PROBE_TIMEOUT_S
        )
    except (TimeoutError, OSError):
        return f"port {port} does not accept connections"
    try:
        if health_path is None:
            return None
        request = (
            f"GET {health_path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "User-Agent: simple-enclave-runtime\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT_S)
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] == b"2":
            return None
        status = parts[1].decode("latin-1") if len(parts) >= 2 else "no status line"
        return f"GET {health_path} answered {status}"
    except (TimeoutError, OSError, ValueError) as exc:
        return f"GET {health_path} failed: {type(exc).__name__}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _emit(stream: str, raw: bytes) -> None:
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    # "{}" keeps the app's text out of the format string: braces in it are not interpreted.
    logger.bind(source="app", stream=stream).info("{}", text)


async def relay_lines(reader: asyncio.StreamReader | None, stream: str) -> None:
    """Re-log every line the app writes, unaltered, with ``source="app"``.

    Lines longer than 64 KiB are split rather than buffered without bound.
    """
    if reader is None:
        return
    buffer = b""
    while True:
        chunk = await reader.read(MAX_LINE_BYTES)
        if not chunk:
            break
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            _emit(stream, buffer[:newline])
            buffer = buffer[newline + 1 :]
        while len(buffer) >= MAX_LINE_BYTES:
            _emit(stream, buffer[:MAX_LINE_BYTES])
            buffer = buffer[MAX_LINE_BYTES:]
    if buffer:
        _emit(stream, buffer)
