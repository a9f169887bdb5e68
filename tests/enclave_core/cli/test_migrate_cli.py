"""`enclave migrate` and `enclave key schedule-deletion` against a stand-in management API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from enclave_core.config import Config
from tests.doubles.fake_supervisor import TOKEN, FakeSupervisor
from tests.helpers import cli


def step(k: int) -> dict[str, Any]:
    return {"step": k, "msg": f"step {k} message"}


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enclave_core.cli.migrate.POLL_S", 0.01)


START = {"id": "m-1", "step": 0, "total": 9, "status": "running", "msg": "migration m-1 started"}


def test_migrate_prints_each_step_once_until_done(
    capsys: pytest.CaptureFixture[str],
    supervised_config: Config,
    fake_supervisor: FakeSupervisor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_supervisor.answers[("POST", "/v1/migrate")] = (202, {**START, "steps": []})
    fake_supervisor.progress = [
        {**START, "step": 3, "steps": [step(1), step(2), step(3)]},
        {**START, "step": 3, "steps": [step(1), step(2), step(3)]},
        {**START, "step": 9, "status": "done", "steps": [step(k) for k in range(1, 10)]},
    ]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v2").mkdir()
    code, out, err = cli(capsys, "migrate", "--app-dir", "v2", "-c", str(supervised_config.path))
    assert (code, err) == (0, "")
    assert out.splitlines() == ["migration m-1 started"] + [
        f"[{k}/9] step {k} message" for k in range(1, 10)
    ]
    method, path, authorization, body = fake_supervisor.requests[0]
    assert (method, path, authorization) == ("POST", "/v1/migrate", f"Bearer {TOKEN}")
    assert body == {"app_dir": str(tmp_path / "v2")}  # made absolute for the supervisor


def test_migrate_json_prints_the_final_progress(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    final = {**START, "step": 9, "status": "done", "msg": "done", "steps": [step(9)]}
    fake_supervisor.answers[("POST", "/v1/migrate")] = (202, {**START, "steps": []})
    fake_supervisor.progress = [final]
    pcr0 = "ab" * 48
    code, out, _ = cli(
        capsys, "migrate", "--eif", "/images/new.eif", "--pcr0", pcr0, "-f", "json",
        "-c", str(supervised_config.path),
    )  # fmt: skip
    assert code == 0 and json.loads(out) == final
    assert fake_supervisor.requests[0][3] == {"eif": "/images/new.eif", "pcr0": pcr0}


def test_a_failed_migration_exits_1_with_its_reason(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    fake_supervisor.answers[("POST", "/v1/migrate")] = (202, {**START, "steps": []})
    reason = "step 5 failed: the old enclave refused export-key (403): policy can change"
    fake_supervisor.progress = [
        {**START, "step": 4, "status": "failed", "msg": reason, "steps": [step(4)]}
    ]
    code, out, err = cli(capsys, "migrate", "--app-dir", "/new", "-c", str(supervised_config.path))
    assert code == 1
    assert out.splitlines()[-1] == "[4/9] step 4 message"
    assert err == f"ERROR: migration failed: {reason}\n"


def test_a_finished_migration_says_so(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    done = {**START, "step": 9, "status": "done", "msg": "migration already complete"}
    fake_supervisor.answers[("POST", "/v1/migrate")] = (200, done)
    code, out, _ = cli(capsys, "migrate", "--app-dir", "/new", "-c", str(supervised_config.path))
    assert (code, out) == (0, "migration already complete\n")
    assert [r[1] for r in fake_supervisor.requests] == ["/v1/migrate"]  # nothing to follow


def test_refusals_are_one_error_line(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    for status, description in [
        (409, "a migration is already running (step 3/9)"),
        (400, "the target PCR0 abab… given with --pcr0 differs from the new image's measurement"),
    ]:
        body = {"title": "x", "description": description}
        fake_supervisor.answers[("POST", "/v1/migrate")] = (status, body)
        code, out, err = cli(
            capsys, "migrate", "--app-dir", "/new", "-c", str(supervised_config.path)
        )
        assert (code, out) == (1, "")
        assert description in err and err.startswith("ERROR: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("pcr0", "fragment"),
    [
        ("00" * 48, "--pcr0 is all zero: that is what every debug-mode enclave reports"),
        ("0x" + "00" * 48, "--pcr0 is all zero"),
        ("ab" * 47, "--pcr0 must be 96 hex digits"),
    ],
)
def test_a_debug_mode_or_malformed_target_pcr0_is_refused_before_asking(
    capsys: pytest.CaptureFixture[str],
    supervised_config: Config,
    fake_supervisor: FakeSupervisor,
    pcr0: str,
    fragment: str,
) -> None:
    code, out, err = cli(
        capsys, "migrate", "--app-dir", "/new", "--pcr0", pcr0, "-c", str(supervised_config.path)
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"ERROR: {fragment}") and len(err.splitlines()) == 1
    assert fake_supervisor.requests == []  # refused here, nothing sent


def test_migrate_needs_exactly_one_image(
    capsys: pytest.CaptureFixture[str], supervised_config: Config
) -> None:
    code, out, err = cli(capsys, "migrate", "-c", str(supervised_config.path))
    assert (code, out) == (2, "")
    assert "one of the arguments --eif --app-dir is required" in err


def test_schedule_key_deletion(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    answer = {"key_id": "k-old", "state": "PendingDeletion", "deletion_date": "2030-01-11"}
    fake_supervisor.answers[("POST", "/v1/schedule-key-deletion")] = (200, answer)
    code, out, _ = cli(
        capsys,
        "key",
        "schedule-deletion",
        "--days",
        "10",
        "-f",
        "json",
        "-c",
        str(supervised_config.path),
    )
    assert code == 0 and json.loads(out) == answer
    assert fake_supervisor.requests[-1][2:] == (f"Bearer {TOKEN}", {"days": 10})
    code, _, err = cli(
        capsys, "key", "schedule-deletion", "--days", "3", "-c", str(supervised_config.path)
    )
    assert (code, err) == (1, "ERROR: --days must be from 7 to 30, not 3\n")
    assert len(fake_supervisor.requests) == 1
    in_use = "key k-1 is the key in use (KMSKeyID); not deleting it"
    fake_supervisor.answers[("POST", "/v1/schedule-key-deletion")] = (409, {"description": in_use})
    code, _, err = cli(capsys, "key", "schedule-deletion", "-c", str(supervised_config.path))
    assert (code, err) == (1, f"ERROR: {in_use}\n")
    assert fake_supervisor.requests[-1][3] == {"days": 7}
