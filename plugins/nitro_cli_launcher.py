"""The ``nitro-cli`` launcher: real Nitro Enclaves, started and watched through AWS's ``nitro-cli``.

Options (``launcher.options``): ``binary`` (``nitro-cli``), ``timeout_s`` (120 s for
``run-enclave``, 30 s for the others), ``console_lines`` (50), ``log_dir``
(``/var/log/nitro_enclaves``), ``enclave_name`` (the app name) and ``address_override`` (e.g.
``tcp://127.0.0.1`` for hosts without vsock). Calls ``run-enclave``, ``describe-enclaves``,
``terminate-enclave`` and, in debug mode, ``console``, as argument lists with timeouts;
``[ Exx ]`` errors become :class:`NitroCliError` messages naming the likely cause.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from loguru import logger
from marshmallow import Schema, fields, validate

from enclave_core import hookimpl
from enclave_core.errors import LauncherError
from enclave_core.log import utc_now
from enclave_core.plugin.interfaces import BackendContext, EnclaveDescription, ExitInfo, LaunchSpec
from enclave_core.plugin.registry import BackendRegistry

RUN_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0
#: Used for addresses until a spec names the CID (the README's enclave.yaml default).
DEFAULT_CID = 16
EXIT_TAIL_LINES = 20
NOT_FOUND = (
    "nitro-cli not found on PATH: install aws-nitro-enclaves-cli (and run the allocator service)"
)

_ALLOCATOR = "/etc/nitro_enclaves/allocator.yaml"
_MEMORY = (
    f"the allocator has too little memory: increase memory_mib in {_ALLOCATOR} "
    "or lower enclave.memory_mib"
)
_CPUS = (
    f"the CPU pool (allocator cpu_count) has too few CPUs: increase cpu_count in {_ALLOCATOR} "
    "or lower enclave.cpu_count"
)
_TEARDOWN = "the previous enclave is still being torn down; the watchdog will retry"
#: Likely causes by nitro-cli error code (the codes of nitro-cli's document_errors.rs).
ERROR_CAUSES: dict[str, str] = {
    "E19": "no EIF at {eif}: run `enclave build` or fix enclave.eif",  # opening the EIF failed
    "E35": "the EIF at {eif} cannot be loaded (corrupt, or too little hugepage memory)",
    "E36": "the enclave did not boot: the EIF at {eif} may be corrupt or for another CPU type",
    **dict.fromkeys(("E20", "E21", "E22", "E23", "E24"), _CPUS),
    **dict.fromkeys(("E25", "E27", "E42"), _MEMORY),
    "E26": "enclave.memory_mib is less than the EIF needs: raise enclave.memory_mib",
    **dict.fromkeys(("E29", "E39"), _TEARDOWN),
    "E44": "the console exists only in debug mode (enclave.debug_mode: true)",
}
#: Codes terminate-enclave answers for an enclave that no longer exists.
GONE_CODES = frozenset({"E08", "E11", "E39", "E40"})
_CODE_RE = re.compile(r"\[ (E\d+) \] ?(.*)")
_LOG_RE = re.compile(r'error log found at "([^"]+)"')
_FILE_RE = re.compile(r"File: '([^']*)'")
_CONSOLE_PREAMBLE = (
    "Connecting to the console for enclave",
    "Successfully connected to the console",
)


class NitroCliError(LauncherError):
    """A nitro-cli command failed; ``code`` is its ``Exx`` code when it printed one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def nitro_cli_error(
    command: str, stderr: str, status: int, eif: Path | None = None
) -> NitroCliError:
    """Turn a failed call's stderr into an error naming the code, the likely cause and the log."""
    found = _CODE_RE.search(stderr)
    log = _LOG_RE.search(stderr)
    where = f" (nitro-cli error log: {log.group(1)})" if log else ""
    if found is None:
        first = next((line.strip() for line in stderr.splitlines() if line.strip()), "no output")
        return NitroCliError(
            f"nitro-cli {command} failed with exit status {status}: {first}{where}"
        )
    code, first = found.group(1), found.group(2).strip()
    message = f"nitro-cli {command} failed: [ {code} ] {first}"
    cause = ERROR_CAUSES.get(code)
    if cause is not None:
        path = _FILE_RE.search(stderr)
        message += f"; likely cause: {cause.format(eif=path.group(1) if path else eif)}"
    return NitroCliError(message + where, code)


