#!/usr/bin/env python3
"""Benchmark the runtime's public listener: the app direct versus through the proxy, same run.

    python bench/proxy.py [--rounds 6] [--duration 5] [--connections 32]
                          [--app auto|example|builtin] [--no-docs] [--no-nginx]

Starts the app (``examples/hello/app.py`` serving ``GET /`` without the app API, or a built-in
stdlib HTTP/1.1 app with ``--app builtin``) and a :class:`ProxyListener` in front of it, each in its
own process (the proxy on uvloop, logging at INFO as the runtime does). Then it alternates load
runs against the two, several rounds, and reports medians of requests/s and p50/p99 latency with
``wrk`` when installed, else with a built-in asyncio keep-alive client in a separate process.
When ``nginx`` is installed (Debian's package), it runs as a third target in front of the same
app, started by the benchmark on loopback with a generated config: one worker process (so it uses
one core, like the runtime's proxy), upstream keep-alive (``keepalive 32``, HTTP/1.1, an empty
``Connection`` header) and no access log.
The table is printed and appended to ``docs/benchmarks.md`` (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import free_port, serve_public_server, wrk_seconds

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello" / "app.py"
DOCS = ROOT / "docs" / "benchmarks.md"


# -- the processes under test -----------------------------------------------------------------
class GreetingHandler(BaseHTTPRequestHandler):
    """A short greeting on HTTP/1.1 keep-alive, head and body in one write."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        """Greet."""
        body = b"Hello from Simple Enclave!\n"
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet."""


class QuietServer(ThreadingHTTPServer):
    """The built-in app's server: load generators hang up at the end of a run, which is fine."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore connection resets."""


def serve_builtin_app(port: int) -> None:
    """The built-in app, until killed."""
    QuietServer(("127.0.0.1", port), GreetingHandler).serve_forever()


class _Splice(asyncio.Protocol):
    """One side of a bare byte relay: no HTTP at all, one upstream connection per client."""

    def __init__(self, peer: _Splice | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.peer is not None:  # the upstream side: flush what the client sent meanwhile
            self.peer.peer = self
            transport.writelines(self.peer.pending)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def serve_splice(port: int, upstream_port: int) -> None:
    """The floor of any Python proxy on this machine: a uvloop byte relay, until killed."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def accept() -> _Splice:
            client = _Splice()
            loop.create_task(
                loop.create_connection(lambda: _Splice(client), "127.0.0.1", upstream_port)
            )
            return client

        await loop.create_server(accept, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(port: int, upstream_port: int, tmp: Path) -> subprocess.Popen[bytes]:
    """Debian's nginx in the foreground on loopback in front of the app, with a generated config."""
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream=upstream_port))
    return subprocess.Popen(
        ["nginx", "-p", str(tmp), "-c", str(conf)], stdin=subprocess.DEVNULL, cwd=tmp
    )


# -- load generation --------------------------------------------------------------------------
def run_wrk(url: str, connections: int, duration: float) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 latency in milliseconds."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = wrk_seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = wrk_seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"  warning: {errors.group(0)}", file=sys.stderr)
    return {"rps": rps, "p50": p50 * 1000, "p99": p99 * 1000}


async def _client_load(host: str, port: int, connections: int, duration: float) -> dict[str, float]:
    """A keep-alive HTTP/1.1 load generator: ``connections`` clients in a loop of GET /."""
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"rps": len(latencies) / elapsed, "p50": pick(0.50), "p99": pick(0.99)}


def run_builtin_load(url: str, connections: int, duration: float) -> dict[str, float]:
    """The fallback load generator, in its own process so it does not share the proxy's CPU."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    code = (
        "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); import proxy;"
        "print(json.dumps(asyncio.run(proxy._client_load('127.0.0.1', int(sys.argv[2]),"
        " int(sys.argv[3]), float(sys.argv[4])))))"
    )
    args = [str(Path(__file__).parent), str(port), str(connections), str(duration)]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    import json

    return dict(json.loads(out.stdout))


# -- orchestration ----------------------------------------------------------------------------
def wait_ready(port: int, path: str, deadline_s: float = 10.0) -> None:
    """Poll until ``GET path`` on ``port`` answers 200."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers 200 on port {port}{path}")


def start(args: list[str], env: dict[str, str], quiet: bool = False) -> subprocess.Popen[bytes]:
    """Start a child process of this benchmark (``quiet``: drop its stderr)."""
    stderr = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(args, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=stderr)


