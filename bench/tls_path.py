#!/usr/bin/env python3
"""Benchmark the production path (ingress -> runtime with TLS -> app) against nginx's same path.

    python bench/tls_path.py [--rounds 5] [--duration 5] [--loops asyncio,uvloop]
                             [--profile-seconds 10] [--no-profile] [--no-docs]

What a Nitro user runs is: client -> the supervisor's ingress (a byte relay,
``IngressForwarder``) -> the runtime's public listener with TLS (the attested certificate,
``make_tls_identity``: ECDSA P-256) -> the app. This benchmark runs exactly that, with the real
processes: a temp folder with an enclave.yaml on free loopback ports (``runtime.tls: true``, the
local/simulated/process backends ``enclave init`` writes) whose app is nginx (one worker: a
~100-byte page at ``/`` and a 1 MiB file at ``/1m``), started by ``enclave dev`` with
``ENCLAVE_EVENT_LOOP=asyncio`` (the "Nitro loop": an enclave cannot run uvloop) and then without it
(uvloop, the development loop). The same path built from nginx stands beside it, in front of the
*same* app instance: an nginx ``stream`` relay (one worker) -> an nginx TLS-terminating reverse
proxy (one worker, ECDSA P-256 certificate made the way the runtime makes its own, upstream
keep-alive, ``proxy_http_version 1.1``, ``proxy_set_header Connection ""``, access_log off) -> the
app. A second pair measures the ingress alone: an ``IngressForwarder`` (its own process, same loop,
the supervisor's limits) -> the app over plain HTTP, against nginx ``stream`` -> the app.

Loads (wrk -t2), each target in alternating rounds, medians and per-round ratios project/nginx:
keep-alive small requests (``-c32``), a new TLS connection per request (``-c16`` with
``Connection: close``: the run first checks that each request really is a new connection and
handshake, from nginx's stub_status, the TIME_WAIT sockets of each hop and nginx's
``$ssl_session_reused``), 1 MiB responses (``-c4``), and the ingress alone (keep-alive, ``-c32``).

Then, on the standard loop, a CPU profile of the runtime (``py-spy record --nonblocking``, in the
dev virtualenv: ``pip install py-spy``; skipped with a note when missing) under keep-alive and
under new-connection load: the top functions by share of samples (self time) and by file.

Needs ``nginx`` with the stream module and ``wrk`` (Debian/Ubuntu: ``apt-get install nginx-light
libnginx-mod-stream wrk``). Every process is started on free loopback ports in its own process
group and stopped by id, even when the run fails. The tables are printed and appended to
``docs/benchmarks.md`` (``--no-docs`` to skip). About 4 minutes per loop with the defaults.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import (
    EXAMPLE_DIR,
    children,
    cmdline,
    free_port,
    machine,
    on_free_ports,
    report,
    wait_200,
    write_yaml,
    wrk_seconds,
)

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
SMALL_PAGE = (
    b"<!doctype html><title>bench</title>"
    b"<p>A small page, served by nginx for the TLS path bench.</p>\n"
)
BIG_FILE = 1024 * 1024
#: load name -> (label, wrk connections, path, extra wrk arguments, targets: the project's
#: first, nginx's last; ``--ceiling`` adds "bare" before nginx's on the TLS loads)
LOADS: dict[str, tuple[str, int, str, tuple[str, ...], tuple[str, str]]] = {
    "keepalive": ("small, keep-alive, -c32", 32, "/", (), ("ingress", "stream")),
    "newconn": (
        "small, new TLS connection per request, -c16",
        16,
        "/",
        ("-H", "Connection: close"),
        ("ingress", "stream"),
    ),
    "big": ("1 MiB, keep-alive, -c4", 4, "/1m", (), ("ingress", "stream")),
    "plain": (
        "ingress alone (plain HTTP), small, keep-alive, -c32",
        32,
        "/",
        (),
        ("relay", "stream_plain"),
    ),
}
TARGETS = {
    "ingress": "ingress -> runtime (TLS) -> app",
    "stream": "nginx stream -> nginx TLS proxy -> app",
    "relay": "IngressForwarder -> app",
    "stream_plain": "nginx stream -> app",
    "bare": "IngressForwarder -> bare Python TLS relay (no HTTP) -> app",
}
#: The processes each target's CPU time is counted on (the app's nginx worker is shared).
HOPS = {
    "ingress": ("supervisor (ingress)", "runtime"),
    "stream": ("nginx stream", "nginx TLS proxy"),
    "relay": ("IngressForwarder",),
    "stream_plain": ("nginx stream",),
    "bare": ("bare: IngressForwarder", "bare TLS relay"),
}
LOOP_NAMES = {"asyncio": "standard asyncio loop (Nitro)", "uvloop": "uvloop (development)"}


# -- processes ------------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    found, frontier = [pid], [pid]
    while frontier:
        try:
            kids = children(frontier.pop())
        except OSError:
            continue
        found += kids
        frontier += kids
    return found


class Processes:
    """What this run started: each in its own process group, stopped by id (never by name)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra: dict[int, list[str]] = {}  # pid -> cmdline, for descendants seen running

    def start(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, output appended to ``log``."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, **kw
            )
        self.procs.append(proc)
        return proc

    def remember_tree(self, pid: int) -> None:
        """Note ``pid``'s descendants, so that they are killed too if they outlive it."""
        for child in process_tree(pid):
            self.extra.setdefault(child, cmdline(child))

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """SIGTERM ``proc``, wait, then SIGKILL its process group."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait(5)

    def stop_all(self) -> None:
        """Stop everything started, newest first, then any remembered descendant still there."""
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()
        for pid, argv in self.extra.items():
            if argv and cmdline(pid) == argv:  # the same process, not a reused pid
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.extra.clear()


def have_nginx_and_wrk() -> bool:
    """Whether wrk and nginx with its stream module are installed; says how to get them if not."""
    missing = [tool for tool in ("wrk", "nginx") if not shutil.which(tool)]
    if missing or not STREAM_MODULE.exists():
        print(
            f"needs wrk and nginx with the stream module (missing: {missing or STREAM_MODULE});"
            " on Debian/Ubuntu: apt-get install wrk nginx-light libnginx-mod-stream",
            file=sys.stderr,
        )
        return False
    return True


# -- nginx configurations ---------------------------------------------------------------------
def _nginx_common(folder: Path, name: str) -> str:
    return (
        f"worker_processes 1;\npid {folder}/{name}.pid;\n"
        f"error_log {folder}/{name}-error.log warn;\n"
        "events { worker_connections 8192; }\n"
    )


def _http_common(folder: Path, name: str) -> str:
    temp = folder / f"{name}-temp"
    return "".join(
        f"    {kind}_temp_path {temp}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    ) + ("    access_log off;\n    keepalive_requests 1000000;\n    keepalive_timeout 75s;\n")


def app_conf(folder: Path, port: int) -> str:
    """The app: one nginx worker, a small page at / and 1 MiB at /1m, /health for the runtime."""
    return _nginx_common(folder, "app") + (
        "http {\n" + _http_common(folder, "app") + "    sendfile on;\n    tcp_nopush on;\n"
        "    default_type application/octet-stream;\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        f"        root {folder}/www;\n"
        "        location = / { default_type text/html; try_files /index.html =404; }\n"
        '        location = /health { return 200 "ok\\n"; }\n'
        "    }\n}\n"
    )


def tls_proxy_conf(folder: Path, ports: dict[str, int]) -> str:
    """nginx's TLS-terminating reverse proxy in front of the app, plus a status and a check port."""
    tls = (
        f"    ssl_certificate {folder}/nginx-cert.pem;\n"
        f"    ssl_certificate_key {folder}/nginx-key.pem;\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;\n"
    )
    proxy = (
        "            proxy_pass http://app;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_max_temp_file_size 0;\n"
    )
    return _nginx_common(folder, "tls") + (
        "http {\n" + _http_common(folder, "tls") + tls + "    log_format check"
        " '$connection $ssl_protocol $ssl_session_reused';\n"
        "    upstream app {\n"
        f"        server 127.0.0.1:{ports['app']};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports['tls']} ssl backlog=4096;\n"
        "        location / {\n" + proxy + "        }\n    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports['tls_check']} ssl;\n"
        f"        access_log {folder}/tls-check.log check;\n"
        "        location / {\n" + proxy + "        }\n    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports['tls_status']};\n"
        "        location / { stub_status; }\n    }\n}\n"
    )


