"""Boot stages over in-memory backends: order, first and later boots, failures as degraded."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from enclave_core.config import Config
from enclave_core.manager import Plugins, get_plugin_manager
from enclave_core.runtime.boot import (
    STORAGE_DEK_PARAM,
    app_env_provider,
    run_boot,
    static_secret_context,
)
from enclave_core.runtime.state import STAGES, RuntimeState, attestation_user_data
from tests.enclave_core.runtime.doubles import (
    DOUBLES_CONFIG,
    DoublesPlugin,
    MemoryKms,
    MemoryNsm,
    MemorySecrets,
    MemoryStorage,
    shared,
)

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture
def plugins() -> Plugins:
    return get_plugin_manager(extra_plugins=[("test-doubles", DoublesPlugin())])


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(**DOUBLES_CONFIG)


def boot(config: Config, plugins: Plugins, start_app: Any = None) -> RuntimeState:
    state = RuntimeState(config)
    asyncio.run(run_boot(state, plugins, start_app))
    return state


def test_stages_run_in_order_and_start_the_app_last(config: Config, plugins: Plugins) -> None:
    seen: list[tuple[str, bool]] = []
    state = RuntimeState(config)

    async def start_app() -> None:
        seen.append((state.stage, state.storage_ready))

    assert asyncio.run(run_boot(state, plugins, start_app)) is True
    assert state.stage_history == list(STAGES)
    assert seen == [("app", True)]
    assert state.boot_error is None
    # Boot done, app not up yet: still initializing at stage "app".
    assert state.health() == (503, {"status": "initializing", "stage": "app"})


def test_each_stage_is_visible_in_health_while_it_runs(config: Config, plugins: Plugins) -> None:
    kms = shared(MemoryKms, config.state_dir)
    kms.gate = threading.Event()
    state = RuntimeState(config)

    async def scenario() -> list[Any]:
        task = asyncio.create_task(run_boot(state, plugins, None))
        while "describe_key" not in kms.calls:
            await asyncio.sleep(0.01)
        during = state.health()
        kms.gate.set()
        await task
        return [during, state.health()]

    during, after = asyncio.run(scenario())
    assert during == (503, {"status": "initializing", "stage": "kms_key"})
    assert after == (503, {"status": "initializing", "stage": "app"})


def test_first_boot_generates_and_stores_ciphertexts(config: Config, plugins: Plugins) -> None:
    state = boot(config, plugins)
    params = shared(MemorySecrets, config.state_dir).values
    kms = shared(MemoryKms, config.state_dir)
    assert set(params) == {"KMSKeyID", "signing_key/Ciphertext", STORAGE_DEK_PARAM}
    key_id = params["KMSKeyID"]
    assert state.kms_key_id == key_id and kms.keys[key_id][0] == "Enabled"
    value = state.static_env["APP_SIGNING_KEY"]
    assert HEX64.match(value)
    # The stored parameter is the KMS ciphertext of exactly that value, under the right context.
    blob = base64.b64decode(params["signing_key/Ciphertext"])
    plain = kms.decrypt(key_id, blob, static_secret_context("hello", "signing_key")).plaintext
    assert plain is not None and plain.hex() == value
    assert value not in str(params)
    assert kms.calls.count("create_key") == 1 and kms.calls.count("generate_data_key") == 2
    metrics = state.metrics.snapshot()
    assert metrics["secret_writes"] == 3
    assert metrics["kms_operations"] == 4  # create, describe, two data keys
    assert metrics["kms_errors"] == 0
    assert state.pcr0 == MemoryNsm.PCR0.hex()
    assert state.mgmt_token is not None and HEX64.match(state.mgmt_token)
    assert (
        state.attestation_pubkey is not None and len(bytes.fromhex(state.attestation_pubkey)) == 32
    )


def test_second_boot_decrypts_the_same_values(config: Config, plugins: Plugins) -> None:
    first = boot(config, plugins)
    first.storage.put("notes/a", b"kept")  # type: ignore[union-attr]
    kms = shared(MemoryKms, config.state_dir)
    kms.calls.clear()
    second = boot(config, plugins)
    assert second.boot_error is None
    assert second.static_env == first.static_env
    assert second.kms_key_id == first.kms_key_id
    assert "create_key" not in kms.calls and "generate_data_key" not in kms.calls
    assert kms.calls.count("decrypt") == 2
    assert second.storage.get("notes/a").data == b"kept"  # type: ignore[union-attr]
    assert second.mgmt_token != first.mgmt_token  # a new token every boot


def test_production_without_kms_key_is_degraded(
    make_config: Callable[..., Config], plugins: Plugins
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


def test_disabled_key_is_degraded_naming_key_and_state(config: Config, plugins: Plugins) -> None:
    first = boot(config, plugins)
    kms = shared(MemoryKms, config.state_dir)
    kms.set_state(first.kms_key_id, "Disabled")
    state = boot(config, plugins)
    body = state.health()[1]
    assert body["status"] == "degraded"
    assert first.kms_key_id in body["error"] and "Disabled" in body["error"]
    assert "kms_key" in body["error"]


def test_undecryptable_static_secret_is_degraded_without_the_value(
    config: Config, plugins: Plugins
) -> None:
    first = boot(config, plugins)
    params = shared(MemorySecrets, config.state_dir).values
    # Swap in the storage DEK's ciphertext: same key, other context, so KMS must refuse it.
    params["signing_key/Ciphertext"] = params[STORAGE_DEK_PARAM]
    state = boot(config, plugins)
    error = state.health()[1]["error"]
    assert "static_secrets" in error
    assert first.static_env["APP_SIGNING_KEY"] not in error
    assert state.metrics.snapshot()["kms_errors"] == 1


def test_unexpected_backend_exception_is_degraded(config: Config, plugins: Plugins) -> None:
    nsm = shared(MemoryNsm, config.state_dir)

    def broken(index: int) -> Any:
        raise RuntimeError("device gone")

    nsm.describe_pcr = broken
    state = boot(config, plugins)
    assert state.health() == (
        503,
        {"status": "degraded", "error": "boot stage attestation failed: RuntimeError: device gone"},
    )


async def first_start(state: RuntimeState) -> dict[str, str]:
    return await app_env_provider(state)()


def test_dynamic_secrets_reach_the_environment(config: Config, plugins: Plugins) -> None:
    first = boot(config, plugins)
    assert first.dynamic is not None
    first.dynamic.put("api_token", "tok-123", "API_TOKEN")
    first.dynamic.put("no_env", "quiet")
    # An unreadable record (not an envelope) is skipped, not fatal.
    shared(MemoryStorage, config.state_dir).objects["secrets/broken"] = b"garbage"
    state = boot(config, plugins)
    assert state.boot_error is None
    assert state.dynamic_env == {"API_TOKEN": "tok-123"}
    assert state.dynamic_secrets == 2
    env = asyncio.run(first_start(state))
    assert env["API_TOKEN"] == "tok-123"  # noqa: S105 - a test value
    assert env["APP_SIGNING_KEY"] == first.static_env["APP_SIGNING_KEY"]


def test_env_provider_rereads_dynamic_secrets_on_restart(config: Config, plugins: Plugins) -> None:
    state = boot(config, plugins)
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
