"""The supervisor's management token: 32 random bytes, hex, in ``.enclave/supervisor/token`` (0600).

Mutating management API calls need ``Authorization: Bearer <token>``. The token is created once
and reused, so a restarted supervisor keeps working with an already-running CLI session.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

TOKEN_RE = re.compile(r"^[0-9a-f]{64}$")


def token_path(state_dir: Path) -> Path:
    """Where the token lives for a state directory."""
    return state_dir / "supervisor" / "token"


def read_token(state_dir: Path) -> str | None:
    """Return the token, or None if the file is missing or does not hold a valid token."""
    try:
        text = token_path(state_dir).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if TOKEN_RE.match(text) else None


def ensure_token(state_dir: Path) -> str:
    """Return the token, creating it (directory 0700, file 0600) if missing or invalid."""
    path = token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    existing = read_token(state_dir)
    if existing is not None:
        os.chmod(path, 0o600)  # tighten a file someone loosened
        return existing
    token = secrets.token_hex(32)
    tmp = path.with_name(f".token.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # atomic: a reader never sees a half-written token
    return token
