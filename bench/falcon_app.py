#!/usr/bin/env python3
"""Benchmark the Falcon + gunicorn example (examples/falcon) direct and through the runtime (TLS).

    python bench/falcon_app.py [--rounds 5] [--duration 5] [--connections 32] [--path /]
                               [--no-docs]

Runs a temp copy of ``examples/falcon`` (what ``enclave init --template falcon`` writes) with
``enclave dev``, its enclave.yaml moved to free ports (``runtime.tls: true`` as written, gunicorn
with one gthread worker per ``enclave.cpu_count``). Then, in alternating rounds in the same run,
it loads three targets and reports medians of requests/s and p50/p99 latency:

- ``direct``: gunicorn's own port (plain HTTP), as if there were no enclave;
- ``runtime``: the runtime's public listener (HTTPS), which proxies to gunicorn;
- ``ingress``: the supervisor's ingress in front of it (HTTPS), the path a client takes.

``--path /notes/bench`` measures a read of encrypted storage per request instead of the greeting
(the note is stored first). The load generator is ``wrk`` when installed (``apt-get install wrk``
on Debian and Ubuntu, ``brew install wrk`` on macOS), else a built-in asyncio keep-alive client
with TLS in its own process (slower: it measures less of the server). The table is printed and
appended to ``docs/benchmarks.md`` (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from common import free_port, machine, on_free_ports, report, wait_200, write_yaml
from proxy import run_wrk

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "falcon"
TARGETS = {
    "direct": "gunicorn direct (HTTP)",
    "runtime": "runtime public listener (TLS) -> gunicorn",
    "ingress": "ingress -> runtime (TLS) -> gunicorn",
}
_NO_VERIFY = ssl.create_default_context()
_NO_VERIFY.check_hostname = False  # the runtime's certificate is attested, not CA-issued
_NO_VERIFY.verify_mode = ssl.CERT_NONE


# -- the stack --------------------------------------------------------------------------------
class FalconStack:
    """A temp copy of examples/falcon on free ports, run with `enclave dev`."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-falcon-"))
        self.dir = self.tmp / "falcon"
        # copytree follows the example's links to the package templates: real files here.
        shutil.copytree(EXAMPLE, self.dir, ignore=shutil.ignore_patterns(".enclave", "*.pyc"))
        doc = yaml.safe_load((self.dir / "enclave.yaml").read_text(encoding="utf-8"))
        self.ports = {"direct": free_port(), "runtime": free_port(), "ingress": free_port()}
        ports = self.ports
        on_free_ports(doc, runtime=ports["runtime"], ingress=ports["ingress"], app=ports["direct"])
        self.doc = doc
        self.config_path = write_yaml(self.dir / "enclave.yaml", doc)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, target: str, path: str) -> str:
        """The URL of ``path`` on ``target`` (direct is plain HTTP, the others HTTPS)."""
        scheme = "http" if target == "direct" else "https"
        return f"{scheme}://127.0.0.1:{self.ports[target]}{path}"

    def start(self) -> None:
        """Start `enclave dev` and wait until the app answers through the ingress."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
        # The app's command is `python3 -m gunicorn`: this interpreter's folder first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        with (self.tmp / "dev.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "enclave_core.cli.main", "dev", "-c", str(self.config_path)],
                cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            wait_200(self.url("ingress", "/"), 60)
        except RuntimeError:
            tail = (self.tmp / "dev.log").read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("enclave dev did not start:\n" + "\n".join(tail)) from None

    def put_note(self, name: str, data: bytes) -> None:
        """Store a note through the app (for ``--path /notes/NAME``)."""
        request = urllib.request.Request(
            self.url("ingress", f"/notes/{name}"), data=data, method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10, context=_NO_VERIFY) as response:
            assert response.status == 201

    def stop(self) -> None:
        """SIGTERM `enclave dev` (it stops the runtime and gunicorn), then remove the folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the fallback load generator --------------------------------------------------------------
