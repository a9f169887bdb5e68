"""The log channel: the runtime's and the app's log lines, streamed from the enclave to the host.

Outside debug mode a Nitro enclave has no console. :class:`LogChannelSender` is a loguru sink
that queues every formatted line in memory and a thread sends them to ``vsock://3:8003``
(:data:`LOG_PORT`; ``ENCLAVE_LOG_PORT`` overrides it on both ends); the host's end is
:mod:`enclave_core.supervisor.logreceiver`. Bounds and delivery: docs/architecture.md,
"The log channel".
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.log import format_record
from enclave_core.streams import transport
from enclave_core.streams.host_bridges import in_enclave

LOG_PORT = 8003
LOG_PORT_ENV = "ENCLAVE_LOG_PORT"
MAX_LINE_BYTES = 64 * 1024
QUEUE_LINES = 10_000
QUEUE_BYTES = 8 * 1024 * 1024  # the enclave's memory is small: bound bytes too, not only lines
MAX_FILE_BYTES = 64 * 1024 * 1024
LOG_FILE = Path("logs") / "runtime.log"
_SOURCE = "log-channel"


def log_port() -> int:
    """The channel's port: ``ENCLAVE_LOG_PORT`` when set, else :data:`LOG_PORT`."""
    text = os.environ.get(LOG_PORT_ENV, "")
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else LOG_PORT


def notice_line(msg: str, level: str = "WARNING", **fields: Any) -> bytes:
    """A JSON line of the channel itself (``"source": "log-channel"``), newline included."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    entry = {"time": now, "level": level, "msg": msg, "source": _SOURCE, **fields}
    return json.dumps(entry).encode() + b"\n"


def bound_line(line: str, limit: int = MAX_LINE_BYTES) -> bytes:
    """Encode one JSON line (newline added), shortening its ``msg`` so it fits in ``limit``."""
    data = line.encode("utf-8", errors="replace") + b"\n"
    if len(data) <= limit:
        return data
    try:
        entry = json.loads(line)
    except ValueError:
        entry = {"msg": line}
    # Keep what identifies the line; the bulky bound fields go.
    kept = {k: entry[k] for k in ("time", "level", "source", "stream") if k in entry}
    msg = str(entry.get("msg", ""))
    kept.update(truncated=True, bytes=len(data))
    while True:
        out = json.dumps({**kept, "msg": msg}).encode() + b"\n"
        if len(out) <= limit or not msg:
            return out
        msg = msg[: len(msg) // 2]


class LogChannelSender:
    """The enclave end: a non-blocking loguru sink feeding a sender thread."""

    def __init__(
        self,
        address: str,
        *,
        max_lines: int = QUEUE_LINES,
        max_bytes: int = QUEUE_BYTES,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        send_timeout_s: float = 10.0,
    ) -> None:
        self.address = address
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._bytes = 0  # in the queue
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._send_timeout_s = send_timeout_s
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._sink_id: int | None = None
        #: Lines dropped because the queue was full (never reset).
        self.dropped = 0
        self._reported = 0
        #: Lines handed to the socket.
        self.sent = 0

    def sink(self, message: Any) -> None:
        """loguru sink: queue the record's JSON line; never blocks on the network."""
        self.put(bound_line(format_record(message.record)))

    def put(self, line: bytes) -> None:
        """Queue one encoded line, dropping the oldest when the queue is full."""
        with self._cond:
            self._queue.append(line)
            self._bytes += len(line)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Drop the oldest lines beyond the bounds (the lock is held)."""
        while len(self._queue) > self._max_lines or (
            self._bytes > self._max_bytes and len(self._queue) > 1
        ):
            self._bytes -= len(self._queue.popleft())
            self.dropped += 1

    def queued(self) -> int:
        """How many lines wait to be sent."""
        with self._cond:
            return len(self._queue)

    def start(self, level: str = "INFO", filter: Any = None) -> None:
        """Start the sender thread and add the sink to loguru (``filter`` as loguru's)."""
        self._thread = threading.Thread(target=self._run, name="log-channel", daemon=True)
        self._thread.start()
        self._sink_id = logger.add(self.sink, level=level, filter=filter, catch=True)

    def close(self, timeout_s: float = 2.0) -> None:
        """Remove the sink and give the thread ``timeout_s`` to send what is queued."""
        if self._sink_id is not None:
            logger.remove(self._sink_id)
            self._sink_id = None
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the sender thread ---------------------------------------------------------------------
    def _take(self) -> tuple[list[bytes], int] | None:
        """Wait for lines; None once closing and drained. Also: drops not yet reported."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            batch = list(self._queue)
            self._queue.clear()
            self._bytes = 0
            return batch, self.dropped - self._reported

    def _requeue(self, batch: list[bytes]) -> None:
        """Put an unsent batch back in front, still within the bound."""
        with self._cond:
            self._queue.extendleft(reversed(batch))
            self._bytes += sum(len(line) for line in batch)
            self._trim()

    def _pause(self, seconds: float) -> bool:
        """Sleep unless closing; False when closing."""
        with self._cond:
            if not self._closing:
                self._cond.wait(seconds)
            return not self._closing

    def _run(self) -> None:
        sock: socket.socket | None = None
        delay = self._backoff[0]
        try:
            while (taken := self._take()) is not None:
                batch, dropped = taken
                if sock is not None and _peer_closed(sock):
                    sock.close()
                    sock = None
                if sock is None:
                    try:
                        sock = transport.connect_sync(self.address, timeout=self._send_timeout_s)
                        delay = self._backoff[0]
                    except (OSError, ValueError):
                        self._requeue(batch)
                        if not self._pause(delay):
                            return  # closing with the host unreachable: give up the rest
                        delay = min(delay * 2, self._backoff[1])
                        continue
                notice = [notice_line("log lines dropped", dropped=dropped)] if dropped else []
                try:
                    sock.sendall(b"".join(notice + batch))
                    self.sent += len(batch)
                    self._reported += dropped
                except OSError:
                    sock.close()
                    sock = None
                    self._requeue(batch)
        finally:
            if sock is not None:
                sock.close()


def _peer_closed(sock: socket.socket) -> bool:
    """True when the host end hung up (it never sends, so readable means EOF or error)."""
    try:
        poller = select.poll()  # not select.select: no FD_SETSIZE limit
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def add_log_channel_sink(
    address: str,
    *,
    level: str = "INFO",
    filter: Any = None,
    **kw: Any,
) -> LogChannelSender:
    """Stream loguru records at ``level`` or above to ``address``; ``close()`` when done.

    :param filter: loguru's ``filter`` (a module name, a dict of levels or a callable).
    :param kw: :class:`LogChannelSender` options (queue bound, backoff, send timeout).
    """
    sender = LogChannelSender(address, **kw)
    sender.start(level, filter)
    return sender


def start_runtime_channel(config: Config) -> LogChannelSender | None:
    """In a Nitro enclave, start sending logs to the parent instance; None elsewhere."""
    if not in_enclave(config):
        return None
    return add_log_channel_sink(f"vsock://{transport.VSOCK_PARENT_CID}:{log_port()}")
