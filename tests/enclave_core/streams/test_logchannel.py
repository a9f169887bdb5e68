"""The log channel over the TCP transport (these machines have no vsock loopback).

Both ends together: the enclave's (:mod:`enclave_core.streams.logchannel`) and the supervisor's
(:mod:`enclave_core.supervisor.logreceiver`).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from enclave_core import log
from enclave_core.cli.lifecycle import follow
from enclave_core.config import Config
from enclave_core.runtime.childio import relay_lines
from enclave_core.streams.logchannel import (
    LOG_FILE,
    MAX_LINE_BYTES,
    LogChannelSender,
    add_log_channel_sink,
    bound_line,
    start_runtime_channel,
)
from enclave_core.supervisor.logreceiver import (
    LogChannelReceiver,
    receiver_address,
    start_supervisor_channel,
)
from enclave_core.testing import free_port
from tests.helpers import until

DEADLINE_S = 10.0


def entries(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of the log file (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def not_the_receiver(record: Any) -> bool:
    """Sender and receiver share this process: the receiver's own records stay out."""
    return record["name"] != "enclave_core.supervisor.logreceiver"


def msgs(path: Path) -> list[str]:
    return [e["msg"] for e in entries(path)]


@pytest.fixture
def sender_factory() -> Iterator[Callable[..., LogChannelSender]]:
    """Senders added to loguru for one test, always closed (their sink removed) afterwards."""
    made: list[LogChannelSender] = []

    def factory(address: str, **kw: Any) -> LogChannelSender:
        kw.setdefault("backoff_max_s", 0.2)
        kw.setdefault("filter", not_the_receiver)
        sender = add_log_channel_sink(address, level="DEBUG", **kw)
        made.append(sender)
        return sender

    yield factory
    for sender in made:
        sender.close(timeout_s=3.0)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def test_lines_arrive_in_order_with_app_lines_marked(
    tmp_path: Path, sender_factory: Callable[..., LogChannelSender]
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    log_path = tmp_path / "state" / LOG_FILE
    echo = io.StringIO()

    async def scenario() -> None:
        receiver = LogChannelReceiver(address, log_path, echo=echo)
        await receiver.start()
        try:
            sender_factory(address)
            for i in range(50):
                logger.bind(step=i).info("runtime line")
            app_out = asyncio.StreamReader()
            app_out.feed_data(b"app says hi\nbraces {are} kept\n")
            app_out.feed_eof()
            await relay_lines(app_out, "stdout")
            logger.info("last line")
            await until(lambda: "last line" in msgs(log_path), "the last line")
        finally:
            await receiver.close()

    run(scenario)
    got = entries(log_path)
    runtime = [e for e in got if e["msg"] == "runtime line"]
    assert [e["step"] for e in runtime] == list(range(50))
    app = [e for e in got if e.get("source") == "app"]
    assert [e["msg"] for e in app] == ["app says hi", "braces {are} kept"]
    assert all(e["stream"] == "stdout" for e in app)
    assert "source" not in runtime[0]
    assert [e["msg"] for e in got][-1] == "last line"
    assert log_path.stat().st_mode & 0o777 == 0o600
    assert log_path.parent.stat().st_mode & 0o777 == 0o700
    # Echoed for journald too, as the same JSON lines.
    assert '"msg": "app says hi"' in echo.getvalue()


def test_secret_fields_are_redacted_before_leaving_the_enclave(
    tmp_path: Path, sender_factory: Callable[..., LogChannelSender]
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    log_path = tmp_path / LOG_FILE

    async def scenario() -> None:
        receiver = LogChannelReceiver(address, log_path)
        await receiver.start()
        try:
            sender_factory(address)
            logger.bind(token="tok-abc123").info("token used", secret_value="s3cr3t-value")
            await until(lambda: "token used" in msgs(log_path), "the line")
        finally:
            await receiver.close()

    run(scenario)
    text = log_path.read_text(encoding="utf-8")
    assert "tok-abc123" not in text and "s3cr3t-value" not in text
    (entry,) = entries(log_path)
    assert entry["token"] == "[redacted]" and entry["secret_value"] == "[redacted]"


def test_sender_reconnects_after_the_receiver_restarts(
    tmp_path: Path, sender_factory: Callable[..., LogChannelSender]
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    log_path = tmp_path / LOG_FILE

    async def scenario() -> None:
        first = LogChannelReceiver(address, log_path)
        await first.start()
        sender = sender_factory(address)
        logger.info("before restart")
        await until(lambda: "before restart" in msgs(log_path), "the first line")
        await first.close()
        logger.info("while down")  # queued until the receiver is back
        await until(lambda: sender.queued() == 0 or sender.sent >= 1, "the sender to notice")
        second = LogChannelReceiver(address, log_path)
        await second.start()
        try:
            logger.info("after restart")
            await until(lambda: "after restart" in msgs(log_path), "the line after restart")
        finally:
            await second.close()

    run(scenario)
    assert msgs(log_path) == ["before restart", "while down", "after restart"]


def test_queue_stays_bounded_when_nobody_reads(
    tmp_path: Path, sender_factory: Callable[..., LogChannelSender]
) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path = tmp_path / LOG_FILE
    sender = sender_factory(address, max_lines=10)
    for i in range(25):
        logger.info("line", n=i)
    assert sender.queued() <= 10
    assert sender.sent == 0

    async def scenario() -> None:
        # The host comes up late: it gets a dropped-lines notice and the newest ten lines.
        receiver = LogChannelReceiver(address, log_path)
        await receiver.start()
        try:
            await until(lambda: len(entries(log_path)) >= 11, "the kept lines")
        finally:
            await receiver.close()

    run(scenario)
    got = entries(log_path)
    assert got[0]["source"] == "log-channel" and got[0]["dropped"] == 15
    assert [e["n"] for e in got[1:]] == list(range(15, 25))
    assert sender.dropped == 15


def test_queue_is_bounded_in_bytes_too() -> None:
    sender = LogChannelSender(f"tcp://127.0.0.1:{free_port()}", max_bytes=1000)  # not started
    for i in range(20):
        sender.put(b"%03d" % i + b"x" * 96 + b"\n")  # 100 bytes each
    assert sender.queued() == 10 and sender.dropped == 10
    sender.put(b"y" * 5000 + b"\n")  # one line larger than the bound is still kept, alone
    assert sender.queued() == 1 and sender.dropped == 20


def test_logging_never_blocks_when_the_host_stops_reading(
    sender_factory: Callable[..., LogChannelSender],
) -> None:
    # A host that accepts the connection and then never reads: the socket buffers fill up.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    sender = sender_factory(f"tcp://127.0.0.1:{port}", max_lines=100, send_timeout_s=1.0)
    logger.info("first line")  # the sender connects when it has something to send
    listener.settimeout(DEADLINE_S)
    conn, _ = listener.accept()
    try:
        payload = "x" * 2000
        for i in range(5000):  # 10 MB: far more than the socket buffers hold
            logger.info(payload, n=i)
        assert sender.queued() <= 100
        assert sender.dropped > 0
    finally:
        conn.close()
        listener.close()


def test_receiver_bounds_lines_and_replaces_the_old_connection(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / LOG_FILE

    async def scenario() -> None:
        receiver = LogChannelReceiver(f"tcp://127.0.0.1:{port}", log_path)
        await receiver.start()
        try:
            old_reader, old_writer = await asyncio.open_connection("127.0.0.1", port)
            old_writer.write(b'{"msg": "from the old connection"}\n')
            await old_writer.drain()
            await until(lambda: len(entries(log_path)) == 1, "the old connection's line")
            _, new_writer = await asyncio.open_connection("127.0.0.1", port)
            # The old connection is closed by the receiver: EOF on our side.
            assert await asyncio.wait_for(old_reader.read(), DEADLINE_S) == b""
            old_writer.close()
            new_writer.write(b"x" * (MAX_LINE_BYTES + 10) + b"\n")
            new_writer.write(b'{"msg": "after the long line"}\n{"msg": "partial, never ended')
            await new_writer.drain()
            await until(lambda: len(entries(log_path)) == 3, "the lines after the long one")
            new_writer.close()
            await new_writer.wait_closed()
            await old_writer.wait_closed()
        finally:
            await receiver.close()

    run(scenario)
    got = entries(log_path)
    assert got[0]["msg"] == "from the old connection"
    assert got[1]["msg"] == "log line too long: dropped" and got[1]["bytes"] >= MAX_LINE_BYTES
    assert got[2]["msg"] == "after the long line"
    assert len(got) == 3  # the partial last line is not written


def test_receiver_echo_follows_the_supervisors_log_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log, "_echo_view", log._echo_view)  # restored afterwards
    sent = b'{"time": "2026-01-01T10:00:00.250+00:00", "level": "INFO", "msg": "up", "n": 1}\n'
    for human in (False, True):
        port = free_port()
        log_path = tmp_path / str(human) / LOG_FILE
        echo = io.StringIO()
        log.configure_logging("INFO", human=human, stream=io.StringIO())

        async def scenario(
            port: int = port, log_path: Path = log_path, echo: io.StringIO = echo
        ) -> None:
            receiver = LogChannelReceiver(f"tcp://127.0.0.1:{port}", log_path, echo=echo)
            await receiver.start()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(sent)
                await writer.drain()
                await until(lambda: len(entries(log_path)) == 1, "the line")
                writer.close()
                await writer.wait_closed()
            finally:
                await receiver.close()

        run(scenario)
        assert log_path.read_bytes() == sent  # the file keeps the JSON line
        if human:
            assert echo.getvalue().endswith(" INFO    runtime    up  n=1\n")
        else:
            assert echo.getvalue() == sent.decode()
    logger.remove()


def test_receiver_starts_a_new_file_when_the_old_one_is_removed(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / LOG_FILE

    async def scenario() -> None:
        receiver = LogChannelReceiver(f"tcp://127.0.0.1:{port}", log_path)
        await receiver.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b'{"msg": "one"}\n')
            await writer.drain()
            await until(lambda: msgs(log_path) == ["one"], "the first line")
            log_path.unlink()  # an operator cleaning up
            writer.write(b'{"msg": "two"}\n')
            await writer.drain()
            await until(lambda: msgs(log_path) == ["two"], "the line in a new file")
            writer.close()
            await writer.wait_closed()
        finally:
            await receiver.close()

    run(scenario)
    assert log_path.stat().st_mode & 0o777 == 0o600


def test_follow_reads_the_receivers_file_across_rotation(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    log_path = tmp_path / LOG_FILE
    seen: list[bytes] = []
    done = threading.Event()
    follower = threading.Thread(
        target=follow,
        args=(log_path, 0, seen.append),
        kwargs={"poll_s": 0.01, "keep_going": lambda: not done.is_set()},
    )

    async def scenario() -> None:
        receiver = LogChannelReceiver(address, log_path, max_file_bytes=1000)  # rotates once
        await receiver.start()
        follower.start()
        try:
            _, writer = await asyncio.open_connection(*address[len("tcp://") :].split(":"))
            for i in range(60):
                writer.write(json.dumps({"msg": "line", "n": i}).encode() + b"\n")
                await writer.drain()
                await asyncio.sleep(0.005)
            await until(lambda: len(seen) >= 60, "follow to print every line")
            writer.close()
            await writer.wait_closed()
        finally:
            await receiver.close()

    try:
        run(scenario)
    finally:
        done.set()
        follower.join(5)
    assert [json.loads(line)["n"] for line in seen] == list(range(60))
    assert log_path.with_name("runtime.log.1").exists()  # it did rotate


def test_bound_line_shortens_the_message_and_keeps_valid_json() -> None:
    line = json.dumps({"time": "t", "level": "INFO", "msg": "é" * 100_000, "source": "app"})
    data = bound_line(line)
    assert len(data) <= MAX_LINE_BYTES and data.endswith(b"\n")
    entry = json.loads(data)
    assert entry["truncated"] is True and entry["source"] == "app"
    assert entry["msg"] and set(entry["msg"]) == {"é"}
    assert bound_line('{"msg": "short"}') == b'{"msg": "short"}\n'


class TailLauncher:
    """Just what the supervisor end uses of a launcher: its addresses and its line hook."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.tail: list[str] = []

    def enclave_address(self, port: int) -> str:
        return f"{self.host}:{port}"

    def append_log_line(self, line: str) -> None:
        self.tail.append(line)


class Wrapper:
    """Like the supervisor's PidRecordingLauncher: the backend is its ``inner``."""

    def __init__(self, inner: TailLauncher) -> None:
        self.inner = inner

    def enclave_address(self, port: int) -> str:
        return self.inner.enclave_address(port)


def test_ends_are_enabled_only_on_nitro(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = make_config()
    assert start_runtime_channel(dev) is None

    monkeypatch.setenv("ENCLAVE_LOG_PORT", "9103")
    nitro = make_config(attestation={"backend": "nitro"})
    sender = start_runtime_channel(nitro)
    assert sender is not None
    try:
        assert sender.address == "vsock://3:9103"
    finally:
        sender.close(timeout_s=3.0)

    # The nitro-cli launcher on a host without vsock (the fake nitro-cli): loopback TCP, and
    # every line also reaches the launcher's tail (the watchdog's last_exit.log_tail).
    port = free_port()
    monkeypatch.setenv("ENCLAVE_LOG_PORT", str(port))
    host = make_config(launcher={"backend": "nitro-cli"})
    launcher = TailLauncher("tcp://127.0.0.1")

    async def scenario() -> None:
        assert await start_supervisor_channel(dev, launcher) is None  # process launcher
        receiver = await start_supervisor_channel(host, Wrapper(launcher))
        assert receiver is not None and receiver.listen == f"tcp://127.0.0.1:{port}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b'{"msg": "through the supervisor end"}\n')
            await writer.drain()
            log_path = host.state_dir / LOG_FILE
            await until(lambda: msgs(log_path) == ["through the supervisor end"], "the line")
            writer.close()
            await writer.wait_closed()
        finally:
            await receiver.close()
        assert launcher.tail == ['{"msg": "through the supervisor end"}']
        # A port that cannot be bound leaves the supervisor running, without the channel.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen(1)
            assert await start_supervisor_channel(host, launcher) is None

    run(scenario)
    assert receiver_address(vsock=False) == f"tcp://127.0.0.1:{port}"
    assert receiver_address(vsock=True) == f"vsock://4294967295:{port}"