async def _client_load(url: str, connections: int, duration: float) -> dict[str, float]:
    """``connections`` keep-alive HTTP/1.1 clients (TLS for https) in a loop of GET."""
    scheme, rest = url.split("://", 1)
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    request = f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode()
    tls = _NO_VERIFY if scheme == "https" else None
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port), ssl=tls)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {"rps": len(latencies) / elapsed, "p50": pick(0.50), "p99": pick(0.99)}


def run_builtin_load(url: str, connections: int, duration: float) -> dict[str, float]:
    """The fallback load generator, in its own process so it does not share this one's CPU."""
    out = subprocess.run(
        [sys.executable, __file__, "_load", url, str(connections), str(duration)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


# -- orchestration ----------------------------------------------------------------------------
def main() -> int:
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", default="/", help="what to GET (default: the greeting)")
    parser.add_argument("--no-docs", action="store_true", help="do not append to the docs")
    opts = parser.parse_args()

    if shutil.which("wrk"):
        load, tool = run_wrk, f"wrk -t2 -c{opts.connections}"
    else:
        print(
            "wrk not found (apt-get install wrk, or brew install wrk): using the built-in client",
            file=sys.stderr,
        )
        load, tool = run_builtin_load, f"built-in asyncio client, {opts.connections} connections"
    began = machine()
    stack = FalconStack()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in TARGETS}
    try:
        stack.start()
        if opts.path.startswith("/notes/"):
            stack.put_note(opts.path.removeprefix("/notes/"), b"a note kept in the enclave\n")
        for name in TARGETS:  # warm up: connections, workers, TLS sessions
            load(stack.url(name, opts.path), opts.connections, 1.0)
        names = list(TARGETS)
        for rnd in range(opts.rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:  # rotate
                results[name].append(
                    load(stack.url(name, opts.path), opts.connections, opts.duration)
                )
            line = ", ".join(f"{n} {runs[-1]['rps']:.0f}" for n, runs in results.items())
            print(f"round {rnd + 1} (req/s): {line}", flush=True)
        workers = stack.doc["enclave"]["cpu_count"]
    finally:
        stack.stop()

    table, summary = tabulate(results)
    report(
        f"Falcon + gunicorn example, GET {opts.path}",
        method=(
            "a temp copy of examples/falcon run by `enclave dev` (enclave.yaml on free ports,"
            f" `runtime.tls: true`), gunicorn gthread with {workers} workers (enclave.cpu_count)"
            f" x 4 threads; {tool}, {opts.rounds} alternating rounds of {opts.duration:g} s per"
            " target, medians; load generator, gunicorn, runtime and supervisor share the CPUs"
        ),
        began=began,
        table=table,
        summary=summary,
        docs=not opts.no_docs,
    )
    return 0


def tabulate(results: dict[str, list[dict[str, float]]]) -> tuple[list[str], str]:
    """The Markdown table (medians; ratios to direct as medians of per-round ratios), a summary."""

    def ratios(name: str) -> list[float]:
        pairs = zip(results[name], results["direct"], strict=True)
        return [r["rps"] / d["rps"] for r, d in pairs]

    table = [
        "| target | requests/s (median) | p50 ms | p99 ms | vs direct |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in TARGETS.items():
        runs = results[name]
        med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
        table.append(
            f"| {label} | {med['rps']:.0f} | {med['p50']:.2f} | {med['p99']:.2f} |"
            f" {statistics.median(ratios(name)):.2f}x |"
        )
    summary = "; ".join(
        f"{TARGETS[name]}/direct: **{statistics.median(ratios(name)):.2f}x** (per round: "
        + ", ".join(f"{r:.2f}" for r in ratios(name))
        + ")"
        for name in ("runtime", "ingress")
    )
    return table, summary


def _load_main(argv: list[str]) -> None:
    url, connections, duration = argv[0], int(argv[1]), float(argv[2])
    print(json.dumps(asyncio.run(_client_load(url, connections, duration))))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        _load_main(sys.argv[2:])
    else:
        sys.exit(main())