def stream_conf(folder: Path, ports: dict[str, int]) -> str:
    """nginx's byte relay: to the TLS proxy (as the ingress to the runtime), and to the app."""
    return (
        f"load_module {STREAM_MODULE};\n" + _nginx_common(folder, "stream") + "stream {\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports['stream']} backlog=4096;\n"
        f"        proxy_pass 127.0.0.1:{ports['tls']};\n    }}\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports['stream_check']};\n"
        f"        proxy_pass 127.0.0.1:{ports['tls_check']};\n    }}\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports['stream_plain']} backlog=4096;\n"
        f"        proxy_pass 127.0.0.1:{ports['app']};\n    }}\n}}\n"
    )


def write_certificate(folder: Path) -> None:
    """A self-signed ECDSA P-256 certificate for nginx, made as the runtime makes its own."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from enclave_core.runtime.tls import make_certificate

    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_certificate(key, "nginx-bench")
    (folder / "nginx-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "nginx-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# -- the stack --------------------------------------------------------------------------------
class TlsPathStack:
    """`enclave dev` running nginx as its app, on one loop; with ``nginx_path``, nginx's path and
    the ingress-alone reference (an IngressForwarder straight to the app) beside it."""

    def __init__(self, loop: str, *, nginx_path: bool = True, ceiling: bool = False) -> None:
        self.loop = loop
        self.nginx_path = nginx_path
        self.ceiling = ceiling
        self.tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-tls-"))
        self.tmp.chmod(0o755)  # nginx's workers run as an unprivileged user when started as root
        self.dir = self.tmp / "app"
        self.dir.mkdir()
        self.nginx_dir = self.tmp / "nginx"
        (self.nginx_dir / "www").mkdir(parents=True)
        for name in ("app", "tls"):  # nginx makes its temp folders, not their parent
            (self.nginx_dir / f"{name}-temp").mkdir()
        (self.nginx_dir / "www" / "index.html").write_bytes(SMALL_PAGE)
        (self.nginx_dir / "www" / "1m").write_bytes(os.urandom(BIG_FILE))
        names = ("app", "runtime", "ingress", "relay", "tls", "tls_check", "tls_status")
        names += ("stream", "stream_check", "stream_plain", "bare", "bare_tls")
        self.ports = {name: free_port() for name in names}
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        (self.nginx_dir / "app.conf").write_text(app_conf(self.nginx_dir, self.ports["app"]))
        doc = yaml.safe_load((EXAMPLE_DIR / "enclave.yaml").read_text(encoding="utf-8"))
        doc["name"] = "tls-bench"
        ports = self.ports
        on_free_ports(doc, runtime=ports["runtime"], ingress=ports["ingress"], app=ports["app"])
        doc["runtime"]["tls"] = True
        doc["app"].update(
            command=[self.nginx, "-p", str(self.nginx_dir), "-c", str(self.nginx_dir / "app.conf")]
            + ["-e", str(self.nginx_dir / "app-error.log"), "-g", "daemon off;"],
            health_path="/health",
        )
        doc["secrets"]["static"] = []
        self.doc = doc
        self.config_path = write_yaml(self.dir / "enclave.yaml", doc)
        self.procs = Processes()
        self.dev: subprocess.Popen[bytes] | None = None
        self.runtime_pid = 0
        self.hop_pids: dict[str, list[int]] = {}  # hop name -> its processes, for CPU time

    def url(self, target: str, path: str = "/") -> str:
        """The URL of ``path`` on ``target``."""
        plain = ("relay", "stream_plain", "app", "tls_status")
        scheme = "http" if target in plain else "https"
        return f"{scheme}://127.0.0.1:{self.ports[target]}{path}"

    @property
    def runtime_log(self) -> Path:
        return self.dir / ".enclave" / "logs" / "runtime.log"

    def start(self) -> None:
        """Start `enclave dev` (and nginx's path), wait until every target answers."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ENCLAVE_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        if self.loop == "asyncio":
            env["ENCLAVE_EVENT_LOOP"] = "asyncio"
        argv = [sys.executable, "-m", "enclave_core.cli.main", "dev", "-c", str(self.config_path)]
        self.dev = self.procs.start(argv, self.tmp / "dev.log", cwd=self.dir, env=env)
        limits = self.doc["supervisor"]["limits"]
        relay = [sys.executable, __file__, "_ingress", str(self.ports["relay"])]
        relay += [str(self.ports["app"]), self.loop, str(limits["max_connections"])]
        relay += [str(limits["send_timeout_s"]), str(limits["idle_timeout_s"])]
        started: dict[str, subprocess.Popen[bytes]] = {}
        if self.nginx_path:  # the ingress-alone reference, compared with nginx's stream relay
            started["IngressForwarder"] = self.procs.start(
                relay, self.tmp / "relay.log", cwd=self.tmp, env=env
            )
        if self.ceiling:  # an IngressForwarder -> the bare TLS relay -> the app
            bare = [sys.executable, __file__, "_bare", str(self.ports["bare_tls"])]
            bare += [str(self.ports["app"]), self.loop]
            started["bare TLS relay"] = self.procs.start(bare, self.tmp / "bare.log", env=env)
            front = [*relay[:3], str(self.ports["bare"]), str(self.ports["bare_tls"]), *relay[5:]]
            started["bare: IngressForwarder"] = self.procs.start(
                front, self.tmp / "bare-relay.log", env=env
            )
        try:
            wait_200(self.url("ingress"), 90)
        except RuntimeError:
            tail = (self.tmp / "dev.log").read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("enclave dev did not start:\n" + "\n".join(tail)) from None
        self.runtime_pid = next(p for p in children(self.dev.pid) if "runtime" in cmdline(p))
        self.procs.remember_tree(self.dev.pid)
        if self.nginx_path:
            write_certificate(self.nginx_dir)
            for name, text in (
                ("tls", tls_proxy_conf(self.nginx_dir, self.ports)),
                ("stream", stream_conf(self.nginx_dir, self.ports)),
            ):
                conf = self.nginx_dir / f"{name}.conf"
                conf.write_text(text)
                argv = [self.nginx, "-p", str(self.nginx_dir), "-c", str(conf)]
                argv += ["-e", str(self.nginx_dir / f"{name}-error.log"), "-g", "daemon off;"]
                proc = self.procs.start(argv, self.tmp / f"nginx-{name}.log")
                started["nginx stream" if name == "stream" else "nginx TLS proxy"] = proc
                time.sleep(0.2)
                if proc.poll() is not None:
                    log = (self.tmp / f"nginx-{name}.log").read_text(errors="replace")
                    raise RuntimeError(f"nginx ({name}) did not start: {log}")
        for target in ("relay", "stream", "stream_plain") if self.nginx_path else ():
            wait_200(self.url(target), 20)
        if self.ceiling:
            wait_200(self.url("bare"), 20)
        app = [p for p in children(self.runtime_pid) if "nginx" in " ".join(cmdline(p))]
        self.hop_pids = {name: process_tree(proc.pid) for name, proc in started.items()}
        self.hop_pids |= {"supervisor (ingress)": [self.dev.pid], "runtime": [self.runtime_pid]}
        self.hop_pids["app"] = [pid for master in app for pid in process_tree(master)]

    def pids(self) -> dict[str, int]:
        """The runtime and the supervisor (the `enclave dev` process)."""
        assert self.dev is not None
        return {"runtime": self.runtime_pid, "supervisor": self.dev.pid}

    def stop(self) -> None:
        """Stop every process this stack started and remove its folder."""
        try:
            self.procs.stop_all()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def serve_ingress(
    port: int, upstream_port: int, loop_name: str, max_conn: int, send_s: float, idle_s: float
) -> None:
    """An IngressForwarder in front of ``upstream_port``, built as the supervisor builds it."""
    import asyncio

    from enclave_core.log import configure_logging
    from enclave_core.streams.transport import event_loop_factory
    from enclave_core.supervisor.forwarders import IngressForwarder

    configure_logging("INFO", human=False)
    os.environ["ENCLAVE_EVENT_LOOP"] = loop_name

    async def main() -> None:
        forwarder = IngressForwarder(
            f"127.0.0.1:{port}",
            lambda: f"tcp://127.0.0.1:{upstream_port}",
            max_connections=max_conn,
            send_timeout_s=send_s,
            half_closed_idle_s=idle_s,
        )
        await forwarder.start()
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=event_loop_factory(vsock=False)) as runner:
        runner.run(main())


