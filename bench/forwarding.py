#!/usr/bin/env python3
"""Benchmark the forwarding path: ingress -> runtime public listener -> app, against the app direct.

    python bench/forwarding.py [--rounds 3] [--duration 2] [--connections 32]
                               [--loop asyncio|uvloop] [--no-docs]

The processes talk over the TCP transport (loopback), as in development, each on its own loop:

- the app: a small HTTP/1.1 keep-alive server (uvloop) answering ``GET /`` with a greeting and
  ``GET /bytes/N`` with N bytes;
- the runtime's public listener, :class:`enclave_core.http.proxy.ProxyListener`, in front of it
  (plain HTTP: ``runtime.tls: false``, so the figures are the forwarding, not TLS);
- the supervisor's :class:`enclave_core.supervisor.forwarders.IngressForwarder` in front of that,
  and a second one straight in front of the app;
- the load generators: ``wrk`` for the request rate, and a small blocking-socket Python client
  (one keep-alive connection, in its own process) for 64 KiB and 1 MiB transfers.

Four targets, measured in the same run in alternating rounds, medians reported: the app direct,
the public listener alone, ingress -> public listener -> app (the production path) and, for
reference, ingress -> app (the ingress hop's own cost). ``--loop asyncio`` (the default) runs the
listener and the ingress on asyncio's own loop, as on a Nitro host and in an enclave, where vsock
rules out uvloop; ``--loop uvloop`` is the development setting. The table is printed and
appended to ``docs/benchmarks.md`` (``--no-docs`` to skip). About 90 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import free_port, serve_public_server, wrk_seconds

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
GREETING = b"Hello from Simple Enclave!\n"
SIZES = {"64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}
TARGETS = {
    "direct": "app direct",
    "runtime": "runtime public listener -> app",
    "ingress": "ingress -> runtime -> app",
    "relay": "ingress -> app (reference: the ingress hop alone)",
}


# -- the processes under test -----------------------------------------------------------------
class AppProtocol(asyncio.Protocol):
    """The app: ``GET /`` greets, ``GET /bytes/N`` sends N bytes; keep-alive, no request bodies."""

    bodies: dict[int, bytes] = {}

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            body = GREETING
            if path.startswith(b"/bytes/") and path[7:].isdigit():
                size = min(int(path[7:]), 16 * 1024 * 1024)
                body = self.bodies.setdefault(size, b"x" * size)
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            self.transport.write(body)


def serve_app(port: int) -> None:
    """The app, until killed."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(AppProtocol, "127.0.0.1", port)
        for sock in server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.Event().wait()

    uvloop.run(main())


def _run_loop(main: Callable[[], Any], loop_name: str) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def serve_ingress(port: int, upstream_port: int, loop_name: str) -> None:
    """The supervisor's IngressForwarder in front of the runtime, until killed."""
    from enclave_core.log import configure_logging
    from enclave_core.supervisor.forwarders import IngressForwarder

    configure_logging("INFO", human=False)

    async def main() -> None:
        forwarder = IngressForwarder(
            f"127.0.0.1:{port}", lambda: f"tcp://127.0.0.1:{upstream_port}"
        )
        await forwarder.start()
        await asyncio.Event().wait()

    _run_loop(main, loop_name)


# -- load generation --------------------------------------------------------------------------
def run_wrk(port: int, connections: int, duration: float) -> dict[str, float]:
    """One wrk run on ``GET /``: requests/s and p50/p99 latency in milliseconds."""
    url = f"http://127.0.0.1:{port}/"
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = wrk_seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = wrk_seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"  warning: {errors.group(0)}", file=sys.stderr)
    return {"rps": rps, "p50": p50 * 1000, "p99": p99 * 1000}


def transfer_client(port: int, size: int, duration: float) -> dict[str, float]:
    """One keep-alive connection fetching ``/bytes/size`` back to back for ``duration`` seconds."""
    request = f"GET /bytes/{size} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    received = transfers = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        began = time.perf_counter()
        while time.perf_counter() - began < duration:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            left = length - len(rest)
            while left > 0:
                n = sock.recv_into(view[: min(left, len(buffer))])
                if not n:
                    raise ConnectionError("the server closed the connection mid-body")
                left -= n
            received += length
            transfers += 1
        elapsed = time.perf_counter() - began
    return {"mbps": received / elapsed / 1e6, "tps": transfers / elapsed}


