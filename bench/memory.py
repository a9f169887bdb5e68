#!/usr/bin/env python3
"""Benchmark resident memory of the runtime and the supervisor, idle and under proxy load.

    python bench/memory.py [--duration 10] [--connections 32] [--no-docs]

Starts `enclave dev` on a temp copy of examples/hello (free ports, ``runtime.tls: true``); the
supervisor runs in that process, the runtime is its child (found via /proc) and the app the
runtime's child. Reads VmRSS from /proc/<pid>/status: idle after ready (and a few requests),
then every 0.5 s while ``wrk`` sends ``GET /`` through the ingress with 32 connections for 10 s
(peak reported), then idle again 2 s after the load. Appended to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import DevStack, machine, report, rss_mib, wait_200

TARGET_RUNTIME_IDLE_MIB = 80.0


def sample(pids: dict[str, int]) -> dict[str, float]:
    """VmRSS in MiB of each named pid."""
    return {name: rss_mib(pid) for name, pid in pids.items()}


def main() -> int:
    """Measure and report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-docs", action="store_true")
    opts = parser.parse_args()
    began = machine()
    stack = DevStack(tls=True)
    try:
        stack.start()
        wait_200(stack.ingress + "/", deadline_s=60)
        runtime = stack.runtime_pid()
        assert stack.proc is not None and runtime is not None
        pids = {"runtime": runtime, "supervisor (enclave dev)": stack.proc.pid}
        for _ in range(20):  # a few requests, so idle means "has served", not "never touched"
            wait_200(stack.ingress + "/", deadline_s=5)
        time.sleep(1)
        idle = sample(pids)
        wrk = subprocess.Popen(
            ["wrk", "-t2", f"-c{opts.connections}", f"-d{opts.duration}s", stack.ingress + "/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        peak = dict.fromkeys(pids, 0.0)
        while wrk.poll() is None:
            for name, value in sample(pids).items():
                peak[name] = max(peak[name], value)
            time.sleep(0.5)
        out = wrk.communicate()[0]
        rps = next((ln.split()[-1] for ln in out.splitlines() if "Requests/sec" in ln), "?")
        time.sleep(2)
        after = sample(pids)
    finally:
        stack.cleanup()

    table = [
        "| process | idle VmRSS MiB | peak under load MiB | 2 s after load MiB |",
        "|---|---:|---:|---:|",
    ]
    for name in pids:
        table.append(f"| {name} | {idle[name]:.1f} | {peak[name]:.1f} | {after[name]:.1f} |")
    ok = "met" if idle["runtime"] <= TARGET_RUNTIME_IDLE_MIB else "MISSED"
    summary = (
        f"Load: wrk -t2 -c{opts.connections} -d{opts.duration}s on `GET /` through the ingress"
        f" (HTTPS), {rps} requests/s. Target runtime idle RSS ≤ {TARGET_RUNTIME_IDLE_MIB:g} MiB:"
        f" {idle['runtime']:.1f} MiB ({ok})."
    )
    report(
        "Memory",
        method=(
            "`enclave dev` on a temp copy of examples/hello (`runtime.tls: true`);"
            " VmRSS from /proc/<pid>/status of the runtime (the supervisor's child) and of the"
            " `enclave dev` process (the supervisor runs in it); idle = after ready and 20"
            " requests; peak = highest of samples every 0.5 s during the load"
        ),
        began=began,
        table=table,
        summary=summary,
        docs=not opts.no_docs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