def parse_json(command: str, stdout: str) -> Any:
    """The JSON document nitro-cli printed (after any progress lines); LauncherError if none."""
    offset = 0
    for line in stdout.splitlines(keepends=True):
        if line.lstrip().startswith(("{", "[")):
            try:
                return json.JSONDecoder().raw_decode(
                    stdout, offset + len(line) - len(line.lstrip())
                )[0]
            except ValueError:
                break
        offset += len(line)
    raise LauncherError(f"nitro-cli {command} did not print the expected JSON")


def parse_description(item: Any, *, name: str = "", flags: str = "NONE") -> EnclaveDescription:
    """One ``run-enclave`` or ``describe-enclaves`` object as an :class:`EnclaveDescription`."""
    try:
        return EnclaveDescription(
            enclave_id=str(item["EnclaveID"]),
            enclave_cid=int(item["EnclaveCID"]),
            process_id=int(item["ProcessID"]),
            state=str(item.get("State", "RUNNING")),
            name=str(item.get("EnclaveName") or name),
            cpu_count=int(item["NumberOfCPUs"]),
            memory_mib=int(item["MemoryMiB"]),
            flags=str(item.get("Flags", flags)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LauncherError(f"nitro-cli printed an enclave without a valid {exc} field") from None


class NitroCliLauncher:
    """Starts, describes and terminates one named enclave with nitro-cli."""

    name: ClassVar[str] = "nitro-cli"

    class Options(Schema):
        """``launcher.options`` of the nitro-cli launcher."""

        binary = fields.String(load_default="nitro-cli", validate=validate.Length(min=1))
        timeout_s = fields.Float(load_default=None, allow_none=True, validate=validate.Range(0.1))
        console_lines = fields.Integer(load_default=50, validate=validate.Range(1, 100_000))
        log_dir = fields.String(load_default="/var/log/nitro_enclaves")
        enclave_name = fields.String(
            load_default=None,
            allow_none=True,
            validate=validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
        )
        address_override = fields.String(
            load_default=None,
            allow_none=True,
            validate=validate.Regexp(
                r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$",
                error="must be tcp://HOST (no port), e.g. tcp://127.0.0.1.",
            ),
        )

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> NitroCliLauncher:
        """Build the launcher; the enclave is named after the app unless ``enclave_name`` says."""
        log_dir = Path(options.get("log_dir") or "/var/log/nitro_enclaves")
        return cls(
            binary=options.get("binary") or "nitro-cli",
            timeout_s=options.get("timeout_s"),
            console_lines=options.get("console_lines") or 50,
            log_dir=log_dir if log_dir.is_absolute() else context.base_dir / log_dir,
            enclave_name=options.get("enclave_name") or context.name,
            address_override=options.get("address_override"),
        )

    def __init__(
        self,
        *,
        enclave_name: str,
        binary: str = "nitro-cli",
        timeout_s: float | None = None,
        console_lines: int = 50,
        log_dir: Path = Path("/var/log/nitro_enclaves"),
        address_override: str | None = None,
    ) -> None:
        """See the module docstring for the options."""
        self._binary = binary
        self._timeout_s = timeout_s
        self._log_dir = log_dir
        self._enclave_name = enclave_name
        self._override = address_override
        self._lock = threading.RLock()
        self._tail: deque[str] = deque(maxlen=console_lines)
        self._tail_lock = threading.Lock()
        self._desc: EnclaveDescription | None = None
        self._cid = DEFAULT_CID
        self._started_at = 0.0
        self._console: tuple[subprocess.Popen[bytes], threading.Thread] | None = None
        self._last_exit: ExitInfo | None = None

    # ------------------------------------------------------------------ Launcher protocol

    def start(self, spec: LaunchSpec) -> EnclaveDescription:
        """``run-enclave``; terminates a leftover enclave of the same name first."""
        with self._lock:
            self._cid = spec.cid
            listed = self._list()
            if self._desc is not None and all(
                d.enclave_id != self._desc.enclave_id for d in listed
            ):
                self._record_gone()
            for item in listed:
                if self._desc is not None and item.enclave_id == self._desc.enclave_id:
                    raise LauncherError(
                        f"cannot start enclave {self._enclave_name!r}: already running "
                        f"({item.enclave_id})"
                    )
                if item.name == self._enclave_name:
                    logger.bind(enclave_id=item.enclave_id).warning(
                        "terminating a leftover enclave of the same name"
                    )
                    self._terminate(item.enclave_id, CALL_TIMEOUT_S)
            argv = [
                "run-enclave",
                *("--cpu-count", str(spec.cpu_count), "--memory", str(spec.memory_mib)),
                *("--eif-path", str(spec.eif), "--enclave-cid", str(spec.cid)),
                *("--enclave-name", self._enclave_name),
                *(["--debug-mode"] if spec.debug_mode else []),
            ]
            with self._tail_lock:
                self._tail.clear()  # the tail (and an ExitInfo) is about this enclave only
            self._started_at = time.time()
            out = self._call(argv, self._timeout_s or RUN_TIMEOUT_S, eif=spec.eif)
            flags = "DEBUG_MODE" if spec.debug_mode else "NONE"
            desc = parse_description(
                parse_json("run-enclave", out), name=self._enclave_name, flags=flags
            )
            self._desc, self._cid = desc, desc.enclave_cid
            if spec.debug_mode:
                self._start_console(desc.enclave_id)
            logger.bind(enclave_id=desc.enclave_id, cid=desc.enclave_cid).info("enclave started")
            return desc

    def describe(self) -> EnclaveDescription | None:
        """Our enclave as ``describe-enclaves`` lists it; None (and ``last_exit`` set) once gone."""
        with self._lock:
            listed = self._list()
            if self._desc is None:
                return next((d for d in listed if d.name == self._enclave_name), None)
            ours = next((d for d in listed if d.enclave_id == self._desc.enclave_id), None)
            if ours is None:
                self._record_gone()
            return ours

    def stop(self, timeout_s: float = 10.0) -> None:
        """``terminate-enclave`` our enclave; a no-op when it is not running (or already gone)."""
        with self._lock:
            if self._desc is None:
                return
            enclave_id = self._desc.enclave_id
            self._terminate(enclave_id, timeout_s)
            self._end_console(drain_s=1.0)
            self._last_exit = ExitInfo(
                None,
                None,
                self.log_lines()[-EXIT_TAIL_LINES:],
                utc_now(),
                f"stopped by the supervisor: enclave {enclave_id} terminated",
            )
            self._desc = None
            logger.bind(enclave_id=enclave_id).info("enclave terminated")

    def last_exit(self) -> ExitInfo | None:
        """Why the last enclave ended, or None if none has ended yet."""
        with self._lock:
            if self._desc is not None:
                self.describe()  # notices (and records) an enclave that is gone
            return self._last_exit

    def enclave_address(self, port: int) -> str:
        """``vsock://CID:PORT``, or ``address_override:PORT`` on hosts without vsock."""
        if self._override:
            return f"{self._override}:{port}"
        return f"vsock://{self._cid}:{port}"

    def log_lines(self) -> list[str]:
        """The enclave's recent lines, oldest first: its console in debug mode, else none yet."""
        with self._tail_lock:
            return list(self._tail)

    def append_log_line(self, line: str) -> None:
        """Add a line to :meth:`log_lines` (the hook of the console reader and the log channel)."""
        with self._tail_lock:
            self._tail.append(line)

    # ------------------------------------------------------------------ nitro-cli calls

    def _call(self, args: list[str], timeout: float, *, eif: Path | None = None) -> str:
        binary = self._resolve()
        try:
            done = subprocess.run(  # noqa: S603 - argument list, no shell
                [binary, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise LauncherError(f"nitro-cli {args[0]} timed out after {timeout:g} s") from None
        except OSError as exc:
            raise LauncherError(f"nitro-cli {args[0]}: {binary}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            raise nitro_cli_error(args[0], done.stderr, done.returncode, eif)
        return done.stdout

    def _resolve(self) -> str:
        found = shutil.which(self._binary)
        if found is None:
            raise LauncherError(NOT_FOUND)
        return found

    def _list(self) -> list[EnclaveDescription]:
        """``describe-enclaves``; a failure while an enclave is torn down is retried once."""
        timeout = self._timeout_s or CALL_TIMEOUT_S
        try:
            out = self._call(["describe-enclaves"], timeout)
        except NitroCliError as exc:
            if exc.code not in ("E29", "E39"):
                raise
            time.sleep(0.5)
            out = self._call(["describe-enclaves"], timeout)
        items = parse_json("describe-enclaves", out)
        if not isinstance(items, list):
            raise LauncherError("nitro-cli describe-enclaves did not print a JSON array")
        return [parse_description(item) for item in items]

    def _terminate(self, enclave_id: str, timeout_s: float) -> None:
        timeout = min(self._timeout_s or CALL_TIMEOUT_S, max(timeout_s, 1.0))
        try:
            out = self._call(["terminate-enclave", "--enclave-id", enclave_id], timeout)
        except NitroCliError as exc:
            if exc.code in GONE_CODES and all(d.enclave_id != enclave_id for d in self._list()):
                return  # already gone: stopping is idempotent
            raise
        answer = parse_json("terminate-enclave", out)
        if not isinstance(answer, dict) or answer.get("Terminated") is not True:
            raise LauncherError(f"nitro-cli terminate-enclave did not terminate {enclave_id}")

    # ------------------------------------------------------------------ why it ended

    def _record_gone(self) -> None:
        assert self._desc is not None
        enclave_id = self._desc.enclave_id
        reason = f"enclave {enclave_id} is gone (no longer listed by nitro-cli describe-enclaves)"
        self._end_console(drain_s=2.0)
        tail = self.log_lines()[-EXIT_TAIL_LINES:]
        if self._desc.flags != "DEBUG_MODE":
            err_log = self._newest_err_log()
            if err_log is not None:
                reason += f"; nitro-cli error log: {err_log}"
                tail = _last_lines(err_log, EXIT_TAIL_LINES) or tail
        self._last_exit = ExitInfo(None, None, tail, utc_now(), reason)
        self._desc = None
        logger.bind(enclave_id=enclave_id, reason=reason).warning("enclave is gone")

    def _newest_err_log(self) -> Path | None:
        """nitro-cli's newest ``err*.log`` written since the enclave started, if any."""
        try:
            logs = [(p.stat().st_mtime, p) for p in self._log_dir.glob("err*.log") if p.is_file()]
        except OSError:
            return None
        fresh = [item for item in logs if item[0] >= self._started_at]
        return max(fresh)[1] if fresh else None

    def _start_console(self, enclave_id: str) -> None:
        """Keep ``nitro-cli console`` running so its last lines outlive the enclave."""
        try:
            proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
                [self._resolve(), "console", "--enclave-id", enclave_id],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except (OSError, LauncherError) as exc:
            logger.bind(error=str(exc)).warning("cannot read the enclave console")
            return
        reader = threading.Thread(
            target=self._read_console, args=(proc,), name=f"console-{enclave_id}", daemon=True
        )
        reader.start()
        self._console = (proc, reader)

    def _read_console(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not line.startswith(_CONSOLE_PREAMBLE):
                    self.append_log_line(line)

    def _end_console(self, drain_s: float) -> None:
        """Let the console reader drain for ``drain_s``, then end it (by its own pid)."""
        if self._console is None:
            return
        proc, reader = self._console
        self._console = None
        reader.join(drain_s)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(1.0)
        proc.wait()


def _last_lines(path: Path, count: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-count:]


@hookimpl
def enclave_register_launcher(registry: BackendRegistry[Any]) -> None:
    """Register the ``nitro-cli`` launcher."""
    registry.add(NitroCliLauncher)