def serve_bare_tls(port: int, app_port: int, loop_name: str) -> None:
    """The least a TLS hop in Python can do: the runtime's TLS (its certificate maker, its
    handshake and :class:`~enclave_core.http.tls.TlsTransport`, its allocator settings), then
    bytes relayed to the app over one connection per client, with no HTTP at all."""
    import asyncio
    import socket

    from enclave_core.http.tls import TlsTransport, accept_tls
    from enclave_core.runtime.allocator import tune_allocator
    from enclave_core.runtime.tls import make_tls_identity
    from enclave_core.streams.transport import event_loop_factory

    os.environ["ENCLAVE_EVENT_LOOP"] = loop_name
    tune_allocator()
    context = make_tls_identity("bare").context

    class Side(asyncio.Protocol):
        """One end of the relay; writes what it reads to its peer, closes it when it ends."""

        def __init__(self) -> None:
            self.transport: Any = None
            self.peer: Side | None = None
            self.held: list[bytes] = []  # client bytes read before the app connection is up

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if self.peer is None or self.peer.transport is None:
                self.held.append(data)
            else:
                self.peer.transport.write(data)

        def eof_received(self) -> bool:
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.close()

    async def adopt(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            tls = await accept_tls(loop, sock, context, 10.0)
        except (OSError, TimeoutError):
            sock.close()
            return
        client = Side()
        TlsTransport(loop, tls, client).start()
        try:
            _, app = await loop.create_connection(Side, "127.0.0.1", app_port)
        except OSError:
            client.transport.close()
            return
        client.peer, app.peer = app, client
        for data in client.held:
            app.transport.write(data)
        client.held.clear()
        if client.transport.is_closing():
            app.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        listener.setblocking(False)
        tasks: set[asyncio.Task[None]] = set()

        def accept() -> None:
            for _ in range(64):
                try:
                    sock, _addr = listener.accept()
                except BlockingIOError:
                    return
                task = loop.create_task(adopt(loop, sock))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        loop.add_reader(listener.fileno(), accept)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=event_loop_factory(vsock=False)) as runner:
        runner.run(main())


