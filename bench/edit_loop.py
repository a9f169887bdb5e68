#!/usr/bin/env python3
"""Benchmark the development edit loop: seconds from saving a file to the new version served.

    python bench/edit_loop.py [--edits 5] [--no-docs]

Starts `enclave dev --watch` on a fresh temp copy of examples/hello (free ports, TLS on the public
listener), waits for ``GET /`` through the ingress, then edits ``app.py`` ``--edits`` times (a new
greeting each time) and polls ``GET /`` every 20 ms until the new greeting is served. Every edit
runs the real nine-step migration (a new snapshot, a key made by the old enclave, the export, the
restart). The supervisor's JSON log lines give each phase's share: noticing the edit (polling and
letting edits settle), each migration step, and the new image answering after step 9. Medians;
appended to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from datetime import datetime

import yaml
from common import DevStack, machine, report, wait_200

from enclave_core.cli.devwatch import POLL_S, SETTLE_S


def greeting(url: str) -> str:
    """The body of ``GET /``, or "" when it does not answer 200."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url + "/", timeout=5, context=context) as answer:  # noqa: S310
            return answer.read().decode(errors="replace")
    except OSError:
        return ""


def log_times(stack: DevStack) -> list[tuple[float, dict[str, object]]]:
    """The supervisor's JSON log lines with their wall-clock times."""
    lines = []
    for line in (stack.tmp / "dev.log").read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        moment = datetime.fromisoformat(entry["time"]).timestamp()
        lines.append((moment, entry))
    return lines


def phases(stack: DevStack, edited: float, served: float) -> dict[str, float]:
    """Seconds spent in each phase of one edit (see the module docstring)."""
    entries = [(t, e) for t, e in log_times(stack) if edited <= t <= served + 1]
    started = next(t for t, e in entries if str(e.get("msg", "")).endswith(" started"))
    steps: dict[int, float] = {}
    for moment, entry in entries:
        if entry.get("status") in ("running", "done") and isinstance(entry.get("step"), int):
            steps.setdefault(int(entry["step"]), moment)  # type: ignore[call-overload]
    result = {"notice the edit (poll, settle, snapshot)": started - edited}
    previous = started
    for step in range(1, 10):
        result[f"step {step}"] = steps[step] - previous
        previous = steps[step]
    result["served after step 9"] = max(0.0, served - previous)
    return result


def main() -> int:
    """Run and report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true")
    opts = parser.parse_args()
    began = machine()
    stack = DevStack(tls=True)
    totals: list[float] = []
    shares: dict[str, list[float]] = {}
    try:
        # The example greets with $GREETING when set: leave it unset, so app.py's text shows.
        stack.doc["app"].get("env", {}).pop("GREETING", None)
        stack.config_path.write_text(yaml.safe_dump(stack.doc, sort_keys=False))
        stack.start(args=("--watch",))
        wait_200(stack.ingress + "/", deadline_s=60)
        source = stack.dir / "app.py"
        text = source.read_text()
        original = next(line for line in text.splitlines() if line.startswith("DEFAULT_GREETING"))
        for edit in range(opts.edits):
            time.sleep(1.5)  # a pause between saves, as a person makes
            wanted = f"Hello from edit {edit + 1}!"
            edited = time.time()
            source.write_text(text.replace(original, f"DEFAULT_GREETING = {wanted!r}"))
            deadline = time.monotonic() + 120
            while wanted not in greeting(stack.ingress):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"edit {edit + 1} not served:\n{stack.tail_log(40)}")
                time.sleep(0.02)
            served = time.time()
            totals.append(served - edited)
            time.sleep(0.5)  # the last log lines of the migration
            for name, seconds in phases(stack, edited, served).items():
                shares.setdefault(name, []).append(seconds)
            print(f"edit {edit + 1}: served after {served - edited:.2f} s")
    finally:
        stack.cleanup()
    total = statistics.median(totals)
    table = ["| phase | median seconds | share of the edit-to-served median |", "|---|---:|---:|"]
    for name, values in shares.items():
        median = statistics.median(values)
        table.append(f"| {name} | {median:.3f} | {100 * median / total:.0f} % |")
    table.append(f"| **edit to served** | **{total:.2f}** | 100 % |")
    summary = (
        f"Edit to served: median {total:.2f} s over {len(totals)} edits "
        f"(each: {', '.join(f'{t:.2f}' for t in totals)} s); the watcher polls every "
        f"{POLL_S:g} s and waits {SETTLE_S:g} s for edits to settle."
    )
    report(
        "Edit loop (`enclave dev --watch`)",
        method="edit app.py, poll GET / through the ingress (TLS) every 20 ms until the new "
        "greeting; phases from the supervisor's log lines",
        began=began,
        table=table,
        summary=summary,
        docs=not opts.no_docs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
