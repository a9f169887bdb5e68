"""End to end: `enclave migrate --app-dir` in `enclave dev`, and a supervisor killed at every step.

The example app runs in `enclave dev`; a copy of its files with a changed greeting is the new image
(the simulated NSM measures the files, so its PCR0 differs as a new EIF's would). After the
migration the app runs from the new folder with the same static secret, its visit count goes on,
the new enclave reports the old PCR0 as ``previous_pcr0``, and the old key is pending deletion.

The crash test sets ``ENCLAVE_MIGRATION_CRASH_AFTER_STEP=k`` in `enclave dev`'s environment (the
supervisor runs in that process), so the process dies right after step k's checkpoint, leaving its
runtime running; `enclave dev` is started again without the variable and `enclave migrate` is run
again: it resumes and completes, with exactly one new key. It runs on the local backends and on
the AWS ones (s3, ssm, aws KMS) against moto, with the KMS Recipient shim in front of it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from enclave_plugins.local_kms import LocalKms

from tests.e2e.stack import DevStack, http, make_stack
from tests.helpers import wait_for
from tests.services.moto_server import reset_moto

pytestmark = pytest.mark.e2e

NEW_GREETING = "Hello from the new image!"
CRASH_ENV = "ENCLAVE_MIGRATION_CRASH_AFTER_STEP"
CRASH_EXIT_CODE = 70
SECRET = "APP_SIGNING_KEY"


def new_image(base: Path, stack: DevStack) -> Path:
    """A copy of the app's files with another greeting: a new image, a new PCR0."""
    folder = base / "app-v2"
    folder.mkdir()
    source = (stack.folder / "app.py").read_text()
    assert "Hello from Simple Enclave!" in source
    (folder / "app.py").write_text(source.replace("Hello from Simple Enclave!", NEW_GREETING))
    return folder


def start_dev(stack: DevStack, env: dict[str, str] | None = None) -> None:
    """`enclave dev` (optionally with extra environment); wait until the supervisor answers."""
    stack.launch(env)
    wait_for(stack.health, timeout=60)


def enclave_info(stack: DevStack) -> dict[str, Any]:
    status, _, body = http("GET", stack.ingress_url + "/v1/enclave-info")
    assert status == 200, body
    info: dict[str, Any] = json.loads(body)
    return info


def stack_kms(stack: DevStack) -> LocalKms:
    return LocalKms(stack.folder / ".enclave" / "kms")


def key_state(stack: DevStack, key_id: str) -> str:
    record = json.loads((stack.folder / ".enclave" / "kms" / f"{key_id}.json").read_text())
    return str(record["state"])


def auth(env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['ENCLAVE_MGMT_TOKEN']}"}


def log_lines(stack: DevStack, msg: str) -> list[dict[str, Any]]:
    """JSON log lines with this ``msg`` from the runtime's log and `enclave dev`'s stderr (which
    echoes the runtime's lines too: each line counts once)."""
    lines: set[str] = set()
    for path in (stack.folder / ".enclave" / "logs" / "runtime.log", stack.stderr_path):
        lines.update(path.read_text(errors="replace").splitlines())
    entries = [json.loads(line) for line in sorted(lines) if line.startswith("{")]
    return [entry for entry in entries if entry.get("msg") == msg]


def test_migrate_app_dir_keeps_the_secret_and_the_visit_count(base: Path) -> None:
    stack = make_stack(base / "app")
    stack.start()
    try:
        secret = stack.app_env()[SECRET]
        visits = stack.app_json()["visits"]
        old_pcr0 = enclave_info(stack)["pcr0"]
        (old_key,) = stack_kms(stack).key_ids()
        folder = new_image(base, stack)

        done = stack.cli("migrate", "--app-dir", str(folder), timeout=300)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        numbered = [line for line in lines if line.startswith("[")]
        assert [line.split("]")[0] + "]" for line in numbered] == [f"[{k}/9]" for k in range(1, 10)]
        assert numbered[-1] == "[9/9] migration parameters cleaned up; migration complete"

        # The app answers from the new folder, with the same secret and its count going on.
        assert NEW_GREETING in stack.greeting()
        # It runs a snapshot of the new folder (.enclave/images/), as an enclave runs its EIF.
        running = Path(os.readlink(f"/proc/{stack.app_pid()}/cwd"))
        assert running.parent == stack.folder / ".enclave" / "images"
        assert (running / "app.py").read_text() == (folder / "app.py").read_text()
        assert stack.app_env()[SECRET] == secret
        assert stack.app_json()["visits"] == visits + 2  # greeting() counted one too
        info = wait_for(lambda: (i := enclave_info(stack))["previous_pcr0"] == old_pcr0 and i)
        assert info["pcr0"] != old_pcr0 and info["previous_pcr0_attestation"]
        (new_key,) = set(stack_kms(stack).key_ids()) - {old_key}
        wait_for(lambda: key_state(stack, old_key) == "PendingDeletion")
        assert key_state(stack, new_key) == "Enabled"

        again = stack.cli("migrate", "--app-dir", str(folder))
        assert (again.returncode, again.stdout) == (0, "migration already complete\n")
        as_json = stack.cli("migrate", "--app-dir", str(folder), "-f", "json")
        assert json.loads(as_json.stdout)["status"] == "done"
        # The old key is retired already; the key in use can never be.
        refused = stack.cli("key", "schedule-deletion", "--days", "7")
        assert refused.returncode == 1
        assert "MigrationOldKMSKeyID is not set" in refused.stderr
        wrong = stack.cli("migrate", "--app-dir", str(folder), "--pcr0", "1" * 96)
        assert wrong.returncode == 1 and "differs from the new image's measurement" in wrong.stderr
    finally:
        stack.stop()


