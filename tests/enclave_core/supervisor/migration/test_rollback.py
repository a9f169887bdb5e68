"""Step 8's rollback: a new image that fails leaves the old version serving, its secrets intact.

The enclaves are real in-process boots (as in test_migration.py): the failing "new enclave" boots
the new image (adopting the link, writing its manifest and ``Chain/1``) before it is declared
failed, and the rolled-back "old enclave" boots from whatever the parameters and the image
override say afterwards, so what it opens is what a real restart would open.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.image.current import (
    apply_image_override,
    image_path,
    measure_new_image,
    read_image_override,
)
from enclave_core.image.snapshot import images_dir
from enclave_core.plugin.interfaces import ExitInfo
from enclave_core.plugin.manager import PluginManager
from enclave_core.runtime.boot import run_boot
from enclave_core.runtime.state import RuntimeState
from enclave_core.supervisor.migration.checkpoint import (
    CHECKPOINT_PARAM,
    OLD_KEY_PARAM,
    Checkpoint,
    read_checkpoint,
)
from enclave_core.supervisor.migration.enclave import SupervisorEnclave
from enclave_core.supervisor.migration.rollback import (
    ROLLBACK_PREFIX,
    ImageBackup,
    live_params,
    save_for_rollback,
)
from enclave_core.supervisor.migration.steps import MigrationRunner
from enclave_core.supervisor.runtime_client import Probe
from tests.enclave_core.supervisor.migration.migration_world import (
    OldEnclave,
    World,
    crash_at,
    make_world,
    migrate,
)


@pytest.fixture
def world(tmp_path: Path, make_config: Callable[..., Config]) -> World:
    return make_world(tmp_path, make_config)


BROKEN = "the new enclave failed: app exited with code 1; it failed 5 times in a row"


def boot_image(config: Config, plugins: PluginManager) -> RuntimeState:
    """Boot whatever image the override names now, as the launcher would start it."""
    state = RuntimeState(apply_image_override(config))
    asyncio.run(run_boot(state, plugins, None))
    return state


@dataclass
class Launches(OldEnclave):
    """Each restart boots the image in place; the ones listed in ``fail`` then count as failed."""

    config: Config | None = None
    plugins: PluginManager | None = None
    fail: dict[int, str] = field(default_factory=dict)
    booted: list[RuntimeState] = field(default_factory=list)

    def restart(self) -> None:
        super().restart()
        assert self.config is not None and self.plugins is not None
        self.booted.append(boot_image(self.config, self.plugins))
        if self.restarts in self.fail:
            raise EnclaveError(self.fail[self.restarts])


def launches(world: World, fail: dict[int, str]) -> Launches:
    return Launches(world.old, world.secrets, config=world.config, plugins=world.plugins, fail=fail)


def state_of(world: World) -> dict[str, Any]:
    """Every parameter but the checkpoint, and the image override."""
    secrets = world.secrets
    names = [n for n in secrets.list("") if n != CHECKPOINT_PARAM]
    return {
        "params": {name: secrets.get(name) for name in sorted(names)},
        "image": read_image_override(world.config),
    }


def test_a_new_image_that_fails_is_rolled_back_and_the_old_one_serves(world: World) -> None:
    before = state_of(world)
    enclave = launches(world, {1: BROKEN})
    service = world.service(enclave)
    status, progress = migrate(service, {"app_dir": str(world.new_dir)})
    assert status == 202
    assert (progress["status"], progress["step"]) == ("rolled_back", 7)
    assert progress["msg"] == (
        f"step 8 failed: {BROKEN}; rolled back: the previous image serves again"
    )
    # The new image really booted (it adopted the link) before it was declared failed ...
    new, old = enclave.booted
    assert new.boot_error is None and new.pcr0 == progress["target_pcr0"] != world.old.pcr0
    # ... and the old one booted again on the old key, with the same secret and stored data.
    assert old.boot_error is None and old.pcr0 == world.old.pcr0
    assert old.kms_key_id == world.old_key
    assert old.static_env == world.old.static_env
    assert old.storage is not None
    assert json.loads(old.storage.get("visits").data) == {"visits": 3}
    # Every parameter as before the migration (the attested documents aside), the image too.
    after = state_of(world)
    assert after["image"] == before["image"] is None
    attestations = {n for n in after["params"] if n.startswith("Attestations/")}
    kept = {n: v for n, v in after["params"].items() if n not in attestations}
    assert kept == {n: v for n, v in before["params"].items() if n not in attestations}
    assert world.secrets.get("Chain/1") is None and world.secrets.get(OLD_KEY_PARAM) is None
    # The old key lives; the new one, which holds nothing anyone will use, is being deleted.
    kms = world.backends()[0]
    assert kms.describe_key(world.old_key).state == "Enabled"
    assert kms.describe_key(progress["new_key_id"]).state == "PendingDeletion"
    checkpoint = read_checkpoint(world.secrets)
    assert checkpoint is not None and checkpoint.status == "rolled_back"
    # GET /v1/migrate from a fresh supervisor says so too.
    fresh = world.service(world.enclave())
    stored = asyncio.run(fresh.progress())
    assert (stored["status"], stored["msg"]) == ("rolled_back", progress["msg"])


def test_after_a_rollback_the_next_migration_starts_afresh_and_succeeds(world: World) -> None:
    _, failed = migrate(
        world.service(launches(world, {1: BROKEN})), {"app_dir": str(world.new_dir)}
    )
    (world.new_dir / "app.py").write_text("print('version 2, fixed')\n")
    enclave = launches(world, {})
    status, progress = migrate(world.service(enclave), {"app_dir": str(world.new_dir)})
    assert status == 202 and progress["status"] == "done", progress
    assert progress["id"] != failed["id"] and progress["new_key_id"] != failed["new_key_id"]
    [new] = enclave.booted
    assert new.boot_error is None and new.kms_key_id == progress["new_key_id"]
    assert new.static_env == world.old.static_env
    assert new.storage is not None and json.loads(new.storage.get("visits").data) == {"visits": 3}
    assert world.secrets.get("Chain/1") is not None
    assert [n for n in world.secrets.list(ROLLBACK_PREFIX)] == []


def test_the_same_broken_image_again_is_a_new_migration_rolled_back_again(world: World) -> None:
    _, first = migrate(world.service(launches(world, {1: BROKEN})), {"app_dir": str(world.new_dir)})
    _, second = migrate(
        world.service(launches(world, {1: BROKEN})), {"app_dir": str(world.new_dir)}
    )
    assert (first["status"], second["status"]) == ("rolled_back", "rolled_back")
    assert first["id"] != second["id"]
    kms = world.backends()[0]
    assert kms.describe_key(world.old_key).state == "Enabled"
    assert world.secrets.get("KMSKeyID") == world.old_key


def test_a_rollback_that_fails_too_says_what_is_left(world: World) -> None:
    enclave = launches(world, {1: BROKEN, 2: "the old enclave did not become ready"})
    _, progress = migrate(world.service(enclave), {"app_dir": str(world.new_dir)})
    assert progress["status"] == "failed"
    assert progress["msg"] == (
        f"step 8 failed: {BROKEN}; the rollback to the previous image failed too: the old "
        "enclave did not become ready"
    )
    # What the old enclave needs is in place for a manual restart.
    assert world.secrets.get("KMSKeyID") == world.old_key
    assert read_image_override(world.config) is None


def test_a_supervisor_crash_after_step_7_still_rolls_back(world: World) -> None:
    migrate(world.service(world.enclave(), after_step=crash_at(7)), {"app_dir": str(world.new_dir)})
    stored = read_checkpoint(world.secrets)
    assert stored is not None and stored.step == 7
    assert world.secrets.get("KMSKeyID") == stored.new_key_id
    enclave = launches(world, {1: BROKEN})
    _, progress = migrate(world.service(enclave), {"app_dir": str(world.new_dir)})
    assert progress["status"] == "rolled_back"
    old = enclave.booted[-1]
    assert old.boot_error is None and old.kms_key_id == world.old_key
    assert old.static_env == world.old.static_env


def test_a_resumed_step_7_keeps_the_copies_taken_before_the_first_overwrite(
    world: World,
) -> None:
    secrets = world.secrets
    originals = {name: secrets.get(name) for name in live_params(world.config)}
    save_for_rollback(world.config, secrets)
    # Step 7 died after overwriting the first ciphertext; it runs again.
    first = live_params(world.config)[0]
    secrets.put(first, "bmV3")
    save_for_rollback(world.config, secrets)
    saved = {name: secrets.get(f"{ROLLBACK_PREFIX}{name}") for name in originals}
    assert saved == originals


def test_a_stopping_supervisor_does_not_roll_back(world: World) -> None:
    """Step 8 interrupted by a shutdown is resumed, not undone: the image did not fail."""
    kms, secrets = world.backends()
    enclave = launches(world, {1: "the supervisor is stopping while waiting"})
    runner = MigrationRunner(world.config, kms=kms, secrets=secrets, enclave=enclave)
    runner._stopping.set()  # noqa: SLF001 - what MigrationService.close does
    target = measure_new_image(world.config, app_dir=world.new_dir, plugins=world.plugins)
    checkpoint = Checkpoint.new(world.config, target, app_dir=str(world.new_dir), eif=None)
    with pytest.raises(EnclaveError, match="stopping"):
        for step in range(1, 9):
            runner._steps[step](checkpoint)  # noqa: SLF001
    assert enclave.restarts == 1
    assert secrets.get("KMSKeyID") == checkpoint.new_key_id  # not rolled back


# ------------------------------------------------------------------ the kept image


def test_a_kept_eif_is_put_back_byte_for_byte(tmp_path: Path, world: World) -> None:
    eif = world.config.resolve(world.config.enclave.eif)
    eif.parent.mkdir(parents=True, exist_ok=True)
    eif.write_bytes(b"old image")
    checkpoint = a_checkpoint(world, eif=str(tmp_path / "new.eif"))
    backup = ImageBackup(world.config, checkpoint)
    backup.keep()
    eif.write_bytes(b"new image")
    backup.keep()  # a resumed step 8: the first copy stays
    backup.restore()
    assert eif.read_bytes() == b"old image" and not backup.path.exists()


def test_a_development_image_without_an_override_is_put_back_as_none(world: World) -> None:
    checkpoint = a_checkpoint(world, eif=None)
    backup = ImageBackup(world.config, checkpoint)
    assert not image_path(world.config).exists()
    backup.keep()
    image_path(world.config).write_text('{"app_dir": "/x", "pcr0": "00"}')
    backup.restore()
    assert not image_path(world.config).exists()


def test_restoring_an_image_that_was_never_kept_is_an_error(world: World) -> None:
    backup = ImageBackup(world.config, a_checkpoint(world, eif=None))
    with pytest.raises(EnclaveError, match="the previous image was not kept"):
        backup.restore()


def a_checkpoint(world: World, *, eif: str | None) -> Checkpoint:
    return Checkpoint.new(world.config, "ab" * 48, app_dir=None if eif else "/x", eif=eif)


# ------------------------------------------------------------------ when step 8 gives up


class Watchdog:
    """What SupervisorEnclave reads of the watchdog: ``last_exit``."""

    def __init__(self) -> None:
        self.last_exit: Any = None


def waiting(make_config: Callable[..., Config], probes: list[Probe], watchdog: Watchdog) -> Any:
    """A SupervisorEnclave whose health probes answer ``probes`` in turn (the last one stays)."""
    answers = iter(probes)
    last: list[Probe] = []

    def probe() -> Probe:
        last[:] = [next(answers, last[0] if last else probes[-1])]
        return last[0]

    return SupervisorEnclave(
        make_config(),
        None,  # type: ignore[arg-type]
        watchdog,  # type: ignore[arg-type]
        probe,
        asyncio.new_event_loop(),
        ready_timeout_s=60.0,
    )


def test_a_failed_boot_stage_gives_up_at_once(make_config: Callable[..., Config]) -> None:
    failed = Probe(False, "degraded", "boot stage kms_key failed: KMS key k is locked to PCR0 …")
    enclave = waiting(
        make_config, [Probe(False, "initializing", "stage kms_key"), failed], Watchdog()
    )
    # It says why at once; waiting out the timeout would say "did not become ready within".
    with pytest.raises(EnclaveError, match="the new enclave failed: boot stage kms_key failed"):
        enclave.wait_ready("the new enclave", give_up_on_failure=True)
    # Without give_up_on_failure (the old enclave at step 5), it waits: it may be restarted.
    enclave = waiting(make_config, [failed, Probe(True, "ready")], Watchdog())
    enclave.wait_ready("the old enclave")


def test_an_enclave_the_watchdog_saw_end_gives_up(make_config: Callable[..., Config]) -> None:
    watchdog = Watchdog()
    restarting = Probe(False, "degraded", "app exited with code 1; restarting in 0.5s")
    enclave = waiting(make_config, [restarting], watchdog)
    enclave._exit_before = watchdog.last_exit  # noqa: SLF001 - what restart() records

    def the_watchdog_restarts_it() -> None:
        time.sleep(0.3)
        watchdog.last_exit = ExitInfo(3, None, [], "2026-01-01T00:00:00Z", "runtime exited (3)")

    threading.Thread(target=the_watchdog_restarts_it).start()
    with pytest.raises(EnclaveError, match=r"the new enclave failed: runtime exited \(3\)"):
        enclave.wait_ready("the new enclave", give_up_on_failure=True)


def test_an_app_that_comes_up_after_a_restart_is_ready(make_config: Callable[..., Config]) -> None:
    restarting = Probe(False, "degraded", "app exited with code 1; restarting in 0.5s")
    enclave = waiting(make_config, [restarting, restarting, Probe(True, "ready")], Watchdog())
    enclave.wait_ready("the new enclave", give_up_on_failure=True)


def test_a_resumed_step_8_keeps_the_image_that_ran_before(world: World, tmp_path: Path) -> None:
    """A crash in step 8 after the new image was installed: the rerun still knows (from the kept
    copy) which snapshot ran before, and prunes everything else."""
    _, first = migrate(world.service(launches(world, {})), {"app_dir": str(world.new_dir)})
    running = read_image_override(world.config)
    assert first["status"] == "done" and running is not None
    v3 = tmp_path / "app-v3"
    v3.mkdir()
    (v3 / "app.py").write_text("print('version 3')\n")
    kms, secrets = world.backends()
    enclave = launches(world, {})
    runner = MigrationRunner(world.config, kms=kms, secrets=secrets, enclave=enclave)
    service = world.service(enclave)
    checkpoint = service._plan({"app_dir": str(v3), "eif": None, "pcr0": None})  # noqa: SLF001
    for step in range(1, 8):
        runner._steps[step](checkpoint)  # noqa: SLF001
    ImageBackup(world.config, checkpoint).keep()
    runner._install_image(checkpoint)  # noqa: SLF001 - and the supervisor dies here
    runner.replace_image(checkpoint)  # the rerun
    images = {p.name for p in images_dir(world.config).iterdir()}
    assert images == {Path(running["app_dir"]).name, Path(str(checkpoint.app_dir)).name}
