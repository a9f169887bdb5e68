"""P2 end to end, as the host would do it: migrate v1 -> v2 in `enclave dev`, encrypt a value of
its choice with the right encryption context under the new key (its export window is still
open), write it over ``signing_key/Ciphertext``, then ``enclave stop && enclave start``.

The app must never run with the host's value: the runtime refuses the untraceable ciphertext and
stays degraded, naming the parameter, and a tampering event is logged at ERROR."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from enclave_plugins.local_kms import LocalKms
from enclave_plugins.local_secrets import LocalSecrets

from enclave_core.runtime.datakeys import static_secret_context
from tests.e2e.stack import http, make_stack, processes_mentioning
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

CHOSEN = bytes(range(32))


def test_a_forged_secret_after_a_migration_never_reaches_the_app(base: Path) -> None:
    stack = make_stack(base / "app")
    stack.start()
    try:
        genuine = stack.app_env()["APP_SIGNING_KEY"]
        folder = base / "app-v2"
        folder.mkdir()
        source = (stack.folder / "app.py").read_text()
        (folder / "app.py").write_text(source.replace("Hello from", "Hello again from"))
        done = stack.cli("migrate", "--app-dir", str(folder), timeout=300)
        assert done.returncode == 0, done.stderr
        assert stack.app_env()["APP_SIGNING_KEY"] == genuine

        # The host, holding the role: the new key still accepts Encrypt for a while.
        state = stack.folder / ".enclave"
        name, prefix = stack.document["name"], stack.document.get("prefix", "dev")
        secrets = LocalSecrets(state / "secrets.json", prefix=prefix, app_name=name)
        key_id = secrets.get("KMSKeyID")
        assert key_id is not None
        blob = LocalKms(state / "kms").encrypt(
            key_id, CHOSEN, static_secret_context(name, "signing_key")
        )
        secrets.put("signing_key/Ciphertext", base64.b64encode(blob).decode("ascii"))

        assert stack.cli("stop").returncode == 0
        started = stack.cli("start")
        # `enclave start` waits for the runtime, which refuses to boot: it fails, naming why.
        assert started.returncode == 1, started.stdout
        # Seen degraded by `start` itself, or after the watchdog gave up on it: the cause shows.
        assert started.stderr.startswith("ERROR: enclave failed to start: runtime "), started.stderr
        assert "degraded: boot stage static_secrets failed" in started.stderr
        assert "signing_key/Ciphertext" in started.stderr

        def degraded() -> bytes:
            status, _, body = http("GET", stack.ingress_url + "/health", timeout=5)
            return body if status == 503 and b"degraded" in body else b""

        body = wait_for(degraded, timeout=60)
        assert b"signing_key/Ciphertext" in body and b"cannot be trusted" in body
        # No app process holds the host's value (there is no app process at all).
        for pid in processes_mentioning(str(folder)):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            assert CHOSEN.hex().encode() not in environ
        log = (state / "logs" / "runtime.log").read_text(errors="replace")
        tampering = [
            json.loads(line)
            for line in log.splitlines()
            if line.startswith("{") and "tampering detected" in line
        ]
        assert tampering and tampering[-1]["level"] == "ERROR"
    finally:
        stack.stop()
