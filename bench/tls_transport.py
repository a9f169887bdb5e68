#!/usr/bin/env python3
"""TLS on the socket (``enclave_core.http.tls``) against asyncio's own TLS, same listener, same run.

    python bench/tls_transport.py [--rounds 4] [--duration 5] [--loop asyncio|uvloop] [--no-docs]

A small keep-alive HTTP app (uvloop, a 100-byte answer) and the runtime's public listener
(``ProxyListener`` with the runtime's TLS identity, ECDSA P-256, and the runtime's allocator
settings) in front of it, on loopback, in
two variants started alternately: ``socket`` (what the runtime runs: ``TlsTransport``) and
``sslproto`` (the listener's accept replaced by asyncio's ``connect_accepted_socket(ssl=...)``).
``wrk -t2`` measures small keep-alive requests (``-c32``) and a new TLS connection per request
(``-c16``, ``Connection: close``), and the listener's RSS is read after each round. ``--loop
asyncio`` (the default) is the loop an enclave runs. Needs ``wrk`` (Debian: ``apt-get install
wrk``). The table is printed and appended to docs/benchmarks.md (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_docs, command_line, machine, rss_mib, stamp  # noqa: E402

from enclave_core.testing import free_port  # noqa: E402

APP = """
import asyncio, sys, uvloop
RESP = b"HTTP/1.1 200 OK\\r\\nContent-Length: 100\\r\\n\\r\\n" + b"x" * 100
class App(asyncio.Protocol):
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data): self.transport.write(RESP * data.count(b"\\r\\n\\r\\n"))
async def main():
    await asyncio.get_running_loop().create_server(App, "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
uvloop.run(main())
"""

LISTENER = """
import asyncio, sys
from enclave_core.http.connection import ClientConnection
from enclave_core.http.listener import HttpListener
from enclave_core.http.proxy import ProxyListener
from enclave_core.log import configure_logging
from enclave_core.metrics import Metrics
from enclave_core.runtime.allocator import tune_allocator
from enclave_core.runtime.tls import make_tls_identity
port, upstream, loop_name, variant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
configure_logging("INFO", human=False)
tune_allocator()  # as `enclave runtime` does at start
if variant == "sslproto":
    async def adopt(self, sock):
        sock.setblocking(False)
        try:
            await self.loop.connect_accepted_socket(
                lambda: ClientConnection(self), sock, ssl=self.ssl_context,
                ssl_handshake_timeout=self.limits.header_timeout_s)
        except OSError:
            pass
    HttpListener._adopt = adopt
async def own(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
async def main():
    listener = ProxyListener(own_app=own, is_own_path=lambda p: p == "/health",
        upstream_host="127.0.0.1", upstream_port=upstream, metrics=Metrics(),
        ssl_context=make_tls_identity("bench").context)
    await listener.start(f"tcp://127.0.0.1:{port}")
    await asyncio.Event().wait()
if loop_name == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""

LOADS = {
    "keep-alive, -c32": ["-c32"],
    "new TLS connection per request, -c16": ["-c16", "-H", "Connection: close"],
}
VARIANTS = ("socket", "sslproto")


def start(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def one_round(variant: str, loop: str, load: list[str], duration: float) -> tuple[float, float]:
    """Requests/s of one variant under one load, and the listener's RSS after it."""
    app_port, port = free_port(), free_port()
    app = start(APP, str(app_port))
    listener = start(LISTENER, str(port), str(app_port), loop, variant)
    try:
        time.sleep(1.5)
        out = subprocess.run(
            ["wrk", "-t2", f"-d{duration:g}s", *load, f"https://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return rate, rss_mib(listener.pid)
    finally:
        stop(listener)
        stop(app)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--no-docs", action="store_true")
    opts = parser.parse_args()
    lines = [
        f"## TLS on the socket vs asyncio's TLS ({stamp()})",
        "",
        f"Command: `{command_line()}`",
        "",
        f"- machine: {machine()}; loop: {opts.loop}",
        "",
        "| load | socket (req/s, median) | asyncio's TLS (req/s, median) | ratio (median of rounds)"
        " | per round | RSS after, MiB (socket / asyncio) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, load in LOADS.items():
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        rss: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for round_no in range(opts.rounds):
            for variant in VARIANTS if round_no % 2 == 0 else reversed(VARIANTS):
                rate, mib = one_round(variant, opts.loop, load, opts.duration)
                rates[variant].append(rate)
                rss[variant].append(mib)
                print(f"{name} round {round_no + 1} {variant}: {rate:.0f} req/s, {mib:.1f} MiB")
        ratios = [s / a for s, a in zip(rates["socket"], rates["sslproto"], strict=True)]
        lines.append(
            f"| {name} | {statistics.median(rates['socket']):.0f}"
            f" | {statistics.median(rates['sslproto']):.0f}"
            f" | **{statistics.median(ratios):.2f}x** | {', '.join(f'{r:.2f}' for r in ratios)}"
            f" | {max(rss['socket']):.1f} / {max(rss['sslproto']):.1f} |"
        )
    print("\n".join(lines))
    if not opts.no_docs:
        append_docs(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