# -- CPU time -------------------------------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of ``pid`` so far, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int]:
    """The machine's idle (with I/O wait) and total CPU ticks so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


def hop_ticks(stack: TlsPathStack, target: str) -> dict[str, int]:
    """The CPU ticks so far of each process ``target``'s requests go through."""
    return {
        hop: sum(cpu_ticks(pid) for pid in stack.hop_pids.get(hop, []))
        for hop in (*HOPS[target], "app")
    }


# -- load -------------------------------------------------------------------------------------
def run_wrk(
    url: str, connections: int, duration: float, extra: tuple[str, ...] = (), threads: int = 2
) -> dict[str, float]:
    """One wrk run: requests/s, p50/p99 in ms, requests, errors (socket errors and non-2xx)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", *extra]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    """The figures of wrk's output."""

    def find(pattern: str) -> str:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return match.group(1)

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    errors += int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return {
        "rps": float(find(r"Requests/sec:\s+([\d.]+)")),
        "p50": wrk_seconds(find(r"\s50%\s+(\S+)")) * 1000,
        "p99": wrk_seconds(find(r"\s99%\s+(\S+)")) * 1000,
        "requests": float(find(r"(\d+) requests in")),
        "errors": float(errors),
    }


# -- checking that Connection: close means a new connection and handshake ---------------------
def passive_opens() -> int:
    """TCP connections accepted on this machine so far (/proc/net/snmp, ``Tcp: PassiveOpens``)."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    rows = [ln.split() for ln in lines if ln.startswith("Tcp:")]
    return int(rows[1][rows[0].index("PassiveOpens")])


def stub_accepts(stack: TlsPathStack) -> int:
    """nginx TLS proxy's accepted connections (stub_status)."""
    import urllib.request

    with urllib.request.urlopen(stack.url("tls_status"), timeout=5) as resp:
        text = resp.read().decode()
    return int(text.splitlines()[2].split()[0])


