"""Boot stages: order, first and later boots, the KMS key lock, Recipient, failures as degraded.

Most tests boot the real development backends (local KMS, secrets and storage, the simulated NSM)
in a temporary folder; the KMS is wrapped by a spy that records every call. A few use the
in-memory doubles where a test needs to break a backend from outside.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from enclave_plugins.local_kms import LocalKms
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core import hookimpl
from enclave_core.config import Config
from enclave_core.crypto.attestation import verify_document
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.errors import AccessDenied
from enclave_core.kmspolicy.canonical import EnclaveKeyPolicy, render_policy
from enclave_core.plugin.backends import build_backend
from enclave_core.plugin.interfaces import BackendContext, KmsResult, Recipient
from enclave_core.plugin.manager import PluginManager, get_plugin_manager
from enclave_core.plugin.registry import BackendRegistry
from enclave_core.protocol.userdata import attestation_user_data
from enclave_core.runtime.attested_kms import RecipientSession
from enclave_core.runtime.boot import (
    STORAGE_DEK_PARAM,
    app_env_provider,
    run_boot,
    static_secret_context,
    storage_dek_context,
)
from enclave_core.runtime.state import STAGES, RuntimeState
from tests.doubles.memory_backends import (
    DOUBLES_CONFIG,
    DoublesPlugin,
    MemoryKms,
    MemoryNsm,
    MemoryStorage,
    shared,
)
from tests.enclave_core.runtime.migration_fixtures import local_kms, params

HEX64 = re.compile(r"^[0-9a-f]{64}$")
STATIC = {"static": [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}]}


# ------------------------------------------------------------------ a spy around the local KMS


@dataclass(frozen=True)
class KmsCall:
    """One call the runtime made: its method, the Recipient it sent and what KMS answered."""

    method: str
    recipient: Recipient | None
    result: KmsResult | None


class SpyKms(LocalKms):
    """The local KMS, recording each call; ``describe_key`` can wait for a gate."""

    name: ClassVar[str] = "spy"
    calls: ClassVar[dict[str, list[KmsCall]]] = {}
    gates: ClassVar[dict[str, threading.Event]] = {}
    spy_key = ""

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> LocalKms:
        kms = super().from_options(options, context)
        assert isinstance(kms, SpyKms)
        kms.spy_key = str(context.state_dir)
        return kms

    def _record(self, method: str, recipient: Any = None, result: Any = None) -> None:
        self.calls.setdefault(self.spy_key, []).append(KmsCall(method, recipient, result))

    def describe_key(self, key_id: str) -> Any:
        self._record("describe_key")
        gate = self.gates.get(self.spy_key)
        if gate is not None:
            gate.wait(10)
        return super().describe_key(key_id)

    def create_key(self, **kwargs: Any) -> Any:
        self._record("create_key")
        return super().create_key(**kwargs)

    def put_key_policy(self, key_id: str, policy: dict[str, Any], **kwargs: Any) -> None:
        self._record("put_key_policy")
        super().put_key_policy(key_id, policy, **kwargs)

    def decrypt(self, key_id: str, blob: bytes, context: Any, recipient: Any = None) -> KmsResult:
        result = super().decrypt(key_id, blob, context, recipient)
        self._record("decrypt", recipient, result)
        return result

    def generate_data_key(self, key_id: str, context: Any, **kwargs: Any) -> KmsResult:
        result = super().generate_data_key(key_id, context, **kwargs)
        self._record("generate_data_key", kwargs.get("recipient"), result)
        return result


class SpyPlugin:
    """Registers :class:`SpyKms` as the ``spy`` KMS backend."""

    @hookimpl
    def enclave_register_kms(self, registry: BackendRegistry[Any]) -> None:
        registry.add(SpyKms)


@pytest.fixture
def local_plugins() -> PluginManager:
    return get_plugin_manager(extra_plugins=[("test-spy", SpyPlugin())])


@pytest.fixture
def local_config(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    (tmp_path / "app.py").write_text("print('version 1')\n")
    return make_config(kms={"backend": "spy"}, secrets=STATIC)


def calls(config: Config, method: str | None = None) -> list[KmsCall]:
    recorded = SpyKms.calls.get(str(config.state_dir), [])
    return [c for c in recorded if method is None or c.method == method]


def boot(config: Config, plugins: PluginManager, start_app: Any = None) -> RuntimeState:
    state = RuntimeState(config)
    asyncio.run(run_boot(state, plugins, start_app))
    return state


def open_stored(config: Config, key_id: str, stored: str, context: dict[str, str]) -> bytes:
    """Decrypt a stored parameter as a boot of this image would: through Recipient."""
    nsm = SimulatedNsm(state_dir=config.state_dir, app_dir=config.app_dir)
    session = RecipientSession(nsm)
    return session.decrypt(local_kms(config), key_id, base64.b64decode(stored), context)


# ------------------------------------------------------------------ real backends


def test_stages_run_in_order_and_start_the_app_last(
    local_config: Config, local_plugins: PluginManager
) -> None:
    seen: list[tuple[str, bool]] = []
    state = RuntimeState(local_config)

    async def start_app() -> None:
        seen.append((state.stage, state.storage_ready))

    assert asyncio.run(run_boot(state, local_plugins, start_app)) is True
    assert state.stage_history == list(STAGES)
    assert seen == [("app", True)]
    assert state.boot_error is None
    # Boot done, app not up yet: still initializing at stage "app".
    assert state.health() == (503, {"status": "initializing", "stage": "app"})


def test_each_stage_is_visible_in_health_while_it_runs(
    local_config: Config, local_plugins: PluginManager
) -> None:
    gate = SpyKms.gates[str(local_config.state_dir)] = threading.Event()
    state = RuntimeState(local_config)

    async def scenario() -> list[Any]:
        task = asyncio.create_task(run_boot(state, local_plugins, None))
        while not calls(local_config, "describe_key"):
            await asyncio.sleep(0.01)
        during = state.health()
        gate.set()
        await task
        return [during, state.health()]

    during, after = asyncio.run(scenario())
    assert during == (503, {"status": "initializing", "stage": "kms_key"})
    assert after == (503, {"status": "initializing", "stage": "app"})


def locked(pcr0: str, principal: str) -> dict[str, Any]:
    """The canonical first-boot policy for ``pcr0``."""
    return render_policy(EnclaveKeyPolicy(principal=principal, pcr0=pcr0))


def test_first_boot_locks_the_key_and_generates_through_recipient(
    local_config: Config, local_plugins: PluginManager
) -> None:
    state = boot(local_config, local_plugins)
    assert state.boot_error is None
    secrets = params(local_config, local_plugins)
    names = set(secrets.list())
    documents = {n for n in names if n.startswith("Attestations/")}
    assert len(documents) == 1  # the manifest's attestation document
    assert names - documents == {
        "KMSKeyID",
        "signing_key/Ciphertext",
        STORAGE_DEK_PARAM,
        "CiphertextManifest",
    }
    key_id = secrets.get("KMSKeyID")
    assert state.kms_key_id == key_id
    # The key was created locked: exactly the canonical policy for this PCR0 and principal.
    kms = local_kms(local_config)
    assert state.pcr0 is not None and len(state.pcr0) == 96
    assert kms.get_key_policy(key_id) == locked(state.pcr0, kms.caller_arn())
    assert [c.method for c in calls(local_config)] == [
        "create_key",
        "describe_key",
        "generate_data_key",
        "generate_data_key",
    ]
    # Every data key came through Recipient, and no answer carried a plaintext.
    generated = calls(local_config, "generate_data_key")
    assert all(c.recipient is not None for c in generated)
    assert all(c.result is not None and c.result.plaintext is None for c in generated)
    # The Recipient document binds this boot's RSA key and the runtime's user_data.
    document = generated[0].recipient.attestation_document  # type: ignore[union-attr]
    root = load_root_pem(local_config.state_dir / "dev-root.pem")
    verified = verify_document(document, root=root, at=datetime.now(UTC))
    assert state.recipient is not None
    assert verified.public_key == state.recipient.public_key_der
    assert verified.user_data == state.user_data() and verified.pcrs[0].hex() == state.pcr0
    # The stored ciphertext is exactly the app's secret, under its context.
    value = state.static_env["APP_SIGNING_KEY"]
    assert HEX64.match(value)
    context = static_secret_context("hello", "signing_key")
    assert open_stored(local_config, key_id, secrets.get("signing_key/Ciphertext"), context) == (
        bytes.fromhex(value)
    )
    assert value not in json.dumps({n: secrets.get(n) for n in secrets.list()})
    metrics = state.metrics.snapshot()
    # KMSKeyID, the manifest and its document, two ciphertexts, the generation lock and its
    # release
    assert metrics["secret_writes"] == 6
    # create, describe, get policy, list grants, two data keys
    assert (metrics["kms_operations"], metrics["kms_errors"]) == (6, 0)
    assert state.mgmt_token is not None and HEX64.match(state.mgmt_token)
    assert (
        state.attestation_pubkey is not None and len(bytes.fromhex(state.attestation_pubkey)) == 32
    )


def test_second_boot_decrypts_the_same_values(
    local_config: Config, local_plugins: PluginManager
) -> None:
    first = boot(local_config, local_plugins)
    assert first.storage is not None
    first.storage.put("notes/a", b"kept")
    SpyKms.calls.clear()
    second = boot(local_config, local_plugins)
    assert second.boot_error is None
    assert second.static_env == first.static_env
    assert second.kms_key_id == first.kms_key_id
    assert [c.method for c in calls(local_config)] == ["describe_key", "decrypt", "decrypt"]
    assert second.metrics.snapshot()["secret_writes"] == 0  # nothing to write on a later boot
    decrypts = calls(local_config, "decrypt")
    assert all(c.recipient is not None for c in decrypts)
    assert all(c.result is not None and c.result.plaintext is None for c in decrypts)
    assert second.recipient is not None and first.recipient is not None
    assert second.recipient.public_key_der != first.recipient.public_key_der  # per boot
    assert second.storage is not None and second.storage.get("notes/a").data == b"kept"
    assert second.mgmt_token != first.mgmt_token  # a new token every boot


def test_a_changed_app_is_degraded_and_never_sees_the_secrets(
    local_config: Config, local_plugins: PluginManager, tmp_path: Path
) -> None:
    first = boot(local_config, local_plugins)
    assert first.pcr0 is not None
    (tmp_path / "app.py").write_text("print('version 2')\n")  # a new image: a new PCR0
    SpyKms.calls.clear()
    state = boot(local_config, local_plugins)
    assert state.pcr0 is not None and state.pcr0 != first.pcr0
    status, body = state.health()
    assert status == 503 and body["status"] == "degraded"
    assert body["error"].startswith(
        f"boot stage kms_key failed: KMS key {first.kms_key_id} is locked to PCR0 "
        f"{first.pcr0[:16]}…, not this enclave's PCR0 {state.pcr0[:16]}…"
    )
    assert state.static_env == {} and state.storage is None
    assert calls(local_config, "decrypt") == []
    # KMS itself would refuse this image the secret anyway.
    stored = params(local_config, local_plugins).get("signing_key/Ciphertext")
    context = static_secret_context("hello", "signing_key")
    with pytest.raises(AccessDenied, match="the request's value differs"):
        open_stored(local_config, first.kms_key_id or "", stored, context)


def prepared_key(
    config: Config, plugins: PluginManager, policy: Callable[[str], dict[str, Any]]
) -> str:
    """A key named in KMSKeyID whose policy is ``policy(this image's PCR0)``."""
    kms = local_kms(config)
    key_id = kms.create_key().key_id
    nsm = build_backend(config, plugins, "attestation")
    kms.put_key_policy(
        key_id, policy(nsm.describe_pcr(0).data.hex()), bypass_lockout_safety_check=True
    )
    params(config, plugins).put("KMSKeyID", key_id)
    return key_id


def test_a_key_other_images_can_decrypt_is_degraded(
    local_config: Config, local_plugins: PluginManager
) -> None:
    other = "0f" * 48

    def two_images(own: str) -> dict[str, Any]:
        policy = locked(own, local_kms(local_config).caller_arn())
        condition = policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
        condition["kms:RecipientAttestation:PCR0"] = [own, other]
        return policy

    key_id = prepared_key(local_config, local_plugins, two_images)
    state = boot(local_config, local_plugins)
    assert state.health()[1]["error"] == (
        f"boot stage kms_key failed: KMS key {key_id}: statement "
        "'EnclaveDecryptWithAttestation' must admit exactly one PCR0 (and PCR8)"
    )
    assert calls(local_config, "generate_data_key") == []


def test_a_locked_key_no_image_can_use_is_degraded(
    local_config: Config, local_plugins: PluginManager
) -> None:
    def read_only(own: str) -> dict[str, Any]:
        policy = locked(own, local_kms(local_config).caller_arn())
        del policy["Statement"][0]  # no Decrypt for anyone
        return policy

    key_id = prepared_key(local_config, local_plugins, read_only)
    state = boot(local_config, local_plugins)
    assert state.health()[1]["error"] == (
        f"boot stage kms_key failed: KMS key {key_id}: the policy has no "
        "'EnclaveDecryptWithAttestation' statement"
    )


def test_a_key_with_unconditioned_decrypt_is_degraded(
    local_config: Config, local_plugins: PluginManager
) -> None:
    def open_decrypt(own: str) -> dict[str, Any]:
        policy = locked(own, local_kms(local_config).caller_arn())
        policy["Statement"].append(
            {
                "Sid": "HostDecrypt",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::000000000000:role/host"},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        )
        return policy

    key_id = prepared_key(local_config, local_plugins, open_decrypt)
    error = boot(local_config, local_plugins).health()[1]["error"]
    assert error == (
        f"boot stage kms_key failed: KMS key {key_id}: the key policy is not the enclave's "
        "canonical policy: it has a statement 'HostDecrypt' that the enclave's policy does not have"
    )


def test_disabled_key_is_degraded_naming_key_and_state(
    local_config: Config, local_plugins: PluginManager
) -> None:
    first = boot(local_config, local_plugins)
    # The locked policy lets nobody disable the key through KMS; the key file stands for
    # whatever AWS-side event disabled it.
    path = local_config.state_dir / "kms" / f"{first.kms_key_id}.json"
    record = json.loads(path.read_text())
    record["state"] = "Disabled"
    path.write_text(json.dumps(record))
    body = boot(local_config, local_plugins).health()[1]
    assert body == {
        "status": "degraded",
        "error": f"boot stage kms_key failed: KMS key {first.kms_key_id} is Disabled, not Enabled",
    }


def test_undecryptable_static_secret_is_degraded_without_the_value(
    local_config: Config, local_plugins: PluginManager
) -> None:
    first = boot(local_config, local_plugins)
    secrets = params(local_config, local_plugins)
    # Swap in the storage DEK's ciphertext: same key, another context; the manifest names
    # another ciphertext there, so it is not even sent to KMS.
    secrets.put("signing_key/Ciphertext", secrets.get(STORAGE_DEK_PARAM))
    SpyKms.calls.clear()
    state = boot(local_config, local_plugins)
    error = state.health()[1]["error"]
    assert error == (
        "boot stage static_secrets failed: parameter signing_key/Ciphertext (static secret "
        "'signing_key') cannot be trusted: it is not the ciphertext the attested manifest names"
    )
    assert first.static_env["APP_SIGNING_KEY"] not in error
    assert calls(local_config, "decrypt") == []
    # The storage DEK itself still opens under its own context.
    dek = open_stored(
        local_config,
        first.kms_key_id or "",
        secrets.get(STORAGE_DEK_PARAM),
        storage_dek_context("hello"),
    )
    assert len(dek) == 32


# ------------------------------------------------------------------ in-memory doubles


@pytest.fixture
def plugins() -> PluginManager:
    return get_plugin_manager(extra_plugins=[("test-doubles", DoublesPlugin())])


@pytest.fixture
def doubles_config(make_config: Callable[..., Config]) -> Config:
    return make_config(**DOUBLES_CONFIG)


def test_doubles_boot_locks_and_uses_recipient_too(
    doubles_config: Config, plugins: PluginManager
) -> None:
    state = boot(doubles_config, plugins)
    assert state.boot_error is None
    kms = shared(MemoryKms, doubles_config.state_dir)
    assert kms.policies[state.kms_key_id] == locked(MemoryNsm.PCR0.hex(), MemoryKms.PRINCIPAL)
    documents = shared(MemoryNsm, doubles_config.state_dir).documents
    # The Recipient document, and the one binding the manifest (no public key there).
    assert [d["public_key"] is not None for d in documents] == [True, False]


def test_production_without_kms_key_is_degraded(
    make_config: Callable[..., Config], plugins: PluginManager
) -> None:
    config = make_config(mode="production", **DOUBLES_CONFIG, launcher={"backend": "testmem"})
    started: list[bool] = []

    async def start_app() -> None:
        started.append(True)

    state = boot(config, plugins, start_app)
    status, body = state.health()
    assert status == 503 and body["status"] == "degraded"
    assert "kms_key" in body["error"] and "KMSKeyID" in body["error"]
    assert state.storage is None and started == []
    assert shared(MemoryKms, config.state_dir).keys == {}


def test_unexpected_backend_exception_is_degraded(
    doubles_config: Config, plugins: PluginManager
) -> None:
    nsm = shared(MemoryNsm, doubles_config.state_dir)

    def broken(index: int) -> Any:
        raise RuntimeError("device gone")

    nsm.describe_pcr = broken
    state = boot(doubles_config, plugins)
    assert state.health() == (
        503,
        {"status": "degraded", "error": "boot stage attestation failed: RuntimeError: device gone"},
    )


async def first_start(state: RuntimeState) -> dict[str, str]:
    return await app_env_provider(state)()


def test_dynamic_secrets_reach_the_environment(
    doubles_config: Config, plugins: PluginManager
) -> None:
    first = boot(doubles_config, plugins)
    assert first.dynamic is not None
    first.dynamic.put("api_token", "tok-123", "API_TOKEN")
    first.dynamic.put("no_env", "quiet")
    # An unreadable record (not an envelope) is skipped, not fatal.
    shared(MemoryStorage, doubles_config.state_dir).objects["secrets/broken"] = b"garbage"
    state = boot(doubles_config, plugins)
    assert state.boot_error is None
    assert state.dynamic_env == {"API_TOKEN": "tok-123"}
    assert state.dynamic_secrets == 2
    env = asyncio.run(first_start(state))
    assert env["API_TOKEN"] == "tok-123"  # noqa: S105 - a test value
    assert env["APP_SIGNING_KEY"] == first.static_env["APP_SIGNING_KEY"]


def test_env_provider_rereads_dynamic_secrets_on_restart(
    doubles_config: Config, plugins: PluginManager
) -> None:
    state = boot(doubles_config, plugins)
    provide = app_env_provider(state)

    async def two_starts() -> tuple[dict[str, str], dict[str, str]]:
        first = await provide()
        assert state.dynamic is not None
        state.dynamic.put("later", "v2", "LATER")
        return first, await provide()

    first, second = asyncio.run(two_starts())
    assert "LATER" not in first and second["LATER"] == "v2"


def test_user_data_binds_certificate_and_signing_key() -> None:
    pub = bytes(range(32))
    data = attestation_user_data(None, pub)
    assert len(data) == 68
    assert data[:2] == b"\x12\x20" and data[2:34] == bytes(32)
    assert data[34:36] == b"\x12\x20" and data[36:] == hashlib.sha256(pub).digest()
    with_cert = attestation_user_data(b"DER", pub)
    assert with_cert[2:34] == hashlib.sha256(b"DER").digest()