def main() -> int:
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--app", choices=("auto", "example", "builtin"), default="auto")
    parser.add_argument(
        "--no-docs", action="store_true", help="do not append to docs/benchmarks.md"
    )
    parser.add_argument(
        "--no-splice", action="store_true", help="skip the bare byte-relay reference"
    )
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    opts = parser.parse_args()

    use_example = opts.app == "example" or (opts.app == "auto" and EXAMPLE.exists())
    app_port, proxy_port, splice_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(PORT=str(app_port), PYTHONPATH=str(ROOT))
    if use_example:
        app_cmd = [sys.executable, str(EXAMPLE)]
        app_name = "examples/hello/app.py (GET /, no app API)"
    else:
        app_cmd = [sys.executable, __file__, "_app", str(app_port)]
        app_name = "built-in ThreadingHTTPServer greeting (bench/proxy.py)"
    ports = {"direct": app_port, "proxy": proxy_port, "splice": splice_port}
    if opts.no_splice:
        del ports["splice"]
    with_nginx = not opts.no_nginx and shutil.which("nginx") is not None
    nginx_tmp = tempfile.TemporaryDirectory(prefix="bench-nginx-")
    if with_nginx:
        ports["nginx"] = free_port()
    # the app's stderr would fill with tracebacks of connections the load generator drops
    procs = [start(app_cmd, env, quiet=True)]
    if with_nginx:
        procs.append(start_nginx(ports["nginx"], app_port, Path(nginx_tmp.name)))
    for name in ports.keys() - {"direct", "nginx"}:
        cmd = [sys.executable, __file__, f"_{name}", str(ports[name]), str(app_port)]
        procs.append(start(cmd, env))
    load = run_wrk if shutil.which("wrk") else run_builtin_load
    tool = "wrk -t2" if load is run_wrk else "built-in asyncio client"
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
    try:
        for port in ports.values():
            wait_ready(port, "/")
        for port in ports.values():  # warm up
            load(f"http://127.0.0.1:{port}/", opts.connections, 1.0)
        names = list(ports)
        for rnd in range(opts.rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:  # rotate the order
                url = f"http://127.0.0.1:{ports[name]}/"
                results[name].append(load(url, opts.connections, opts.duration))
            line = ", ".join(f"{name} {runs[-1]['rps']:.0f}" for name, runs in results.items())
            print(f"round {rnd + 1} (req/s): {line}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        nginx_tmp.cleanup()

    med = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
        for name, runs in results.items()
    }
    labels = {
        "direct": "direct (no proxy)",
        "proxy": "through ProxyListener",
        "splice": "through a bare byte relay (reference)",
        "nginx": "through nginx (1 worker, upstream keep-alive)",
    }
    table = [
        "| target | requests/s (median) | p50 ms | p99 ms | vs direct, median of rounds |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in med.items():
        per_round = [
            r["rps"] / d["rps"] for r, d in zip(results[name], results["direct"], strict=True)
        ]
        table.append(
            f"| {labels[name]} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} |"
            f" {statistics.median(per_round):.2f}x |"
        )
    ratios = [p["rps"] / d["rps"] for d, p in zip(results["direct"], results["proxy"], strict=True)]
    ratio = med["proxy"]["rps"] / med["direct"]["rps"]
    summary = (
        f"ProxyListener/direct: **{ratio:.2f}x** of the median throughput"
        f" (per round: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    if with_nginx:
        vs_nginx = [
            p["rps"] / n["rps"] for n, p in zip(results["nginx"], results["proxy"], strict=True)
        ]
        ok = "met" if statistics.median(vs_nginx) >= 0.8 else "MISSED"
        summary += (
            f"\n\nPublicServer/nginx: **{statistics.median(vs_nginx):.2f}x** (median of per-round"
            f" ratios: {', '.join(f'{r:.2f}' for r in vs_nginx)}; target ≥ 0.8x: {ok})"
        )
    if med["direct"]["p50"] > 30:
        summary += (
            "\n\nNote: the app answers in about 40 ms even direct: it writes its head and body"
            " separately with Nagle's algorithm on, so each response waits for a delayed ACK."
            " The figures measure that, not the proxy (`disable_nagle_algorithm = True` on its"
            " handler fixes the app)."
        )
    print("\n" + "\n".join(table) + "\n\n" + summary)
    if not opts.no_docs:
        write_docs(opts, app_name, tool, table, summary)
    return 0


def write_docs(
    opts: argparse.Namespace, app: str, tool: str, table: list[str], summary: str
) -> None:
    """Append this run's section to docs/benchmarks.md."""
    import uvloop

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"python bench/proxy.py --rounds {opts.rounds} --duration {opts.duration:g}"
    command += f" --connections {opts.connections} --app {opts.app}"
    command += " --no-splice" if opts.no_splice else ""
    command += " --no-nginx" if opts.no_nginx else ""
    lines = [
        f"\n### Public listener proxy, {stamp}\n",
        f"- command: `{command}`",
        f"- app: {app}; proxy: `ProxyListener` in its own process on uvloop {uvloop.__version__}",
        f"- nginx: {_nginx_version()}, generated config: worker_processes 1 (one core, like the"
        " proxy), upstream `keepalive 32`, `proxy_http_version 1.1`,"
        ' `proxy_set_header Connection ""`, access_log off'
        if not opts.no_nginx and shutil.which("nginx")
        else "- nginx: not run",
        f"- load: {tool}, {opts.connections} keep-alive connections, {opts.rounds} alternating"
        f" rounds of {opts.duration:g} s, medians",
        f"- machine: {os.cpu_count()} CPUs, {platform.machine()},"
        f" Python {platform.python_version()}; app, proxy and load generator share them",
        "",
        *table,
        "",
        summary,
        "",
    ]
    if not DOCS.exists():
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text("# Benchmarks\n", encoding="utf-8")
    with DOCS.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print(f"appended to {DOCS.relative_to(ROOT)}")


def _nginx_version() -> str:
    """`nginx -v`'s answer (it prints to stderr)."""
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_app":
        serve_builtin_app(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_proxy":
        serve_public_server(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_splice":
        serve_splice(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())
