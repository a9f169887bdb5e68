"""The ``process`` launcher: the runtime as a local subprocess, for development and tests.

Options (``launcher.options``): ``command`` (an argv to run instead of the runtime; tests) and
``log_lines`` (200, the recent output lines kept in memory). The "enclave" is ``enclave runtime
-c enclave.yaml`` in its own process group, described like ``nitro-cli describe-enclaves`` and
stopped with SIGTERM, then SIGKILL, to the group; every enclave port is a loopback TCP port. Its
output goes to ``.enclave/logs/runtime.log`` and is echoed in the supervisor's log format.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, ClassVar, TextIO

from loguru import logger
from marshmallow import Schema, fields, validate

from enclave_core import hookimpl
from enclave_core.errors import LauncherError
from enclave_core.log import render_echoed, utc_now
from enclave_core.plugin.interfaces import (
    BackendContext,
    EnclaveDescription,
    ExitInfo,
    LaunchSpec,
)
from enclave_core.plugin.registry import BackendRegistry

#: How many of the last output lines an ExitInfo carries.
EXIT_TAIL_LINES = 20
_POLL_S = 0.02


def runtime_argv(config_path: Path) -> list[str]:
    """The command that starts the runtime for the config at ``config_path``."""
    return [sys.executable, "-m", "enclave_core.cli.main", "runtime", "-c", str(config_path)]


class ProcessLauncher:
    """Runs the runtime as a local process group and supervises it like an enclave."""

    name: ClassVar[str] = "process"

    class Options(Schema):
        """``launcher.options`` of the process launcher."""

        command = fields.List(
            fields.String(validate=validate.Length(min=1)),
            load_default=None,
            allow_none=True,
            validate=validate.Length(min=1),
        )
        log_lines = fields.Integer(load_default=200, validate=validate.Range(1, 100_000))

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> ProcessLauncher:
        """Build the launcher; its logs go under the state directory."""
        return cls(
            state_dir=context.state_dir,
            command=options.get("command"),
            log_lines=options.get("log_lines", 200),
        )

    def __init__(
        self,
        state_dir: Path,
        *,
        command: list[str] | None = None,
        log_lines: int = 200,
        echo: TextIO | None = None,
    ) -> None:
        """:param echo: where to echo output lines; None means the current ``sys.stderr``."""
        self._state_dir = state_dir
        self._command = list(command) if command else None
        self._echo = echo
        self._lock = threading.RLock()
        self._tail: deque[str] = deque(maxlen=log_lines)
        self._tail_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._desc: EnclaveDescription | None = None
        self._stopping = False
        self._last_exit: ExitInfo | None = None

    @property
    def log_path(self) -> Path:
        """The file every output line of the runtime is appended to."""
        return self._state_dir / "logs" / "runtime.log"

    # ------------------------------------------------------------------ Launcher protocol

    def start(self, spec: LaunchSpec) -> EnclaveDescription:
        """Start the runtime in its own process group; LauncherError if one is already running."""
        with self._lock:
            if self._alive():
                assert self._desc is not None
                raise LauncherError(
                    f"cannot start enclave {spec.name!r}: already running "
                    f"(pid {self._desc.process_id})"
                )
            argv = self._command or runtime_argv(spec.config_path)
            with self._tail_lock:
                self._tail.clear()  # the tail (and an ExitInfo) is about this process only
            log_file = self._open_log()
            try:
                proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **spec.env},
                    cwd=spec.config_path.parent if spec.config_path.parent.is_dir() else None,
                    start_new_session=True,
                )
            except OSError as exc:
                log_file.close()
                raise LauncherError(
                    f"cannot start enclave {spec.name!r}: {argv[0]}: {exc.strerror or exc}"
                ) from None
            assert proc.stdout is not None
            self._reader = threading.Thread(
                target=self._pump_output,
                args=(proc.stdout, log_file),
                name=f"runtime-output-{proc.pid}",
                daemon=True,
            )
            self._reader.start()
            self._proc = proc
            self._stopping = False
            self._desc = EnclaveDescription(
                enclave_id=f"i-0000000000000000-enc{secrets.token_hex(8)}",
                enclave_cid=spec.cid,
                process_id=proc.pid,
                state="RUNNING",
                name=spec.name,
                cpu_count=spec.cpu_count,
                memory_mib=spec.memory_mib,
                flags="DEBUG_MODE" if spec.debug_mode else "NONE",
            )
            logger.info("enclave process started", pid=proc.pid, enclave_id=self._desc.enclave_id)
            return self._desc

    def describe(self) -> EnclaveDescription | None:
        """The running enclave, or None once its process has exited (which is then reaped)."""
        with self._lock:
            return self._desc if self._alive() else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; a no-op when not running."""
        with self._lock:
            if not self._alive():
                return
            assert self._proc is not None
            pid = self._proc.pid
            self._stopping = True
            self._signal_group(pid, signal.SIGTERM)
            if not self._wait_exited(pid, time.monotonic() + timeout_s):
                logger.warning("enclave process ignored SIGTERM; killing it", pid=pid)
                self._signal_group(pid, signal.SIGKILL)
            self._reap()

    def last_exit(self) -> ExitInfo | None:
        """Why the last enclave process ended, or None if none has ended yet."""
        with self._lock:
            self._alive()
            return self._last_exit

    def enclave_address(self, port: int) -> str:
        """Every enclave port is a loopback TCP port in development."""
        return f"tcp://127.0.0.1:{port}"

    def log_lines(self) -> list[str]:
        """The current (or last) runtime process's recent output lines, oldest first."""
        with self._tail_lock:
            return list(self._tail)

    # ------------------------------------------------------------------ internals

    def _alive(self) -> bool:
        """Whether the current process runs; reap it (and its group) if it has exited."""
        if self._proc is None:
            return False
        if self._proc.returncode is None and not self._has_exited(self._proc.pid):
            return True
        self._reap()
        return False

    @staticmethod
    def _has_exited(pid: int) -> bool:
        """Whether ``pid`` has exited, WITHOUT reaping it: its pid (and group id) stay reserved."""
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _wait_exited(self, pid: int, deadline: float) -> bool:
        while not self._has_exited(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self) -> None:
        """Kill what is left of the exited runtime's group, reap it and record why it ended."""
        proc = self._proc
        if proc is None:
            return
        # The leader is a zombie (or reaped): its group id cannot have been reused, so this only
        # reaches app processes the runtime left behind.
        if proc.returncode is None:
            self._signal_group(proc.pid, signal.SIGKILL)
        code = proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        self._last_exit = self._exit_info(code)
        logger.bind(
            pid=proc.pid, exit_code=self._last_exit.exit_code, signal=self._last_exit.signal
        ).info("enclave process ended")
        self._proc = None
        self._reader = None
        self._desc = None

    def _exit_info(self, code: int) -> ExitInfo:
        tail = self.log_lines()[-EXIT_TAIL_LINES:]
        if code < 0:
            try:
                sig_name: str | None = signal.Signals(-code).name
            except ValueError:
                sig_name = f"signal {-code}"
            exit_code = None
            what = f"killed by {sig_name}"
        else:
            sig_name, exit_code = None, code
            what = f"exited with code {code}"
        reason = f"runtime {what}"
        if self._stopping:
            reason = f"stopped by the supervisor: {reason}"
        return ExitInfo(exit_code, sig_name, tail, utc_now(), reason)

    def _open_log(self) -> IO[bytes]:
        logs = self.log_path.parent
        logs.mkdir(parents=True, exist_ok=True)
        os.chmod(logs, 0o700)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "ab")

    def _pump_output(self, stream: IO[bytes], log_file: IO[bytes]) -> None:
        """Reader thread: each output line goes to the log file, the in-memory tail and stderr."""
        try:
            for raw in stream:
                line = raw.rstrip(b"\r\n")
                try:
                    log_file.write(line + b"\n")
                    log_file.flush()
                except OSError:
                    pass
                text = line.decode("utf-8", errors="replace")
                with self._tail_lock:
                    self._tail.append(text)
                self._echo_line(text)
        finally:
            stream.close()
            log_file.close()

    def _echo_line(self, text: str) -> None:
        out = self._echo or sys.stderr
        try:
            out.write(render_echoed(text) + "\n")
            out.flush()
        except (OSError, ValueError):
            pass  # the supervisor's stderr went away; the log file still has the line


@hookimpl
def enclave_register_launcher(registry: BackendRegistry[Any]) -> None:
    """Register the ``process`` launcher."""
    registry.add(ProcessLauncher)
