#!/usr/bin/env python3
"""Soak the production TLS path and watch the runtime's and the supervisor's memory.

    python bench/soak.py [--minutes 10] [--loop asyncio|uvloop] [--interval 30] [--no-docs]

The stack is the one of ``bench/tls_path.py``: ``enclave dev`` (real supervisor, runtime and app
processes, enclave.yaml on free loopback ports, ``runtime.tls: true``) whose app is nginx (one
worker, a ~100-byte page at ``/``), on the standard loop by default (``ENCLAVE_EVENT_LOOP=asyncio``,
as in a Nitro Enclave; ``--loop uvloop`` for the development loop). Through the ingress (HTTPS),
for ``--minutes``: ``wrk -t2 -c64`` keep-alive, plus ``wrk -t1 -c8 -H "Connection: close"`` (8
clients opening a new TLS connection per request). VmRSS of the runtime and of the supervisor
(the ``enclave dev`` process) is read from /proc every ``--interval`` seconds and printed, then
during one idle minute after the load.

Reported: RSS before the load, at minute 2, at the end of the load, after the idle minute; the
growth from minute 2 to the end (target ≤ 5 MiB), whether the runtime is back within 5 MiB of its
pre-load size after the idle minute (goal), and idle RSS ≤ 64 MiB; also the runtime's open file
descriptors and the load's errors. Needs ``wrk`` and ``nginx`` (``apt-get install wrk nginx-light
libnginx-mod-stream`` on Debian/Ubuntu). Appended to ``docs/benchmarks.md`` (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from common import machine, report, rss_mib, wait_200
from tls_path import TlsPathStack, have_nginx_and_wrk, parse_wrk

GROWTH_TARGET_MIB = 5.0
RETURN_GOAL_MIB = 5.0
IDLE_TARGET_MIB = 64.0


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    """Soak, sample and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle after the load")
    parser.add_argument("--no-docs", action="store_true", help="do not append to the docs")
    opts = parser.parse_args()
    if not have_nginx_and_wrk():
        return 2
    # a SIGTERM unwinds like Ctrl-C, so that every process started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = machine()
    duration = int(opts.minutes * 60)
    stack = TlsPathStack(opts.loop, nginx_path=False)
    samples: list[tuple[str, float, dict[str, float], int]] = []
    loads: list[subprocess.Popen[str]] = []
    outputs: list[str] = []
    try:
        stack.start()
        pids = stack.pids()
        url = stack.url("ingress")
        for _ in range(20):  # has served, with both kinds of connection, before "before"
            wait_200(url, deadline_s=5)
        subprocess.run(["wrk", "-t1", "-c8", "-d2s", url], capture_output=True, check=True)
        time.sleep(3)

        def sample(phase: str, t: float) -> None:
            rss = {name: rss_mib(pid) for name, pid in pids.items()}
            fds = open_fds(pids["runtime"])
            samples.append((phase, t, rss, fds))
            print(
                f"{phase:>5} t={t:6.0f} s  runtime {rss['runtime']:6.1f} MiB  supervisor"
                f" {rss['supervisor']:6.1f} MiB  runtime fds {fds}",
                flush=True,
            )

        sample("idle", 0)
        argv = ["wrk", "--latency", f"-d{duration}s"]
        loads = [
            subprocess.Popen(
                [*argv, *extra, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for extra in (["-t2", "-c64"], ["-t1", "-c8", "-H", "Connection: close"])
        ]
        start = time.monotonic()
        tick = 1
        while any(p.poll() is None for p in loads):
            wake = start + tick * opts.interval
            while time.monotonic() < wake and any(p.poll() is None for p in loads):
                time.sleep(0.2)
            if any(p.poll() is None for p in loads):
                sample("load", time.monotonic() - start)
                tick += 1
        outputs = [p.communicate()[0] for p in loads]
        loads = []
        sample("end", time.monotonic() - start)
        end = time.monotonic()
        for i in range(1, int(opts.idle // opts.interval) + 1):
            time.sleep(max(0.0, end + i * opts.interval - time.monotonic()))
            sample("idle", time.monotonic() - start)
    finally:
        for proc in loads:
            proc.kill()
            proc.wait()
        stack.stop()

    results = [parse_wrk(out) for out in outputs]
    before = samples[0][2]
    end_rss = next(s[2] for s in samples if s[0] == "end")
    # the first sample at or after minute 2 (the end of the load for a 2-minute run)
    minute2 = next((s[2] for s in samples if s[0] in ("load", "end") and s[1] >= 115), end_rss)
    after = samples[-1][2]
    table = [
        "| sample | seconds | runtime VmRSS MiB | supervisor VmRSS MiB | runtime open fds |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {phase} | {t:.0f} | {rss['runtime']:.1f} | {rss['supervisor']:.1f} | {fds} |"
            for phase, t, rss, fds in samples
        ),
        "",
        "| | runtime MiB | supervisor MiB |",
        "|---|---:|---:|",
    ]
    for label, rss in (
        ("before the load", before),
        ("at minute 2", minute2),
        ("end of the load", end_rss),
        (f"after {opts.idle:g} s idle", after),
    ):
        table.append(f"| {label} | {rss['runtime']:.1f} | {rss['supervisor']:.1f} |")
    growth = end_rss["runtime"] - minute2["runtime"]
    back = after["runtime"] - before["runtime"]
    verdicts = [
        f"runtime growth from minute 2 to the end of the load: {growth:+.1f} MiB (target ≤"
        f" {GROWTH_TARGET_MIB:g} MiB: {'met' if growth <= GROWTH_TARGET_MIB else 'MISSED'};"
        f" supervisor {end_rss['supervisor'] - minute2['supervisor']:+.1f} MiB)",
        f"after the idle minute the runtime is {back:+.1f} MiB from its pre-load size (goal within"
        f" {RETURN_GOAL_MIB:g} MiB: {'met' if abs(back) <= RETURN_GOAL_MIB else 'missed'})",
        f"idle runtime RSS {before['runtime']:.1f} MiB before and {after['runtime']:.1f} MiB after"
        f" (target ≤ {IDLE_TARGET_MIB:g} MiB:"
        f" {'met' if max(before['runtime'], after['runtime']) <= IDLE_TARGET_MIB else 'MISSED'})",
    ]
    summary = (
        f"Load for {duration} s through the ingress (HTTPS): keep-alive wrk -t2 -c64"
        f" {results[0]['rps']:.0f} req/s (p50 {results[0]['p50']:.2f} ms, p99"
        f" {results[0]['p99']:.2f} ms, {results[0]['errors']:.0f} errors); new TLS connection per"
        f" request wrk -t1 -c8 {results[1]['rps']:.0f} req/s ({results[1]['errors']:.0f} errors)."
        "\n\n" + "; ".join(verdicts) + "."
    )
    loop = "standard asyncio loop (`ENCLAVE_EVENT_LOOP=asyncio`)"
    report(
        f"Soak, {opts.minutes:g} min, {opts.loop}",
        method=(
            "`enclave dev` with nginx as the app (bench/tls_path.py's stack, `runtime.tls: true`)"
            f" on the {loop if opts.loop == 'asyncio' else 'uvloop (development) loop'};"
            " wrk -t2 -c64 keep-alive plus wrk -t1 -c8 with `Connection: close` (a new TLS"
            " connection per request) on `GET /` through the ingress; VmRSS from"
            f" /proc/<pid>/status every {opts.interval:g} s, then {opts.idle:g} s idle"
        ),
        began=began,
        table=table,
        summary=summary,
        docs=not opts.no_docs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
