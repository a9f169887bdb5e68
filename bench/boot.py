#!/usr/bin/env python3
"""Benchmark boot: seconds from starting `enclave dev` to the first 200 through the ingress.

    python bench/boot.py [--runs 3] [--no-docs]

Each run copies examples/hello to a temp dir with an enclave.yaml on free ports
(``runtime.tls: true``), starts `enclave dev` as a subprocess and polls ``GET /`` through the
ingress (HTTPS, the dev certificate not verified) every 10 ms until it answers 200: that is a
"first boot" (no state: keys, secrets and the dev CA are created). It then reads
``kms_operations`` from ``/v1/enclave-info``, stops `enclave dev`, and starts it again on the same
state: a "second boot". Medians over the runs; appended to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import DevStack, get_json, machine, report, wait_200

TARGET_S = 2.0


def one_boot(stack: DevStack) -> tuple[float, int]:
    """Start `enclave dev`, return (seconds to the first 200, kms_operations); leave it running."""
    began = stack.start()
    try:
        ready = wait_200(stack.ingress + "/", deadline_s=60)
    except RuntimeError:
        log = stack.tail_log()
        raise RuntimeError(f"no 200 through the ingress; enclave dev said:\n{log}") from None
    info = get_json(stack.ingress + "/v1/enclave-info")
    return ready - began, int(info["metrics"]["kms_operations"])


def main() -> int:
    """Run first and second boots, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true")
    opts = parser.parse_args()
    began = machine()
    results: dict[str, list[tuple[float, int]]] = {"first boot": [], "second boot": []}
    for run in range(opts.runs):
        stack = DevStack(tls=True)
        try:
            for kind in results:
                results[kind].append(one_boot(stack))
                stack.stop()
        finally:
            stack.cleanup()
        line = ", ".join(f"{k} {v[-1][0]:.2f} s ({v[-1][1]} KMS calls)" for k, v in results.items())
        print(f"run {run + 1}/{opts.runs}: {line}", flush=True)

    table = [
        "| boot | seconds to first 200 (median) | min | max | KMS calls per boot |",
        "|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for kind, runs in results.items():
        secs = [s for s, _ in runs]
        kms = sorted({k for _, k in runs})
        med = statistics.median(secs)
        table.append(
            f"| {kind} | {med:.2f} | {min(secs):.2f} | {max(secs):.2f} |"
            f" {', '.join(map(str, kms))} |"
        )
        verdicts.append(f"{kind} {med:.2f} s ({'met' if med <= TARGET_S else 'MISSED'})")
    summary = f"Target ≤ {TARGET_S:g} s in development: " + "; ".join(verdicts)
    report(
        "Boot",
        method=(
            "a temp copy of examples/hello, enclave.yaml on free ports with"
            " `runtime.tls: true`; time from `subprocess.Popen([python, -m, enclave_core.cli.main,"
            " dev, -c, ...])` to the first 200 for `GET /` through the ingress (HTTPS, polled"
            " every 10 ms); KMS calls: `metrics.kms_operations` of `/v1/enclave-info` right after."
            f" First boot: fresh state; second boot: the same state after a clean stop."
            f" {opts.runs} runs, medians"
        ),
        began=began,
        table=table,
        summary=summary,
        docs=not opts.no_docs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
