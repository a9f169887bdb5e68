"""What `enclave dev --watch` prints when a migration ends: which version serves, and why.

The supervisor is replaced by a client that answers POST and GET /v1/migrate as the real one does
for each outcome (the real path runs in tests/e2e/test_edit_loop_e2e.py).
"""

from __future__ import annotations

from typing import Any

from enclave_core.cli.devwatch import DevWatcher
from enclave_core.config import Config
from enclave_core.errors import EnclaveError

PCR0 = "ab" * 48


class Supervisor:
    """POST /v1/migrate answers 202; GET /v1/migrate answers ``final`` (or raises ``error``)."""

    def __init__(self, final: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.final, self.error = final, error
        self.asked: list[str | None] = []

    def migrate(self, app_dir: str | None = None, **_: Any) -> dict[str, Any]:
        self.asked.append(app_dir)
        if self.error is not None:
            raise EnclaveError(self.error)
        return {"id": "m1", "status": "running", "step": 0, "total": 9, "steps": []}

    def migration_progress(self) -> dict[str, Any]:
        assert self.final is not None
        return {"id": "m1", "total": 9, "target_pcr0": PCR0, **self.final}


def run(config: Config, supervisor: Supervisor) -> tuple[bool, list[str]]:
    lines: list[str] = []
    watcher = DevWatcher(
        config,
        config.app_dir,
        lines.append,
        migrate_now=False,
        watch=False,
        client_factory=lambda: supervisor,
    )
    return watcher.migrate(0.0), lines


def steps(*numbers: int) -> list[dict[str, Any]]:
    return [{"step": k, "msg": f"step {k} done"} for k in numbers]


def test_a_migration_that_serves_says_the_new_pcr0(config: Config) -> None:
    supervisor = Supervisor({"status": "done", "step": 9, "steps": steps(*range(1, 10))})
    ok, lines = run(config, supervisor)
    assert ok and supervisor.asked == [str(config.app_dir)]
    assert lines[0] == f"migrating to the files of {config.app_dir}"
    assert lines[1:10] == [f"[{k}/9] step {k} done" for k in range(1, 10)]
    assert lines[10].startswith(f"new image serving: PCR0 {PCR0[:16]}… (")


def test_a_rolled_back_migration_says_the_previous_image_serves_again(config: Config) -> None:
    msg = (
        "step 8 failed: the new enclave failed: app exited with code 1; rolled back: the "
        "previous image serves again"
    )
    final = {"status": "rolled_back", "step": 7, "msg": msg, "steps": steps(*range(1, 8))}
    ok, lines = run(config, Supervisor(final))
    assert not ok
    assert lines[-1] == f"migration failed: {msg}"


def test_a_failure_before_the_switch_leaves_the_old_version_serving(config: Config) -> None:
    msg = "step 5 failed: the old enclave refused export-key (403): window closed"
    ok, lines = run(config, Supervisor({"status": "failed", "step": 4, "msg": msg, "steps": []}))
    assert not ok
    assert lines[-1] == f"migration failed: {msg}; the previous version keeps serving"


def test_a_failure_after_the_switch_does_not_claim_the_old_version_serves(config: Config) -> None:
    msg = "step 8 failed: ...; the rollback to the previous image failed too: it did not start"
    ok, lines = run(config, Supervisor({"status": "failed", "step": 7, "msg": msg, "steps": []}))
    assert not ok
    assert "keeps serving" not in lines[-1]
    assert lines[-1].startswith(f"migration failed: {msg}; the secrets already moved")


def test_a_refused_request_says_why(config: Config) -> None:
    ok, lines = run(config, Supervisor(error="a migration is already running (step 3/9)"))
    assert not ok
    assert lines[-1] == (
        "migration failed: a migration is already running (step 3/9); the previous version "
        "keeps serving"
    )
