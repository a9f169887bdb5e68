#!/usr/bin/env python3
"""Benchmark encrypted storage against the raw `local` backend, and AES-256-GCM against openssl.

    python bench/storage.py [--rounds 5] [--seconds 1] [--allocator runtime|default] [--no-docs]

Part 1: put and get of 64 KiB and 1 MiB objects on ``LocalStorage`` in a temp dir, through
``EncryptedStorage`` (AES-256-GCM envelope by the core) and on the raw backend, alternating in
the same run; medians of MB/s (plaintext bytes); then a profile of one 1 MiB get, part by part.
Part 2: ``cryptography``'s AESGCM sealing 1 MiB buffers (MB/s) against
``openssl speed -evp aes-256-gcm`` at 16384 bytes, the hardware's limit.
Prints a table and appends it to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import append_docs, command_line, machine, stamp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from enclave_plugins.local_storage import LocalStorage

from enclave_core.crypto.envelope import EncryptedStorage
from enclave_core.log import configure_logging
from enclave_core.runtime.allocator import tune_allocator

SIZES = {"64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}
TARGET_STORAGE, TARGET_AES = 0.9, 0.8


def rate(op: Callable[[int], object], size: int, seconds: float) -> float:
    """MB/s of ``op(i)`` repeated for about ``seconds`` (at least 3 calls)."""
    count, began = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - began < seconds:
        op(count)
        count += 1
    return size * count / (time.perf_counter() - began) / 1e6


def storage_round(
    stores: dict[str, object], size: int, seconds: float, order: list[str]
) -> dict[tuple[str, str], float]:
    """One round: put then get for each store in ``order``; MB/s keyed by (store, op)."""
    data = os.urandom(size)
    out: dict[tuple[str, str], float] = {}
    for name in order:
        store = stores[name]
        keys = [f"bench/{size}/{i}" for i in range(16)]  # a few keys, overwritten in turn
        out[(name, "put")] = rate(lambda i: store.put(keys[i % 16], data), size, seconds)  # type: ignore[attr-defined]  # noqa: B023
        out[(name, "get")] = rate(lambda i: store.get(keys[i % 16]), size, seconds)  # type: ignore[attr-defined]  # noqa: B023
    return out


def aesgcm_rate(seconds: float) -> float:
    """MB/s of AESGCM.encrypt on 1 MiB buffers (a fresh nonce each time, as the envelope does)."""
    aead, data = AESGCM(AESGCM.generate_key(256)), os.urandom(1024 * 1024)
    return rate(lambda i: aead.encrypt(os.urandom(12), data, b"aad"), len(data), seconds)


def openssl_rate(seconds: int) -> tuple[float, str]:
    """openssl speed -evp aes-256-gcm at 16384-byte blocks, MB/s (1e6), and openssl's version."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "-bytes", "16384", "-evp", "aes-256-gcm"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # the result line: "AES-256-GCM  1234567.89k" (1000s of bytes per second)
    match = re.search(r"(?im)^aes-256-gcm\s+([\d.]+)k\s*$", out)
    if match is None:
        raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
    version = subprocess.run(
        ["openssl", "version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return float(match.group(1)) * 1000 / 1e6, version


def get_profile(tmp: Path, repeat: int = 300) -> list[str]:
    """Where the time of a 1 MiB get goes: each part timed alone (ms per call, median of 5).

    The encrypted get is the raw get plus one AES-256-GCM decryption, so the best possible
    encrypted/raw ratio is raw / (raw + decrypt) on this CPU; the table shows that ceiling.
    """
    import hashlib

    data = os.urandom(1024 * 1024)
    raw, inner = LocalStorage(tmp / "p-raw"), LocalStorage(tmp / "p-enc")
    enc = EncryptedStorage(inner, os.urandom(32))
    raw.put("k", data)
    enc.put("k", data)
    aead, nonce = AESGCM(AESGCM.generate_key(256)), os.urandom(12)
    sealed = aead.encrypt(nonce, data, b"aad")
    path = next(p for p in (tmp / "p-raw").rglob("k") if p.is_file())

    def ms(op: Callable[[], object]) -> float:
        samples = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(repeat):
                op()
            samples.append((time.perf_counter() - began) / repeat * 1e3)
        return statistics.median(samples)

    parts = {
        "raw get (`LocalStorage.get`)": ms(lambda: raw.get("k")),
        "encrypted get (`EncryptedStorage.get`)": ms(lambda: enc.get("k")),
        "  of which: read the 1 MiB file": ms(path.read_bytes),
        "  of which: SHA-256 ETag of 1 MiB (both paths)": ms(lambda: hashlib.sha256(data).digest()),
        "  of which: AES-256-GCM decrypt of 1 MiB (encrypted path only)": ms(
            lambda: aead.decrypt(nonce, sealed, b"aad")
        ),
    }
    values = list(parts.values())
    ceiling = values[0] / (values[0] + values[4])
    return [
        "| 1 MiB get, each part alone | ms per call |",
        "|---|---:|",
        *(f"| {name} | {value:.3f} |" for name, value in parts.items()),
        f"| best possible encrypted/raw: raw / (raw + decrypt) | {ceiling:.2f}x |",
    ]


def main() -> int:
    """Run both parts and report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per operation and round")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--allocator",
        choices=["runtime", "default"],
        default="runtime",
        help="runtime: glibc thresholds as `enclave runtime` sets them; default: glibc's own",
    )
    opts = parser.parse_args()
    configure_logging("INFO", human=False)  # as the runtime does: DEBUG lines are dropped
    tuned = opts.allocator == "runtime" and tune_allocator()
    began = machine()

    with tempfile.TemporaryDirectory(prefix="enclave-bench-storage-") as tmp:
        raw = LocalStorage(Path(tmp) / "raw")
        stores = {
            "raw": raw,
            "encrypted": EncryptedStorage(LocalStorage(Path(tmp) / "enc"), os.urandom(32)),
        }
        runs: dict[str, list[dict[tuple[str, str], float]]] = {s: [] for s in SIZES}
        for rnd in range(opts.rounds):
            order = ["raw", "encrypted"] if rnd % 2 == 0 else ["encrypted", "raw"]
            for label, size in SIZES.items():
                runs[label].append(storage_round(stores, size, opts.seconds, order))
            print(f"round {rnd + 1}/{opts.rounds} done", flush=True)
        profile = get_profile(Path(tmp))

    table = [
        "| object | op | raw MB/s | encrypted MB/s | encrypted/raw (median of rounds) |",
        "|---|---|---:|---:|---:|",
    ]
    verdicts: list[str] = []
    for label in SIZES:
        for op in ("put", "get"):
            raw_v = statistics.median(r[("raw", op)] for r in runs[label])
            enc_v = statistics.median(r[("encrypted", op)] for r in runs[label])
            ratio = statistics.median(r[("encrypted", op)] / r[("raw", op)] for r in runs[label])
            table.append(f"| {label} | {op} | {raw_v:.0f} | {enc_v:.0f} | {ratio:.2f}x |")
            if label == "1 MiB":
                ok = "met" if ratio >= TARGET_STORAGE else "MISSED"
                verdicts.append(f"1 MiB {op}: {ratio:.2f}x (target ≥ {TARGET_STORAGE}x: {ok})")

    aes = [aesgcm_rate(opts.seconds) for _ in range(3)]
    ossl_seconds = max(1, round(opts.seconds))
    ossl, version = openssl_rate(ossl_seconds)
    aes_med = statistics.median(aes)
    aes_ratio = aes_med / ossl
    table_aes = [
        "| AES-256-GCM encrypt | MB/s |",
        "|---|---:|",
        f"| cryptography AESGCM, 1 MiB buffers (median of 3) | {aes_med:.0f} |",
        f"| `openssl speed -evp aes-256-gcm`, 16384-byte blocks ({version}) | {ossl:.0f} |",
        f"| ratio | {aes_ratio:.2f}x |",
    ]
    ok = "met" if aes_ratio >= TARGET_AES else "MISSED"
    verdicts.append(f"AES-GCM/openssl: {aes_ratio:.2f}x (target ≥ {TARGET_AES}x: {ok})")
    print("\n" + "\n".join(table) + "\n\n" + "\n".join(profile))
    print("\n" + "\n".join(table_aes) + "\n")
    print("\n".join(verdicts))
    if not opts.no_docs:
        append_docs([
            f"### Storage and AES-GCM, {stamp()}\n",
            f"- command: `{command_line()}`",
            f"- method: `LocalStorage` in a temp dir, raw and wrapped in `EncryptedStorage`, put"
            f" then get of random objects (16 keys overwritten in turn), ~{opts.seconds:g} s per"
            f" operation, {opts.rounds} rounds alternating which goes first; MB/s of plaintext;"
            " medians. AES-GCM: `AESGCM.encrypt` with a fresh nonce per 1 MiB buffer versus"
            f" `openssl speed -seconds {ossl_seconds} -bytes 16384 -evp aes-256-gcm`, one core",
            f"- machine: {began}",
            "- allocator: "
            + ("glibc thresholds set as `enclave runtime` does" if tuned else "glibc defaults"),
            "",
            *table,
            "",
            *profile,
            "",
            *table_aes,
            "",
            "Targets: " + "; ".join(verdicts),
        ])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