def check_new_connections(stack: TlsPathStack, duration: float = 2.0) -> list[str]:
    """Run the new-connection load briefly on each path; count accepted connections and handshakes.

    Each path has two TCP hops before the app (relay, then TLS), so a new client connection per
    request shows as about two accepted connections per request (the upstream connections to the
    app are kept alive).
    """
    lines: list[str] = []
    extra = ("-H", "Connection: close")
    for target in ("ingress", "stream_check"):
        accepts, opens = (stub_accepts(stack) if target != "ingress" else 0), passive_opens()
        result = run_wrk(stack.url(target), 16, duration, extra)
        time.sleep(0.2)
        opened = passive_opens() - opens
        done = int(result["requests"])
        parts = [
            f"wrk completed {done} requests; the machine accepted {opened} TCP connections"
            f" meanwhile ({opened / max(done, 1):.2f} per request, two hops)"
        ]
        if target != "ingress":
            accepted = stub_accepts(stack) - accepts - 1  # less the status request itself
            parts.append(f"the TLS proxy's stub_status accepts: +{accepted}")
            log = (stack.nginx_dir / "tls-check.log").read_text().split("\n")
            entries = [e.split() for e in log if e.strip()]
            reused = sum(1 for e in entries if e[2] == "r")
            versions = collections.Counter(e[1] for e in entries)
            parts.append(
                f"its log: {len(entries)} requests, {len({e[0] for e in entries})} connections"
                f" ({', '.join(versions)}), {reused} on resumed TLS sessions"
                " (`$ssl_session_reused`: wrk offers the previous session's ticket)"
            )
        lines.append(f"{TARGETS[target.removesuffix('_check')]}: " + "; ".join(parts))
    lines.append(resumption_probe(stack))
    return lines