def run_transfer(port: int, size: int, duration: float) -> dict[str, float]:
    """The transfer client in its own process, so it does not share an interpreter."""
    out = subprocess.run(
        [sys.executable, __file__, "_transfer", str(port), str(size), str(duration)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


# -- orchestration ----------------------------------------------------------------------------
def wait_ready(port: int, deadline_s: float = 15.0) -> None:
    """Poll until ``GET /`` on ``port`` answers 200."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers 200 on port {port}")


def measure(port: int, opts: argparse.Namespace) -> dict[str, float]:
    """One round on one target: request rate, then each transfer size."""
    result = run_wrk(port, opts.connections, opts.duration)
    for label, size in SIZES.items():
        result[label] = run_transfer(port, size, opts.duration)["mbps"]
    return result


def main() -> int:
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--no-docs", action="store_true", help="do not append to the docs")
    opts = parser.parse_args()
    opts.load = os.getloadavg()[0]
    if not shutil.which("wrk"):
        print("wrk is needed for the request rate (apt-get install wrk)", file=sys.stderr)
        return 2

    ports = {name: free_port() for name in TARGETS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env["PYTHONPATH"] = str(ROOT)
    me = [sys.executable, __file__]
    commands = [
        [*me, "_app", str(ports["direct"])],
        [*me, "_runtime", str(ports["runtime"]), str(ports["direct"]), opts.loop],
        [*me, "_ingress", str(ports["ingress"]), str(ports["runtime"]), opts.loop],
        [*me, "_ingress", str(ports["relay"]), str(ports["direct"]), opts.loop],
    ]
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for cmd in commands
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in TARGETS}
    try:
        for port in ports.values():
            wait_ready(port)
            run_wrk(port, opts.connections, 1.0)  # warm up
        names = list(TARGETS)
        for rnd in range(opts.rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:  # rotate the order
                results[name].append(measure(ports[name], opts))
            line = ", ".join(
                f"{name} {runs[-1]['rps']:.0f} req/s {runs[-1]['1 MiB']:.0f} MB/s"
                for name, runs in results.items()
            )
            print(f"round {rnd + 1}: {line}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)

    table = report(results)
    print("\n" + "\n".join(table))
    if not opts.no_docs:
        write_docs(opts, table)
    return 0


def report(results: dict[str, list[dict[str, float]]]) -> list[str]:
    """The Markdown table: medians, and each ratio to direct as the median of per-round ratios."""
    keys = ["rps", *SIZES]

    def ratio(name: str, key: str) -> float:
        pairs = zip(results[name], results["direct"], strict=True)
        return statistics.median(r[key] / d[key] for r, d in pairs)

    table = [
        "| path | requests/s | p50 ms | p99 ms | 64 KiB transfers MB/s | 1 MiB transfers MB/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in (*keys, "p50", "p99")}
        cells = [f"{med['rps']:.0f}", f"{med['p50']:.2f}", f"{med['p99']:.2f}"]
        cells += [f"{med[size]:.0f}" for size in SIZES]
        if name != "direct":
            cells[0] += f" ({ratio(name, 'rps'):.2f}x)"
            for i, size in enumerate(SIZES, start=3):
                cells[i] += f" ({ratio(name, size):.2f}x)"
        table.append(f"| {TARGETS[name]} | " + " | ".join(cells) + " |")
    return table


def write_docs(opts: argparse.Namespace, table: list[str]) -> None:
    """Append this run to the forwarding section of docs/benchmarks.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = (
        f"python bench/forwarding.py --rounds {opts.rounds} --duration {opts.duration:g}"
        f" --connections {opts.connections} --loop {opts.loop}"
    )
    lines = [
        f"\n#### Forwarding, {stamp}, loop: {opts.loop}\n",
        f"- command: `{command}`",
        f"- {opts.rounds} alternating rounds; per round and target: wrk -t2 -c{opts.connections}"
        f" for {opts.duration:g} s on `GET /`, then one keep-alive connection fetching 64 KiB,"
        f" then 1 MiB bodies back to back for {opts.duration:g} s each; medians (ratio to"
        " direct: median of the per-round ratios)",
        f"- machine: {os.cpu_count()} CPUs, {platform.machine()},"
        f" Python {platform.python_version()}; every process shares them; load average"
        f" {opts.load:.1f} when the run began (other work on the machine)",
        "",
        *table,
        "",
    ]
    with DOCS.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print(f"appended to {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "_app":
        serve_app(int(sys.argv[2]))
    elif role == "_runtime":
        serve_public_server(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif role == "_ingress":
        serve_ingress(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif role == "_transfer":
        args = sys.argv[2:5]
        print(json.dumps(transfer_client(int(args[0]), int(args[1]), float(args[2]))))
    else:
        sys.exit(main())
