"""The management token file."""

from __future__ import annotations

import stat
from pathlib import Path

from enclave_core.supervisor.token import ensure_token, read_token, token_path


def test_created_once_with_tight_modes_and_reused(tmp_path: Path) -> None:
    state = tmp_path / ".enclave"
    assert read_token(state) is None
    token = ensure_token(state)
    assert len(token) == 64 and int(token, 16) >= 0
    path = token_path(state)
    assert path == state / "supervisor" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().strip() == token
    path.chmod(0o644)
    assert ensure_token(state) == token  # reused ...
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # ... and tightened
    assert read_token(state) == token
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary left behind


def test_an_invalid_token_is_replaced(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("not-a-token\n")
    assert read_token(tmp_path) is None
    token = ensure_token(tmp_path)
    assert read_token(tmp_path) == token and len(token) == 64
    assert ensure_token(tmp_path) == token
    assert ensure_token(tmp_path / "other") != token  # random, per state directory
