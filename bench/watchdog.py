#!/usr/bin/env python3
"""Benchmark watchdog recovery: seconds from `kill -9` of the runtime to a request served again.

    python bench/watchdog.py [--runs 3] [--no-docs]

Each run starts `enclave dev` on a fresh temp copy of examples/hello (free ports,
``runtime.tls: true``, the example's watchdog settings), waits for ``GET /`` through the ingress
to answer 200, sends SIGKILL to the runtime (the supervisor's child, found via /proc), and polls
``GET /`` through the ingress every 10 ms until a 200 comes from a new runtime process. A fresh
stack per run, so every restart is a first restart (backoff_initial_s, not a doubled delay).
Medians; appended to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

from common import DevStack, machine, report, wait_200


def one_run() -> tuple[float, dict[str, float]]:
    """Seconds from the kill to the first 200 again, and the watchdog settings used."""
    stack = DevStack(tls=True)
    try:
        stack.start()
        wait_200(stack.ingress + "/", deadline_s=60)
        old = stack.runtime_pid()
        assert old is not None
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)
        # a request already in flight could still be answered by the dying process: wait for
        # the old pid to be gone from the supervisor's children before polling
        while old in (stack.runtime_pid(),):
            time.sleep(0.005)
        try:
            served = wait_200(stack.ingress + "/", deadline_s=60)
        except RuntimeError:
            raise RuntimeError(f"not served again; enclave dev said:\n{stack.tail_log()}") from None
        new = stack.runtime_pid()
        assert new is not None and new != old, "the runtime was not replaced"
        return served - killed, dict(stack.doc["supervisor"]["watchdog"])
    finally:
        stack.cleanup()


def main() -> int:
    """Run and report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true")
    opts = parser.parse_args()
    began = machine()
    secs: list[float] = []
    watchdog: dict[str, float] = {}
    for run in range(opts.runs):
        value, watchdog = one_run()
        secs.append(value)
        print(f"run {run + 1}/{opts.runs}: {value:.2f} s", flush=True)
    backoff = float(watchdog["backoff_initial_s"])
    target = backoff + 2
    med = statistics.median(secs)
    table = [
        "| kill -9 of the runtime to first 200 again | seconds |",
        "|---|---:|",
        f"| median of {opts.runs} | {med:.2f} |",
        f"| min / max | {min(secs):.2f} / {max(secs):.2f} |",
        f"| backoff_initial_s | {backoff:g} |",
    ]
    settings = ", ".join(f"{k}={v}" for k, v in watchdog.items())
    ok = "met" if med <= target else "MISSED"
    summary = f"Target ≤ backoff + 2 s = {target:g} s: {med:.2f} s ({ok}). Watchdog: {settings}."
    report(
        "Watchdog recovery",
        method=(
            "`enclave dev` on a fresh temp copy of examples/hello per run"
            " (`runtime.tls: true`); SIGKILL to the runtime process, then `GET /` through the"
            " ingress polled every 10 ms until 200 from a new runtime; the app dies with the"
            " runtime (PR_SET_PDEATHSIG) and boots again with it"
        ),
        began=began,
        table=table,
        summary=summary,
        docs=not opts.no_docs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
