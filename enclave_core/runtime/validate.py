"""Validation of the names the app API accepts: storage keys, secret names, env vars, PCRs.

Each check raises :class:`ValidationError` naming the rule that failed (never echoing a value
that could be secret), before anything reaches storage.
"""

from __future__ import annotations

import re

from enclave_core.config import ENV_VAR_RE
from enclave_core.errors import ValidationError

MAX_KEY_CHARS = 512
SECRETS_PREFIX = "secrets/"
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENV_VAR_RE = re.compile(ENV_VAR_RE)
#: Variables the runtime sets for the app itself; a dynamic secret may not shadow them.
RESERVED_ENV_VARS = frozenset({"PORT"})
RESERVED_ENV_PREFIX = "ENCLAVE_"
USER_PCRS = range(16, 32)


def check_storage_key(key: str) -> str:
    """Return ``key`` if it is a valid storage key, else raise ValidationError naming the rule."""
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        raise ValidationError(f"invalid storage key: must be 1 to {MAX_KEY_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValidationError("invalid storage key: control characters are not allowed")
    if not key.isprintable():
        raise ValidationError("invalid storage key: only printable characters are allowed")
    if key.startswith("/"):
        raise ValidationError("invalid storage key: must not start with '/'")
    if "\\" in key:
        raise ValidationError("invalid storage key: backslashes are not allowed")
    segments = key.split("/")
    if any(s in (".", "..") for s in segments):
        raise ValidationError("invalid storage key: '.' and '..' segments are not allowed")
    if any(s == "" for s in segments):
        raise ValidationError("invalid storage key: empty segments ('//' or a trailing '/')")
    if key.startswith(SECRETS_PREFIX) or key == SECRETS_PREFIX.rstrip("/"):
        raise ValidationError(
            f"invalid storage key: keys under '{SECRETS_PREFIX}' are reserved for dynamic secrets"
        )
    return key


def check_storage_prefix(prefix: str) -> str:
    """Return a list prefix if it is acceptable (bounded, printable, no leading '/')."""
    if len(prefix) > MAX_KEY_CHARS:
        raise ValidationError(f"invalid prefix: at most {MAX_KEY_CHARS} characters")
    if prefix and (not prefix.isprintable() or prefix.startswith("/") or "\\" in prefix):
        raise ValidationError("invalid prefix: printable, no leading '/', no backslashes")
    return prefix


def check_secret_name(name: str) -> str:
    """Return ``name`` if it is a valid dynamic secret name, else raise ValidationError."""
    # fullmatch: with match, '$' would also accept a trailing newline.
    if not SECRET_NAME_RE.fullmatch(name) or ".." in name:
        raise ValidationError(
            "invalid secret name: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ without '..'"
        )
    return name


def check_env_var(env_var: str) -> str:
    """Return ``env_var`` if it is a usable environment variable name for a dynamic secret."""
    if not _ENV_VAR_RE.fullmatch(env_var):
        raise ValidationError(f"invalid env_var: must match {ENV_VAR_RE}")
    if env_var in RESERVED_ENV_VARS or env_var.startswith(RESERVED_ENV_PREFIX):
        raise ValidationError(
            f"invalid env_var: {env_var} is set by the runtime (PORT and ENCLAVE_* are reserved)"
        )
    return env_var


def check_pcr(index: object) -> int:
    """Return ``index`` if it is a PCR the app may extend or lock (16..31)."""
    if not isinstance(index, int) or isinstance(index, bool) or index not in USER_PCRS:
        raise ValidationError("invalid pcr: must be an integer from 16 to 31")
    return index