def resumption_probe(stack: TlsPathStack) -> str:
    """Whether each TLS server resumes a session on a second connection (Python's ssl client)."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    found = []
    for target in ("ingress", "stream"):
        session = None
        reused = []
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", stack.ports[target]), timeout=5) as raw:
                with context.wrap_socket(raw, session=session) as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    while tls.recv(65536):
                        pass
                    reused.append(tls.session_reused)
                    session = tls.session
        found.append(f"{TARGETS[target]}: {sum(reused[1:])} of 2 resumed")
    return (
        "TLS 1.3 session resumption on a second and third connection offering the previous"
        " session: " + "; ".join(found)
    )


# -- profile ----------------------------------------------------------------------------------
def py_spy() -> str | None:
    """The py-spy executable (the dev virtualenv's, else PATH's)."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile(
    stack: TlsPathStack, load: str, seconds: float, out: Path
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]], float]:
    """py-spy the runtime under ``load``: samples, top functions and files (self %), req/s."""
    spy = py_spy()
    assert spy is not None
    _, conns, path, extra, _ = LOADS[load]
    argv = [spy, "record", "--pid", str(stack.runtime_pid), "--duration", f"{seconds:g}"]
    argv += ["--rate", "250", "--format", "raw", "--function", "--nonblocking", "-o", str(out)]
    spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        result = run_wrk(stack.url("ingress", path), conns, seconds - 1, extra)
    finally:
        _, err = spy_proc.communicate(timeout=seconds + 30)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    functions: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        leaf = stack_text.split(";")[-1]
        match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", leaf)
        func, file = (match.group(1), match.group(2)) if match else (leaf, "?")
        file = short_file(file)
        functions[f"`{func}` ({file})"] += count
        files[file] += count
        total += count
    pct = 100.0 / max(total, 1)
    return (
        total,
        [(k, v * pct) for k, v in functions.most_common(15)],
        [(k, v * pct) for k, v in files.most_common(10)],
        result["rps"],
    )


def short_file(path: str) -> str:
    """A file name as the reader knows it: enclave_core/..., asyncio/..., or the site package."""
    if "enclave_core/" in path:
        return "enclave_core/" + path.split("enclave_core/", 1)[1]
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# -- orchestration ----------------------------------------------------------------------------
def targets_of(load: str, ceiling: bool) -> tuple[str, ...]:
    """The targets measured under ``load``: the project's first, nginx's last."""
    pair = LOADS[load][4]
    if ceiling and pair[0] == "ingress":
        return (pair[0], "bare", pair[1])
    return pair


def measure_target(
    stack: TlsPathStack, target: str, load: str, duration: float
) -> dict[str, float]:
    """One wrk run of ``load`` on ``target``, with the CPU time each hop spent per request."""
    _, conns, path, extra, _ = LOADS[load]
    before, (idle0, total0) = hop_ticks(stack, target), machine_ticks()
    result = run_wrk(stack.url(target, path), conns, duration, extra)
    after, (idle1, total1) = hop_ticks(stack, target), machine_ticks()
    done = max(result["requests"], 1.0)
    for hop, ticks in after.items():  # microseconds of CPU per request
        result[f"cpu:{hop}"] = (ticks - before[hop]) / CLOCK_TICKS * 1e6 / done
    result["busy"] = 100.0 * (1 - (idle1 - idle0) / max(total1 - total0, 1))
    return result