class LocalWorld:
    """Stacks on the local backends, and how a test reads their keys and checkpoint."""

    deletion_msg = "local KMS key deletion scheduled"

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.stack: DevStack | None = None

    def make(self, folder: Path) -> DevStack:
        self.stack = make_stack(folder)
        return self.stack

    def key_ids(self) -> set[str]:
        assert self.stack is not None
        return set(stack_kms(self.stack).key_ids())

    def key_state(self, key_id: str) -> str:
        assert self.stack is not None
        return key_state(self.stack, key_id)

    def checkpoint(self) -> dict[str, Any]:
        assert self.stack is not None
        params = json.loads((self.stack.folder / ".enclave" / "secrets.json").read_text())
        doc: dict[str, Any] = json.loads(params["/dev/hello/Migration/Checkpoint"])
        return doc


class AwsWorld(LocalWorld):
    """Stacks on s3, ssm and aws KMS (moto, through the KMS Recipient shim); moto is reset for
    each stack."""

    deletion_msg = "KMS key deletion scheduled"

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__(request)
        self.moto: str = request.getfixturevalue("moto_reset")
        self.shims = request.getfixturevalue("kms_shim_endpoint")
        session: boto3.session.Session = request.getfixturevalue("boto3_session")
        self.s3 = session.client("s3", endpoint_url=self.moto)
        self.ssm = session.client("ssm", endpoint_url=self.moto)
        self.kms = session.client("kms", endpoint_url=self.moto)

    def make(self, folder: Path) -> DevStack:
        reset_moto(self.moto)
        shim = self.shims(folder / ".enclave" / "dev-root.pem")
        self.s3.create_bucket(Bucket="migration-e2e")
        self.stack = make_stack(
            folder,
            storage={
                "backend": "s3",
                "options": {
                    "bucket": "migration-e2e",
                    "prefix": "hello",
                    "endpoint_url": self.moto,
                },
            },
            secrets={"backend": "ssm", "options": {"endpoint_url": self.moto}},
            kms={
                "backend": "aws",
                "options": {"endpoint_url": shim.url, "sts_endpoint_url": shim.url},
            },
        )
        return self.stack

    def key_ids(self) -> set[str]:
        pages = self.kms.get_paginator("list_keys").paginate()
        return {key["KeyId"] for page in pages for key in page["Keys"]}

    def key_state(self, key_id: str) -> str:
        return str(self.kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])

    def checkpoint(self) -> dict[str, Any]:
        answer = self.ssm.get_parameter(Name="/dev/hello/Migration/Checkpoint")
        doc: dict[str, Any] = json.loads(answer["Parameter"]["Value"])
        return doc


@pytest.mark.parametrize("world", [LocalWorld, AwsWorld], ids=["local", "aws"])
def test_a_supervisor_killed_after_every_step_resumes_and_completes(
    base: Path, world: type[LocalWorld], request: pytest.FixtureRequest
) -> None:
    backends = world(request)
    started = time.monotonic()
    durations = []
    for step in range(1, 10):
        began = time.monotonic()
        crash_and_resume(backends, base / f"crash-{step}", step)
        durations.append(round(time.monotonic() - began, 1))
    total = time.monotonic() - started
    print(f"crash-at-every-step ({world.__name__}): {total:.1f} s; per step {durations}")  # noqa: T201


def crash_and_resume(world: LocalWorld, base: Path, step: int) -> None:
    stack = world.make(base / "app")
    start_dev(stack, {CRASH_ENV: str(step)})
    try:
        wait_for(stack.greeting, timeout=60)
        secret = stack.app_env()[SECRET]
        env = stack.app_env()
        note = f"note before the crash at step {step}".encode()
        put = http("PUT", stack.app_api_url + "/v1/storage/notes/a.txt", note, auth(env))
        assert put[0] in (200, 201), put
        visits = stack.app_json()["visits"]
        (old_key,) = world.key_ids()
        folder = new_image(base, stack)

        stack.cli("migrate", "--app-dir", str(folder), timeout=300)
        assert stack.process is not None
        assert stack.process.wait(timeout=60) == CRASH_EXIT_CODE, f"step {step}"
        assert world.checkpoint()["step"] == step

        start_dev(stack)  # without the variable; the crashed one's runtime is still running
        stale = log_lines(stack, "stopping a runtime left running by a previous supervisor")
        assert len(stale) == 1, f"step {step}: the crashed supervisor's runtime was not ended"
        done = stack.cli("migrate", "--app-dir", str(folder), timeout=300)
        assert done.returncode == 0, f"step {step}: {done.stdout} {done.stderr}"
        if step == 9:
            assert done.stdout == "migration already complete\n"
        else:
            assert done.stdout.splitlines()[-1].startswith("[9/9] "), done.stdout

        wait_for(stack.greeting, timeout=60)
        assert NEW_GREETING in stack.greeting()
        assert stack.app_env()[SECRET] == secret
        assert stack.app_json()["visits"] > visits
        env = stack.app_env()
        got = http("GET", stack.app_api_url + "/v1/storage/notes/a.txt", None, auth(env))
        assert got[0::2] == (200, note)
        keys = world.key_ids()
        assert len(keys - {old_key}) == 1, f"step {step}: keys {keys}"
        wait_for(lambda: world.key_state(old_key) == "PendingDeletion")
        scheduled = [
            entry
            for entry in log_lines(stack, world.deletion_msg)
            if entry.get("key_id") == old_key
        ]
        assert len(scheduled) == 1, f"step {step}: {scheduled}"
    finally:
        stack.stop()
