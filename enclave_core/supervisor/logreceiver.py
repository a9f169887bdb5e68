"""The supervisor's end of the log channel: the enclave's log lines into ``logs/runtime.log``.

The enclave's end, the wire format and the port are in :mod:`enclave_core.streams.logchannel`. The
receiver listens on ``vsock://ANY:8003`` (loopback TCP when the launcher maps enclave ports to
TCP, as the fake nitro-cli of the tests does), takes one connection per peer (a new one from the
same peer, a restarted enclave, replaces the old), bounds lines to 64 KiB (a longer one becomes a
notice), appends them to the state directory's ``logs/runtime.log`` (0600, rotated to
``runtime.log.1`` past 64 MiB) and echoes them on the supervisor's stderr, hence journald.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol, TextIO

from loguru import logger

from enclave_core.config import Config
from enclave_core.log import render_echoed
from enclave_core.streams import transport
from enclave_core.streams.logchannel import (
    LOG_FILE,
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    log_port,
    notice_line,
)


class LogChannelReceiver:
    """The host end: appends the lines enclaves send to the log file (and echoes them).

    :param echo: also write each line there (the supervisor's stderr, hence journald).
    :param on_line: also called with each line, without its newline.
    """

    def __init__(
        self,
        listen: str,
        log_path: Path,
        *,
        echo: TextIO | None = None,
        on_line: Callable[[str], None] | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.listen = listen
        self.log_path = log_path
        self._echo = echo
        self._on_line = on_line
        self._max_line = max_line_bytes
        self._max_file = max_file_bytes
        self._server: asyncio.AbstractServer | None = None
        self._active: dict[str, asyncio.Task[None]] = {}
        self._file: IO[bytes] | None = None
        self._size = 0
        self._inode = 0
        #: Lines written to the file since start.
        self.lines_written = 0

    async def start(self) -> None:
        """Open the log file and listen (OSError or ValueError when it cannot)."""
        self._open()
        try:
            self._server = await transport.listen(self.listen, self._handle)
        except BaseException:
            self._close_file()
            raise
        logger.info("log channel listening", listen=self.listen, file=str(self.log_path))

    async def close(self) -> None:
        """Stop listening, cut the connections, close the file."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._close_file()

    def _open(self) -> None:
        folder = self.log_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "ab")
        stat = os.fstat(fd)
        self._size, self._inode = stat.st_size, stat.st_ino

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        if self._file is None or not data:
            return
        if self._size and self._size + len(data) > self._max_file:
            self._close_file()
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
            self._open()
        elif not self._same_file():
            self._close_file()  # removed or moved away by someone: start a new one
            self._open()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        self.lines_written += len(lines)
        text = data.decode("utf-8", errors="replace")
        if self._echo is not None:
            # In the supervisor's log format: as received with JSON logs, readable otherwise.
            shown = "".join(render_echoed(line) + "\n" for line in text.split("\n")[:-1])
            with contextlib.suppress(OSError, ValueError):
                self._echo.write(shown)
                self._echo.flush()
        if self._on_line is not None:
            for line in text.splitlines():
                self._on_line(line)

    def _same_file(self) -> bool:
        try:
            return os.stat(self.log_path).st_ino == self._inode
        except FileNotFoundError:
            return False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        key = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        task = asyncio.current_task()
        assert task is not None
        previous = self._active.get(key)
        if previous is not None:
            previous.cancel()  # a restarted enclave: its old connection is dead or dying
        self._active[key] = task
        logger.info("log channel connected", peer=key)
        try:
            await self._read_lines(reader)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            if self._active.get(key) is task:
                del self._active[key]
            writer.close()
            with contextlib.suppress(OSError, ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _read_lines(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        skipping = False  # inside a line already found too long
        while chunk := await reader.read(transport.CHUNK):
            buffer += chunk
            head, newline, buffer = buffer.rpartition(b"\n")
            if newline:
                lines = []
                for line in head.split(b"\n"):
                    if skipping:
                        skipping = False
                    elif len(line) >= self._max_line:
                        lines.append(notice_line("log line too long: dropped", bytes=len(line)))
                    elif line:
                        lines.append(line + b"\n")
                self._write(lines)
            if len(buffer) >= self._max_line:
                if not skipping:
                    self._write([notice_line("log line too long: dropped", bytes=len(buffer))])
                skipping, buffer = True, b""
        # A partial last line (the sender died mid-write) is not a log line: dropped.


def receiver_address(*, vsock: bool) -> str:
    """Where the supervisor listens: every CID's vsock on a Nitro host, else loopback TCP."""
    host = f"vsock://{transport.VSOCK_ANY_CID}" if vsock else "tcp://127.0.0.1"
    return f"{host}:{log_port()}"


class EnclaveAddresses(Protocol):
    """What the host end needs of the launcher (a
    :class:`~enclave_core.plugin.interfaces.Launcher`)."""

    def enclave_address(self, port: int) -> str:
        """The transport address of an enclave port."""
        ...


async def start_supervisor_channel(
    config: Config, launcher: EnclaveAddresses
) -> LogChannelReceiver | None:
    """With the ``nitro-cli`` launcher, receive the enclave's logs; None otherwise or on failure.

    It listens on vsock when the launcher reaches the enclave over vsock, else on loopback TCP
    (the fake nitro-cli of the tests). Each line also goes to the launcher's
    ``append_log_line`` when it has one, so ``last_exit.log_tail`` shows the enclave's last
    lines outside debug mode. A channel that cannot listen is logged, not fatal.
    """
    if config.launcher.backend != "nitro-cli":
        return None
    vsock = transport.parse_address(launcher.enclave_address(1)).scheme == "vsock"
    # The supervisor may wrap the launcher (its ``inner``); the hook is on the backend itself.
    backend = getattr(launcher, "inner", launcher)
    receiver = LogChannelReceiver(
        receiver_address(vsock=vsock),
        config.state_dir / LOG_FILE,
        echo=sys.stderr,
        on_line=getattr(backend, "append_log_line", None),
    )
    try:
        await receiver.start()
    except (OSError, ValueError) as exc:
        logger.bind(listen=receiver.listen, error=str(exc)).warning(
            "log channel cannot listen: `enclave logs` will not show the enclave's lines"
        )
        return None
    return receiver