def measure_loop(loop: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Start the stacks on ``loop``, check, measure in rounds, profile; everything stopped after."""
    stack = TlsPathStack(loop, ceiling=opts.ceiling)
    out: dict[str, Any] = {"loop": loop, "results": {}, "profiles": []}
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        load: {t: [] for t in targets_of(load, opts.ceiling)} for load in LOADS
    }
    try:
        stack.start()
        print(f"[{loop}] stack up: runtime pid {stack.runtime_pid}", flush=True)
        for load, (_, conns, path, extra, _) in LOADS.items():  # warm up
            for target in results[load]:
                run_wrk(stack.url(target, path), conns, 1.0, extra)
        out["checks"] = check_new_connections(stack)
        for line in out["checks"]:
            print(f"[{loop}] check: {line}", flush=True)
        logs = (stack.runtime_log, stack.tmp / "dev.log")
        log_before = [path.stat().st_size if path.exists() else 0 for path in logs]
        for rnd in range(opts.rounds):
            for load, runs in results.items():
                targets = tuple(runs)
                for target in targets if rnd % 2 == 0 else targets[::-1]:
                    result = measure_target(stack, target, load, opts.duration)
                    runs[target].append(result)
                    if result["errors"]:
                        print(f"  warning: {target} {load}: {result['errors']:.0f} errors")
                nginx = runs[targets[-1]][-1]["rps"]
                print(
                    f"[{loop}] round {rnd + 1} {load}: "
                    + ", ".join(
                        f"{TARGETS[t]} {runs[t][-1]['rps']:.0f} req/s"
                        f" ({runs[t][-1]['rps'] / nginx:.2f}x)"
                        for t in targets
                    ),
                    flush=True,
                )
        log_after = [path.stat().st_size if path.exists() else 0 for path in logs]
        out["log_bytes"] = [a - b for a, b in zip(log_after, log_before, strict=True)]
        out["results"] = results
        if loop == "asyncio" and not opts.no_profile:
            if py_spy() is None:
                out["profile_note"] = (
                    "py-spy not found (pip install py-spy in the dev virtualenv): no profile"
                )
            else:
                for load in ("keepalive", "newconn"):
                    path = stack.tmp / f"profile-{load}.txt"
                    out["profiles"].append(
                        (load, *profile(stack, load, opts.profile_seconds, path))
                    )
    finally:
        stack.stop()
    return out


def ratios_to_nginx(runs: dict[str, list[dict[str, float]]], target: str) -> list[float]:
    """``target``'s requests/s over nginx's (the last target), round by round."""
    nginx = list(runs)[-1]
    return [a["rps"] / b["rps"] for a, b in zip(runs[target], runs[nginx], strict=True)]


def tabulate(run: dict[str, Any]) -> list[str]:
    """One loop's table: medians per target, ratio to nginx per round and its median."""
    table = [
        "| load | path | requests/s (median) | p50 ms | p99 ms | x nginx (median of"
        " rounds) | per round |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for load, (label, *_) in LOADS.items():
        runs = run["results"][load]
        for i, target in enumerate(runs):
            med = {k: statistics.median(r[k] for r in runs[target]) for k in ("rps", "p50", "p99")}
            rate = f"{med['rps']:.0f}"
            if load == "big":
                rate += f" ({med['rps'] * BIG_FILE / 1e6:.0f} MB/s)"
            cells = [label if i == 0 else "", TARGETS[target], rate]
            cells += [f"{med['p50']:.2f}", f"{med['p99']:.2f}"]
            if i < len(runs) - 1:
                ratios = ratios_to_nginx(runs, target)
                bold = "**" if i == 0 else ""
                cells += [f"{bold}{statistics.median(ratios):.2f}x{bold}"]
                cells += [", ".join(f"{r:.2f}" for r in ratios)]
            else:
                cells += ["1.00x", ""]
            table.append("| " + " | ".join(cells) + " |")
    return table


def cpu_table(run: dict[str, Any]) -> list[str]:
    """CPU time per request on each hop (median of rounds), and how busy the machine was."""
    table = [
        "CPU time per request, by process (µs, median of rounds; user + system time from"
        " /proc/<pid>/stat, so the kernel's socket and loopback work counts on the process that"
        " made the call; wrk's share is in the machine's busy time):",
        "",
        "| load | path | per hop (µs/request) | hops total | app | machine busy |",
        "|---|---|---|---:|---:|---:|",
    ]
    for load, (label, *_) in LOADS.items():
        runs = run["results"][load]
        for i, target in enumerate(runs):
            rounds = runs[target]
            per_hop = {h: statistics.median(r[f"cpu:{h}"] for r in rounds) for h in HOPS[target]}
            hops = ", ".join(f"{hop} {us:.0f}" for hop, us in per_hop.items())
            app = statistics.median(r["cpu:app"] for r in rounds)
            busy = statistics.median(r["busy"] for r in rounds)
            cells = [label if i == 0 else "", TARGETS[target], hops]
            cells += [f"{sum(per_hop.values()):.0f}", f"{app:.0f}", f"{busy:.0f} %"]
            table.append("| " + " | ".join(cells) + " |")
    return [*table, ""]


def profile_tables(run: dict[str, Any]) -> list[str]:
    """The profile's top functions and files, per load."""
    lines: list[str] = []
    for load, total, functions, files, rps in run["profiles"]:
        lines += [
            f"Runtime CPU profile, standard loop, {LOADS[load][0]} through the ingress"
            f" ({rps:.0f} req/s while sampled; {total} samples of the runtime's busy time,"
            " py-spy 250 Hz, self time):",
            "",
            "| function (file) | % of samples |",
            "|---|---:|",
            *(f"| {name} | {pct:.1f} |" for name, pct in functions),
            "",
            "| file | % of samples |",
            "|---|---:|",
            *(f"| {name} | {pct:.1f} |" for name, pct in files),
            "",
        ]
    if run.get("profile_note"):
        lines += [run["profile_note"], ""]
    return lines


def main() -> int:
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--loops", default="asyncio,uvloop", help="asyncio, uvloop or both")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--no-docs", action="store_true", help="do not append to the docs")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also measure the least a Python TLS hop can do (a bare TLS relay, no HTTP)",
    )
    opts = parser.parse_args()
    if not have_nginx_and_wrk():
        return 2
    loops = [name.strip() for name in opts.loops.split(",") if name.strip()]
    if any(name not in LOOP_NAMES for name in loops):
        parser.error("--loops takes asyncio, uvloop or asyncio,uvloop")
    # a SIGTERM unwinds like Ctrl-C, so that every process started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = machine()
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    runs = [measure_loop(loop, opts) for loop in loops]

    table: list[str] = []
    summary: list[str] = []
    for run in runs:
        table += [f"**{LOOP_NAMES[run['loop']]}** (`enclave dev`"
                  + (" with `ENCLAVE_EVENT_LOOP=asyncio`" if run["loop"] == "asyncio" else "")
                  + ")", "", *tabulate(run), ""]  # fmt: skip
        table += [f"- check: {line}" for line in run["checks"]]
        table += [
            f"- during the measured rounds the runtime's log grew by {run['log_bytes'][0]} bytes"
            f" and `enclave dev`'s output by {run['log_bytes'][1]} bytes (both at INFO, the"
            " level users run: no logging on the request path)",
            "",
        ]
        table += cpu_table(run)
        table += profile_tables(run)
        ratios = []
        for load in LOADS:
            res = run["results"][load]
            for target in list(res)[:-1]:
                name = load if target == list(res)[0] else f"{load} ({target})"
                ratios.append(f"{name} {statistics.median(ratios_to_nginx(res, target)):.2f}x")
        summary.append(f"{run['loop']}: " + ", ".join(ratios))
    report(
        "TLS path: ingress -> runtime (TLS) -> app, against nginx",
        method=(
            "`enclave dev` (real supervisor, runtime and app processes; enclave.yaml on free"
            " loopback ports, `runtime.tls: true`, one ingress entry) whose app is nginx, one"
            f" worker ({version}); the same app instance behind nginx's path: `stream` relay (one"
            " worker) -> TLS reverse proxy (one worker, ECDSA P-256 self-signed certificate like"
            " the runtime's, upstream keep-alive, HTTP/1.1, access_log off,"
            " `proxy_max_temp_file_size 0`, `keepalive_requests 1000000`). Ingress alone: an"
            " IngressForwarder process with the supervisor's limits on the same loop vs nginx"
            " `stream` -> the app."
            + (
                " Ceiling (`--ceiling`): an IngressForwarder -> a bare Python TLS relay (the"
                " runtime's certificate, handshake, TlsTransport and allocator settings, bytes"
                " relayed to the app over one connection per client, no HTTP parsing) -> the app."
                if opts.ceiling
                else ""
            )
            + f" wrk -t2, {opts.rounds} alternating rounds of"
            f" {opts.duration:g} s per target and load, medians; the ratio is project/nginx per"
            " round and its median. Everything shares the machine's CPUs"
        ),
        began=began,
        table=table,
        summary="Project/nginx, median of per-round ratios: " + "; ".join(summary) + ".",
        docs=not opts.no_docs,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_ingress":
        a = sys.argv[2:]
        serve_ingress(int(a[0]), int(a[1]), a[2], int(a[3]), float(a[4]), float(a[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_bare":
        serve_bare_tls(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
