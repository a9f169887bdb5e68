"""Run one schemathesis case against the stack: snapshot, call, restore, snapshot, check.

Checks on every response: no 5xx (``not_a_server_error``), the status, content type and body the
listener's document declares (``status_code_conformance``, ``content_type_conformance``,
``response_schema_conformance``), and :func:`stored_state_unchanged`: nothing stored or secret
changed unless the request was a valid write of exactly that thing (:mod:`fuzz.state`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from schemathesis import Case, Response
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fuzz.harness import REQUEST_TIMEOUT_S, FuzzStack
from fuzz.state import allowed_write, violations

BUILTIN_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Supervisor calls that end the session; after a successful one the fuzzer starts it again.
STOPPING = {("POST", "/v1/stop")}
#: Where a request-body path would start a real migration.
MIGRATE = ("POST", "/v1/migrate")
NO_SUCH_DIR = "/nonexistent-fuzz-target"


def keep_migration_invalid(case: Case) -> bool:
    """Point ``app_dir`` of a fuzzed POST /v1/migrate at a folder that does not exist.

    Excluded on purpose, the one valid-success path: a migration whose ``app_dir`` exists (``/``,
    ``/tmp``...) measures that folder as the new image and then re-keys the enclave (a new KMS
    key, an export, a restart, the old key scheduled for deletion). That is minutes of work per
    case, leaves the stack under another key, and is covered end to end by
    tests/e2e/test_migration_e2e.py. Every other input, including every invalid one, is sent as
    generated. (``eif`` is left alone: in development it is refused whatever it names.) Returns
    whether the case was changed.
    """
    if (case.method.upper(), case.operation.path) != MIGRATE or not isinstance(case.body, dict):
        return False
    app_dir = case.body.get("app_dir")
    if isinstance(app_dir, str) and app_dir.startswith("/") and _exists(app_dir):
        case.body["app_dir"] = NO_SUCH_DIR + app_dir
        return True
    return False


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # NUL bytes, names too long
        return False


@dataclass
class Fuzzer:
    """Runs cases against one stack and counts them per listener and per operation."""

    stack: FuzzStack
    seed: int
    #: Status codes answered, per listener and per "listener METHOD /path".
    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    started: float = field(default_factory=time.monotonic)
    #: Every 5xx seen, even one a check let through (a content-type probe), for the summary.
    server_errors: list[str] = field(default_factory=list)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    migrations_redirected: int = 0

    def base_url(self, listener: str) -> str:
        """The address of a listener by its name in the fuzz tests."""
        return {
            "public": self.stack.public_url,
            "app-api": self.stack.app_api_url,
            "control": self.stack.control_url,
            "supervisor": self.stack.supervisor_url,
        }[listener]

    def run(self, case: Case, listener: str) -> None:
        """Send ``case`` with the listener's token and check the response and the stored state."""
        __tracebackhide__ = True
        stack = self.stack
        started = time.monotonic()
        stack.check_same_app()
        if keep_migration_invalid(case):
            self.migrations_redirected += 1
        before = stack.snapshot()
        stopping = (case.method.upper(), case.operation.path) in STOPPING
        headers = stack.headers_for(listener)
        response = case.call(
            base_url=self.base_url(listener),
            session=stack.session,
            headers=headers,
            verify=False,
            timeout=REQUEST_TIMEOUT_S,
        )
        operation = f"{listener} {case.method.upper()} {case.operation.path}"
        self.statuses[listener][response.status_code] += 1
        self.statuses[operation][response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors.append(
                f"{listener} {case.method.upper()} {case.formatted_path[:200]} -> "
                f"{response.status_code}"
            )
        if stopping and response.status_code < 300:
            stack.restart()
        after = stack.snapshot()
        self.seconds[listener] += time.monotonic() - started
        # Path parameters are kept percent-encoded as sent; the key named is the decoded one.
        named = {k: unquote(str(v)) for k, v in (case.path_parameters or {}).items()}
        write = allowed_write(case.method, case.operation.path, named, response.status_code)
        problems = violations(before, after, write)

        def stored_state_unchanged(ctx: CheckContext, response: Response, case: Case) -> None:
            """Nothing stored or secret changed unless this was a valid write of exactly that."""
            if problems:
                raise AssertionError(
                    f"{case.method.upper()} {case.operation.path} answered "
                    f"{response.status_code} and changed: " + "; ".join(problems)
                )

        case.validate_response(
            response,
            checks=[*BUILTIN_CHECKS, stored_state_unchanged],
            headers=headers,
            transport_kwargs={"verify": False, "timeout": REQUEST_TIMEOUT_S},
        )

    def summary(self) -> list[str]:
        """Lines for the end of the run: cases and statuses per listener and per operation."""

        def counted(name: str) -> str:
            codes = self.statuses[name]
            answers = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
            return f"{sum(codes.values())} cases ({answers})"

        listeners = sorted(name for name in self.statuses if " " not in name)
        total = sum(sum(self.statuses[name].values()) for name in listeners)
        lines = [
            f"fuzz: {total} cases in {time.monotonic() - self.started:.0f} s, "
            f"{self.stack.restarts} enclave restart(s) after POST /v1/stop "
            f"({self.stack.restart_seconds:.0f} s), {self.migrations_redirected} POST /v1/migrate "
            "with an existing app_dir sent to a missing one",
            f"  seed: {self.seed} (ENCLAVE_FUZZ_SEED={self.seed} tox -e fuzz replays it)",
        ]
        for listener in listeners:
            lines.append(f"  {listener}: {counted(listener)}, {self.seconds[listener]:.0f} s")
            operations = sorted(n for n in self.statuses if n.startswith(f"{listener} "))
            # Undocumented methods get one probe each from the coverage phase (expect 405).
            lines += [f"    {n[len(listener) + 1 :]}: {counted(n)}" for n in operations]
        lines += [f"  5xx: {line}" for line in self.server_errors]
        return lines
