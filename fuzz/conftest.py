"""Fixtures of the API fuzz run: one `enclave dev` stack for the session and each listener's schema.

Each listener serves its OpenAPI document at ``/openapi.json`` (the app API's behind its token);
schemathesis loads it from there, so the run tests what is served. ``ENCLAVE_FUZZ_EXAMPLES``
(a number) multiplies every listener's example budget for a longer local run;
``ENCLAVE_FUZZ_SEED`` replays a run (the summary prints the seed used). In CI (``CI`` set) the seed
is fixed, so a submission is judged on the same cases each time; elsewhere each run draws one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.specs.openapi.schemas import OpenApiSchema

from fuzz.harness import REQUEST_TIMEOUT_S, FuzzStack
from fuzz.runner import Fuzzer

#: Fuzzing-phase examples per operation, per listener; the examples and coverage phases add their
#: own deterministic cases. Sized so the whole env stays within about 5 minutes on 2 CPUs.
MAX_EXAMPLES = {"public": 150, "app-api": 150, "control": 150, "supervisor": 80}
#: Each successful POST /v1/stop costs a restart of the enclave (about 2 s): fewer examples there.
SESSION_ENDING = ("POST /v1/stop", "POST /v1/start")
SESSION_ENDING_EXAMPLES = 10

#: The seed when CI is set and ENCLAVE_FUZZ_SEED is not.
CI_SEED = 20261127

FUZZER_KEY = pytest.StashKey[Fuzzer]()
SEED_KEY = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    """Choose the seed; keep setup.cfg's warnings-as-errors, except urllib3's about verify=False.

    The public listener's certificate is self-signed and bound into the attestation document
    (`enclave verify` checks it); here TLS is transport only.
    """
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")
    config.stash[SEED_KEY] = _seed()


def _seed() -> int:
    value = os.environ.get("ENCLAVE_FUZZ_SEED", "")
    if value:
        if not value.isdigit():
            raise pytest.UsageError(f"ENCLAVE_FUZZ_SEED must be a whole number, not {value!r}")
        return int(value)
    return CI_SEED if os.environ.get("CI") else random.getrandbits(64)


def _scale() -> int:
    value = os.environ.get("ENCLAVE_FUZZ_EXAMPLES", "1")
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(
            f"ENCLAVE_FUZZ_EXAMPLES must be a positive whole number, not {value!r}"
        )
    return int(value)


def _config(base_url: str, listener: str, seed: int) -> schemathesis.Config:
    data: dict[str, object] = {
        "seed": seed,
        "base-url": base_url,
        "tls-verify": False,
        "request-timeout": REQUEST_TIMEOUT_S,
        "generation": {"max-examples": MAX_EXAMPLES[listener] * _scale()},
    }
    if listener == "supervisor":
        data["operations"] = [
            {
                "include-name": name,
                "generation": {"max-examples": SESSION_ENDING_EXAMPLES * _scale()},
            }
            for name in SESSION_ENDING
        ]
    return schemathesis.Config.from_dict(data)


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    """`enclave dev` with the example app, TLS on the public listener; stopped by pid at the end."""
    stack = FuzzStack.create(tmp_path_factory.mktemp("fuzz") / "app")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def fuzzer(fuzz_stack: FuzzStack, pytestconfig: pytest.Config) -> Fuzzer:
    """The case runner, kept on the config for the summary at the end."""
    runner = Fuzzer(fuzz_stack, seed=pytestconfig.stash[SEED_KEY])
    pytestconfig.stash[FUZZER_KEY] = runner
    return runner


def _schema(fuzzer: Fuzzer, listener: str) -> OpenApiSchema:
    base = fuzzer.base_url(listener)
    return schemathesis.openapi.from_url(
        base + "/openapi.json",
        config=_config(base, listener, fuzzer.seed),
        headers=fuzzer.stack.headers_for(listener),
        verify=False,
        timeout=REQUEST_TIMEOUT_S,
    )


@pytest.fixture(scope="session")
def public_schema(fuzzer: Fuzzer) -> OpenApiSchema:
    """The runtime public listener's document."""
    return _schema(fuzzer, "public")


@pytest.fixture(scope="session")
def app_api_schema(fuzzer: Fuzzer) -> OpenApiSchema:
    """The runtime app API's document (served behind the app's token)."""
    return _schema(fuzzer, "app-api")


@pytest.fixture(scope="session")
def control_schema(fuzzer: Fuzzer) -> OpenApiSchema:
    """The runtime control listener's document."""
    return _schema(fuzzer, "control")


@pytest.fixture(scope="session")
def supervisor_schema(fuzzer: Fuzzer) -> OpenApiSchema:
    """The supervisor management API's document."""
    return _schema(fuzzer, "supervisor")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Cases per listener and per operation, and how long the fuzzing took."""
    runner = config.stash.get(FUZZER_KEY, None)
    if runner is None:
        return
    terminalreporter.section("API fuzzing")
    for line in runner.summary():
        terminalreporter.write_line(line)
    log = runner.stack.dev.stderr_path
    if isinstance(log, Path) and log.name:
        terminalreporter.write_line(f"  enclave dev log: {log}")
