"""Helpers shared by the benchmarks: ports, a throwaway `enclave dev` stack, /proc, docs.

Imported by ``bench/storage.py``, ``boot.py``, ``memory.py`` and ``watchdog.py`` (run as scripts,
so this module is found beside them on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from enclave_core.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = ROOT / "examples" / "hello"
DOCS = ROOT / "docs" / "benchmarks.md"


def stamp() -> str:
    """Now, for a docs heading."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> str:
    """One line describing the machine and its load."""
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()};"
        f" load average {load:.1f} when the run began (the machine is shared)"
    )


def append_docs(lines: list[str]) -> None:
    """Append a section to docs/benchmarks.md."""
    if not DOCS.exists():
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text("# Benchmarks\n", encoding="utf-8")
    with DOCS.open("a", encoding="utf-8") as fh:
        fh.write("\n" + "\n".join(lines) + "\n")
    print(f"appended to {DOCS.relative_to(ROOT)}")


def report(
    title: str, *, method: str, began: str, table: list[str], summary: str, docs: bool = True
) -> None:
    """Print a run's table and summary; with ``docs``, append the run to docs/benchmarks.md
    under ``### {title}, {time}`` with the command, the method and the machine."""
    print("\n" + "\n".join(table) + "\n\n" + summary)
    if docs:
        append_docs([
            f"### {title}, {stamp()}\n",
            f"- command: `{command_line()}`",
            f"- method: {method}",
            f"- machine: {began}",
            "",
            *table,
            "",
            summary,
        ])  # fmt: skip


def command_line() -> str:
    """The command that ran this benchmark, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return " ".join(["python", str(script), *sys.argv[1:]])


# -- /proc ------------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cmdline(pid: int) -> list[str]:
    """The argument list of ``pid`` (empty if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


# -- HTTP -------------------------------------------------------------------------------------
_NO_VERIFY = ssl.create_default_context()
_NO_VERIFY.check_hostname = False
_NO_VERIFY.verify_mode = ssl.CERT_NONE


def get_status(url: str, timeout: float = 1.0) -> int:
    """Status of ``GET url`` (TLS not verified: the dev certificate is self-issued); 0 if none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_NO_VERIFY) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ssl.SSLError):
        return 0


def get_json(url: str, timeout: float = 2.0) -> Any:
    """``GET url`` parsed as JSON."""
    with urllib.request.urlopen(url, timeout=timeout, context=_NO_VERIFY) as resp:
        return json.loads(resp.read())


def wait_200(url: str, deadline_s: float, pause: float = 0.01) -> float:
    """Poll ``url`` until it answers 200; return when (monotonic). Raises on the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if get_status(url, timeout=0.5) == 200:
            return time.monotonic()
        time.sleep(pause)
    raise RuntimeError(f"{url} did not answer 200 within {deadline_s:g} s")


# -- a development stack ----------------------------------------------------------------------
def on_free_ports(doc: dict[str, Any], *, runtime: int, ingress: int, app: int) -> None:
    """Point an enclave.yaml document at loopback ports: the runtime's public listener on
    ``runtime`` (its app API and control listener on free ones), the app on ``app``, one ingress
    entry from ``ingress`` to the runtime, the supervisor and egress on free ones."""
    doc["runtime"].update(port=runtime, app_api_port=free_port(), control_port=free_port())
    doc["app"]["port"] = app
    doc["supervisor"]["listen"] = f"127.0.0.1:{free_port()}"
    doc["supervisor"]["ingress"] = [{"listen": f"127.0.0.1:{ingress}", "port": runtime}]
    doc["egress"].update(port=free_port(), imds_port=free_port())


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as enclave.yaml at ``path``; return ``path``."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


class DevStack:
    """A temp copy of examples/hello with an enclave.yaml on free ports, run with `enclave dev`."""

    def __init__(self, *, tls: bool = True, watchdog: dict[str, float] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="enclave-bench-"))
        self.dir = self.tmp / "hello"
        shutil.copytree(EXAMPLE_DIR, self.dir, ignore=shutil.ignore_patterns(".enclave", "*.pyc"))
        doc = yaml.safe_load((EXAMPLE_DIR / "enclave.yaml").read_text(encoding="utf-8"))
        self.ingress_port = free_port()
        on_free_ports(doc, runtime=free_port(), ingress=self.ingress_port, app=free_port())
        doc["runtime"]["tls"] = tls
        doc["supervisor"]["watchdog"].update(watchdog or {})
        self.doc = doc
        self.config_path = write_yaml(self.dir / "enclave.yaml", doc)
        scheme = "https" if tls else "http"
        self.ingress = f"{scheme}://127.0.0.1:{self.ingress_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, args: tuple[str, ...] = ()) -> float:
        """Start `enclave dev` (with ``args``); return the monotonic time just before the process
        started."""
        # PYTHONDONTWRITEBYTECODE (set in CI and tox) would make every start recompile the
        # project's modules; an installed package has its .pyc files, so measure with them.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ENCLAVE_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        log = (self.tmp / "dev.log").open("ab")
        began = time.monotonic()
        argv = [sys.executable, "-m", "enclave_core.cli.main", "dev", "-c", str(self.config_path)]
        self.proc = subprocess.Popen(
            [*argv, *args], cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        return began

    def runtime_pid(self) -> int | None:
        """The runtime process: the supervisor's child running ``... runtime -c``."""
        assert self.proc is not None
        for pid in children(self.proc.pid):
            if "runtime" in cmdline(pid):
                return pid
        return None

    def stop(self) -> None:
        """SIGTERM `enclave dev` (it stops its children), wait, then SIGKILL what is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and remove the temp folder."""
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def tail_log(self, count: int = 20) -> str:
        """The last lines of `enclave dev`'s output, for an error message."""
        path = self.tmp / "dev.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-count:])


def wrk_seconds(text: str) -> float:
    """A wrk latency such as ``1.52ms`` in seconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def serve_public_server(port: int, upstream_port: int, loop_name: str = "uvloop") -> None:
    """Run the runtime's ProxyListener on ``port`` in front of ``upstream_port`` until killed.

    ``/health`` is its own route (a fixed answer); everything else is proxied. ``loop_name`` is
    ``uvloop`` (development) or ``asyncio`` (what a Nitro host runs, since vsock needs it).
    """
    import asyncio

    from enclave_core.http.proxy import ProxyListener
    from enclave_core.log import configure_logging
    from enclave_core.metrics import Metrics

    configure_logging("INFO", human=False)

    async def own_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"status":"ready"}'})

    async def main() -> None:
        server = ProxyListener(
            own_app=own_app,
            is_own_path=lambda path: path == "/health",
            upstream_host="127.0.0.1",
            upstream_port=upstream_port,
            metrics=Metrics(),
        )
        await server.start(f"tcp://127.0.0.1:{port}")
        await asyncio.Event().wait()

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
