"""The nine migration steps against the real local backends, with a stand-in old enclave.

The "old enclave" is a real in-process boot (local KMS, secrets, storage, simulated NSM) of the
app folder; the stand-in answers steps 2 and 5 with the runtime's own code
(:func:`~enclave_core.runtime.migration_key.create_migration_key`,
:func:`~enclave_core.runtime.export.export_keys`), as its control listener would. After a
migration the new image is booted in-process too, from the folder the image override names, and
must see the same secret and read back the stored objects.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from enclave_plugins.local_kms import LocalKms

from enclave_core.config import Config
from enclave_core.errors import EnclaveError, StateConflict, ValidationError
from enclave_core.image.current import apply_image_override, measure_new_image, read_image_override
from enclave_core.image.snapshot import content_digest, images_dir
from enclave_core.kmspolicy.canonical import match_policy
from enclave_core.runtime.attested_kms import RecipientSession
from enclave_core.runtime.boot import static_secret_context
from enclave_core.supervisor.api import create_app
from enclave_core.supervisor.migration.checkpoint import (
    CHECKPOINT_PARAM,
    OLD_KEY_PARAM,
    Checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from enclave_core.supervisor.migration.enclave import SupervisorEnclave
from enclave_core.supervisor.migration.service import parse_request
from enclave_core.supervisor.migration.steps import MigrationRunner
from enclave_core.supervisor.runtime_client import Probe
from enclave_core.testing import free_port
from tests.enclave_core.supervisor.migration.migration_world import (
    TOKEN,
    World,
    boot,
    crash_at,
    make_world,
    migrate,
)


@pytest.fixture
def world(tmp_path: Path, make_config: Callable[..., Config]) -> World:
    return make_world(tmp_path, make_config)


def assert_migrated(world: World, new_key: str) -> None:
    """Final parameters, one new key, and a boot of the new image with the same secrets."""
    secrets = world.secrets
    assert secrets.get("KMSKeyID") == new_key
    assert sorted(set(world.key_ids()) - {world.old_key}) == [new_key]
    assert secrets.get(OLD_KEY_PARAM) == world.old_key  # the new enclave consumes it
    for gone in ("MigrationKMSKeyID", "MigrationTargetPCR0"):
        assert secrets.get(gone) is None
    assert [n for n in secrets.list("Migration/") if n.endswith("/Ciphertext")] == []
    checkpoint = read_checkpoint(secrets)
    assert checkpoint is not None and (checkpoint.step, checkpoint.status) == (9, "done")
    override = read_image_override(world.config)
    assert override is not None and override["pcr0"] == checkpoint.target_pcr0
    # The new image is a snapshot of the folder, not the folder itself (editing it changes nothing).
    snapshot = Path(override["app_dir"])
    assert snapshot.parent == images_dir(world.config)
    assert override["digest"] == content_digest(world.config, world.new_dir)
    assert (snapshot / "app.py").read_text() == (world.new_dir / "app.py").read_text()
    new = boot(apply_image_override(world.config), world.plugins)
    assert new.pcr0 == checkpoint.target_pcr0 != world.old.pcr0
    assert new.kms_key_id == new_key
    assert new.static_env == world.old.static_env
    assert new.storage is not None
    assert json.loads(new.storage.get("visits").data) == {"visits": 3}


# ------------------------------------------------------------------ the whole migration


def test_a_migration_moves_every_secret_to_a_key_only_the_new_image_can_use(world: World) -> None:
    enclave = world.enclave()
    service = world.service(enclave)
    status, progress = migrate(service, {"app_dir": str(world.new_dir)})
    assert status == 202
    assert (progress["step"], progress["total"], progress["status"]) == (9, 9, "done")
    assert [s["step"] for s in progress["steps"]] == list(range(1, 10))
    assert progress["steps"][-1]["msg"] == "migration parameters cleaned up; migration complete"
    assert (enclave.exports, enclave.restarts) == (1, 1)
    assert enclave.names == ["signing_key", "StorageDEK"]
    new_key = progress["new_key_id"]
    # The new key, made by the old enclave: the canonical migration policy for the new image.
    kms = world.backends()[0]
    params = match_policy(kms.get_key_policy(new_key))
    assert params.pcr0 == progress["target_pcr0"] and params.migration
    assert params.principal == kms.caller_arn()
    assert kms.list_grants(new_key) == []
    description = kms.describe_key(new_key).description
    assert world.config.name in description and progress["id"] in description
    assert enclave.keys_made == 1
    # Neither the supervisor nor anyone else can decrypt under it without the new image.
    blob = base64.b64decode(world.secrets.get("signing_key/Ciphertext") or "")
    with pytest.raises(EnclaveError, match="denied"):
        kms.decrypt(new_key, blob, static_secret_context("hello", "signing_key"))
    old_session = RecipientSession(world.old.attestation)  # type: ignore[arg-type]
    with pytest.raises(EnclaveError, match="denied"):
        old_session.decrypt(kms, new_key, blob, static_secret_context("hello", "signing_key"))
    assert_migrated(world, new_key)
    checkpoint = read_checkpoint(world.secrets)
    assert checkpoint is not None and checkpoint.previous_pcr0 == world.old.pcr0


@pytest.mark.parametrize("step", range(1, 10))
def test_a_crash_after_any_step_resumes_to_the_same_result(world: World, step: int) -> None:
    first = world.enclave()
    _, progress = migrate(
        world.service(first, after_step=crash_at(step)), {"app_dir": str(world.new_dir)}
    )
    stored = read_checkpoint(world.secrets)
    assert stored is not None and stored.step == step
    assert stored.status == ("done" if step == 9 else "running")
    # From step 2 on there is exactly one new key, and its final policy is already in place.
    if step == 1:
        assert world.new_keys() == [] and stored.new_key_id is None
    else:
        assert world.new_keys() == [stored.new_key_id]
        assert world.locked_to(str(stored.new_key_id), stored.target_pcr0)
    # A new supervisor (fresh backends), the same command again.
    second = world.enclave()
    status, progress = migrate(world.service(second), {"app_dir": str(world.new_dir)})
    if step == 9:
        assert (status, progress["msg"]) == (200, "migration already complete")
    else:
        assert status == 202 and progress["status"] == "done", progress
        assert progress["id"] == stored.id
        assert [s["step"] for s in progress["steps"]] == list(range(1, 10))
    assert first.exports + second.exports == 1
    assert first.restarts + second.restarts == 1
    assert first.keys_made + second.keys_made == 1
    assert_migrated(world, str(stored.new_key_id or progress["new_key_id"]))


def test_a_crash_between_create_key_and_its_checkpoint_creates_no_second_key(
    world: World,
) -> None:
    kms, secrets = world.backends()
    target = measure_new_image(world.config, app_dir=world.new_dir, plugins=world.plugins)
    checkpoint = Checkpoint.new(world.config, target, app_dir=str(world.new_dir), eif=None)
    write_checkpoint(secrets, checkpoint)
    runner = MigrationRunner(world.config, kms=kms, secrets=secrets, enclave=world.enclave())
    runner.read_old_key(checkpoint)
    runner.create_new_key(checkpoint)  # ... and the process dies before the checkpoint
    created = checkpoint.new_key_id
    resumed = read_checkpoint(secrets)
    assert resumed is not None and resumed.new_key_id is None
    runner.create_new_key(resumed)
    # The old enclave recorded the key it made for this migration and answers with it again.
    assert resumed.new_key_id == created
    assert world.new_keys() == [created]
    assert world.locked_to(str(created), checkpoint.target_pcr0)  # locked from creation


def test_rerunning_a_finished_migration_is_a_no_op(world: World) -> None:
    migrate(world.service(world.enclave()), {"app_dir": str(world.new_dir)})
    keys = world.key_ids()
    enclave = world.enclave()
    service = world.service(enclave)
    status, answer = migrate(service, {"app_dir": str(world.new_dir)})
    assert (status, answer["status"], answer["msg"]) == (200, "done", "migration already complete")
    # GET after the no-op reports the stored checkpoint.
    assert asyncio.run(service.progress())["msg"] == "migration complete"
    assert world.key_ids() == keys and enclave.exports == 0 and enclave.restarts == 0


# ------------------------------------------------------------------ who makes the new key


class NoCreateKms(LocalKms):
    """The local KMS as the supervisor sees it, noting every CreateKey and PutKeyPolicy."""

    calls: list[str] = []

    def create_key(self, **kwargs: Any) -> Any:
        self.calls.append("CreateKey")
        return super().create_key(**kwargs)

    def put_key_policy(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("PutKeyPolicy")
        super().put_key_policy(*args, **kwargs)


def test_the_supervisor_never_makes_or_changes_a_key(world: World) -> None:
    kms = world.local_kms(NoCreateKms)
    NoCreateKms.calls = []
    status, progress = migrate(
        world.service(world.enclave(), kms=kms), {"app_dir": str(world.new_dir)}
    )
    assert status == 202 and progress["status"] == "done", progress
    assert NoCreateKms.calls == []
    new_key = progress["new_key_id"]
    steps = {s["step"]: s["msg"] for s in progress["steps"]}
    assert steps[2].startswith(f"new key {new_key} created by the old enclave (export window until")
    assert steps[3] == f"new key {new_key} locked to PCR0 {progress['target_pcr0'][:16]}…"
    assert_migrated(world, new_key)


# ------------------------------------------------------------------ hostile cases


def test_a_pcr0_that_differs_from_the_new_images_measurement_is_refused(world: World) -> None:
    service = world.service(world.enclave())
    with pytest.raises(ValidationError, match="differs from the new image's measurement"):
        asyncio.run(service.start({"app_dir": str(world.new_dir), "pcr0": "1" * 96}))
    assert world.secrets.get(CHECKPOINT_PARAM) is None
    assert world.key_ids() == [world.old_key]
    assert not service.running


def test_a_requested_pcr0_is_normalised_and_the_debug_mode_one_refused() -> None:
    assert parse_request({"app_dir": "/x", "pcr0": "0x" + "AB" * 48})["pcr0"] == "ab" * 48
    for pcr0 in ("0" * 96, "0X" + "0" * 96):
        with pytest.raises(ValidationError, match="'pcr0' is all zero.*admit any image"):
            parse_request({"app_dir": "/x", "pcr0": pcr0})
    with pytest.raises(ValidationError, match="'pcr0' must be 96 hex digits"):
        parse_request({"app_dir": "/x", "pcr0": "ab" * 47})


@pytest.mark.parametrize("pcr0", ["0" * 96, "0x" + "0" * 96])
def test_the_debug_mode_pcr0_is_refused_as_a_migration_target(world: World, pcr0: str) -> None:
    # Every debug-mode enclave reports it: a key locked to it opens for any image.
    service = world.service(world.enclave())
    with pytest.raises(ValidationError, match="'pcr0' is all zero: that is what every debug-mode"):
        asyncio.run(service.start({"app_dir": str(world.new_dir), "pcr0": pcr0}))
    assert world.secrets.get(CHECKPOINT_PARAM) is None
    assert world.key_ids() == [world.old_key]
    assert not service.running


def test_a_second_concurrent_migration_is_refused_with_409(world: World) -> None:
    gate = threading.Event()
    enclave = world.enclave(gate=gate)
    service = world.service(enclave)
    app = create_app(
        watchdog=None,  # type: ignore[arg-type]
        runtime_info=dict,
        config=world.config,
        token=TOKEN,
        migration=service,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"app_dir": str(world.new_dir)}

    async def scenario() -> list[Any]:
        answers: list[Any] = []
        async with falcon.testing.ASGIConductor(app) as api:
            answers.append(await api.simulate_post("/v1/migrate", json=body))
            answers.append(await api.simulate_post("/v1/migrate", json=body, headers=auth))
            answers.append(await api.simulate_post("/v1/migrate", json=body, headers=auth))
            answers.append(await api.simulate_get("/v1/migrate"))
            gate.set()
            await service.wait()
            answers.append(await api.simulate_get("/v1/migrate"))
        return answers

    unauthorized, first, second, during, after = asyncio.run(scenario())
    assert unauthorized.status_code == 401
    assert first.status_code == 202 and first.json["status"] == "running"
    assert second.status_code == 409
    assert second.json["description"].startswith("a migration is already running")
    assert during.json["status"] == "running" and during.json["id"] == first.json["id"]
    assert after.json["status"] == "done" and after.json["step"] == 9
    assert enclave.exports == 1


@pytest.mark.parametrize("fate", ["PendingDeletion", "gone"])
def test_a_checkpoint_naming_a_key_that_no_longer_exists_is_refused(
    world: World, fate: str
) -> None:
    migrate(world.service(world.enclave(), after_step=crash_at(4)), {"app_dir": str(world.new_dir)})
    checkpoint = read_checkpoint(world.secrets)
    assert checkpoint is not None and checkpoint.new_key_id is not None
    kms = world.backends()[0]
    assert isinstance(kms, LocalKms)
    if fate == "PendingDeletion":
        kms.schedule_key_deletion(checkpoint.new_key_id, 7)
    else:
        (kms.directory / f"{checkpoint.new_key_id}.json").unlink()
    service = world.service(world.enclave())
    expected = (
        f"the migration's new key {checkpoint.new_key_id} no longer exists ({fate}); the secrets "
        f"are still under key {world.old_key}"
    )
    with pytest.raises(StateConflict, match=expected.replace("(", r"\(").replace(")", r"\)")):
        asyncio.run(service.start({"app_dir": str(world.new_dir)}))
    assert world.secrets.get("KMSKeyID") == world.old_key


def test_an_unfinished_migration_to_another_image_blocks_a_new_one(
    world: World, tmp_path: Path
) -> None:
    migrate(world.service(world.enclave(), after_step=crash_at(3)), {"app_dir": str(world.new_dir)})
    other = tmp_path / "app-v3"
    other.mkdir()
    (other / "app.py").write_text("print('version 3')\n")
    with pytest.raises(StateConflict, match=r"is unfinished \(step 3/9\)"):
        asyncio.run(world.service(world.enclave()).start({"app_dir": str(other)}))


def test_a_refused_export_fails_the_step_and_a_rerun_resumes_there(world: World) -> None:
    refused = world.enclave(refuse="target key policy can be changed")
    _, progress = migrate(world.service(refused), {"app_dir": str(world.new_dir)})
    assert progress["status"] == "failed" and progress["step"] == 4
    assert "refused export-key (403): target key policy can be changed" in progress["msg"]
    stored = read_checkpoint(world.secrets)
    assert stored is not None and (stored.step, stored.status) == (4, "failed")
    assert stored.error is not None and "step 5 failed" in stored.error
    assert world.secrets.get("KMSKeyID") == world.old_key
    enclave = world.enclave()
    _, progress = migrate(world.service(enclave), {"app_dir": str(world.new_dir)})
    assert progress["status"] == "done" and enclave.exports == 1
    assert_migrated(world, progress["new_key_id"])


def test_missing_migration_ciphertexts_time_out_with_their_names(world: World) -> None:
    service = world.service(world.enclave(write=False), export_timeout_s=0.5)
    _, progress = migrate(service, {"app_dir": str(world.new_dir)})
    assert progress["status"] == "failed"
    assert (
        "timed out after 0.5 s waiting for the old enclave's Migration/signing_key/"
        in (progress["msg"])
    )
    assert world.secrets.get("KMSKeyID") == world.old_key


def test_bad_requests_are_refused(world: World) -> None:
    service = world.service(world.enclave())
    for body, message in [
        ({}, "exactly one of 'eif' and 'app_dir'"),
        ({"app_dir": "relative"}, "must be an absolute path"),
        ({"app_dir": str(world.new_dir), "pcr0": "xyz"}, "96 hex"),
        ({"app_dir": str(world.new_dir), "colour": "red"}, "unknown field"),
        ({"eif": str(world.new_dir / "app.py")}, "--eif needs mode: production"),
    ]:
        with pytest.raises(ValidationError, match=message):
            asyncio.run(service.start(body))
    assert not service.running


# ------------------------------------------------------------------ key deletion


def test_schedule_key_deletion_retires_the_old_key_and_refuses_the_key_in_use(
    world: World,
) -> None:
    service = world.service(world.enclave())
    with pytest.raises(StateConflict, match="MigrationOldKMSKeyID is not set"):
        asyncio.run(service.schedule_key_deletion(7))
    world.secrets.put(OLD_KEY_PARAM, world.old_key)
    with pytest.raises(StateConflict, match=f"key {world.old_key} is the key in use"):
        asyncio.run(service.schedule_key_deletion(7))
    with pytest.raises(ValidationError, match="7 to 30"):
        asyncio.run(service.schedule_key_deletion(31))
    _, progress = migrate(service, {"app_dir": str(world.new_dir)})
    answer = asyncio.run(service.schedule_key_deletion(10))
    assert (answer["key_id"], answer["state"]) == (world.old_key, "PendingDeletion")
    assert world.backends()[0].describe_key(world.old_key).state == "PendingDeletion"
    assert world.secrets.get(OLD_KEY_PARAM) is None
    assert world.backends()[0].describe_key(progress["new_key_id"]).state == "Enabled"


# ------------------------------------------------------------------ the real enclave's side


class FakeControl:
    """A control listener answering POST /v1/export-key with a canned status and body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.requests: list[tuple[str, bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"] or 0)
                fake.requests.append((self.path, self.rfile.read(length)))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class LoopbackLauncher:
    def enclave_address(self, port: int) -> str:
        return f"tcp://127.0.0.1:{port}"


@pytest.fixture
def control() -> Iterator[Callable[[int, dict[str, Any]], FakeControl]]:
    made: list[FakeControl] = []

    def make(status: int, body: dict[str, Any]) -> FakeControl:
        made.append(FakeControl(status, body))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_the_supervisor_posts_export_key_to_the_control_listener_and_reports_a_refusal(
    make_config: Callable[..., Config], control: Callable[[int, dict[str, Any]], FakeControl]
) -> None:
    answer = {"exported": ["StorageDEK"], "pcr0": "00" * 48, "new_key_id": "k"}
    ok = control(200, answer)
    config = make_config(runtime={"control_port": ok.port})
    loop = asyncio.new_event_loop()
    try:
        enclave = SupervisorEnclave(
            config,
            LoopbackLauncher(),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            lambda: Probe(True, "ready"),
            loop,
        )
        assert enclave.export_key() == answer
        assert ok.requests == [("/v1/export-key", b"{}")]
        refusing = control(403, {"title": "Export refused", "description": "policy can change"})
        config.runtime.control_port = refusing.port
        with pytest.raises(EnclaveError, match=r"refused export-key \(403\): policy can change"):
            enclave.export_key()
        booting = SupervisorEnclave(
            config,
            LoopbackLauncher(),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            lambda: Probe(False, "degraded", "boot stage kms_key failed"),
            loop,
            ready_timeout_s=0.3,
        )
        with pytest.raises(EnclaveError, match="did not become ready within 0.3 s"):
            booting.export_key()
    finally:
        loop.close()
