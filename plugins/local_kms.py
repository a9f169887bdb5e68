"""``local`` KMS: symmetric keys in the state directory, for development and tests.

Options (``kms.options``):

- ``path``: the key directory, relative to enclave.yaml's folder; default ``.enclave/kms``.

Each key is ``<key id>.json`` holding its id (a UUID4), ARN
(``arn:aws:kms:{region}:000000000000:key/{id}``), state (``Enabled``, ``Disabled``,
``PendingDeletion``), deletion date, description, key policy and its 32-byte key material, which
is stored AES-256-GCM-encrypted under the directory's ``master.key`` (mode 0600) with the key id
as associated data, so no raw key material sits in the JSON and no key file can borrow another's.

Ciphertext blob (version 1)::

    0x01 | len(key id) (1 byte) | key id (ASCII) | nonce (12 bytes) | AES-256-GCM ciphertext + tag

The associated data is the blob's header (version and key id) followed by the encryption context
serialised as sorted, compact JSON, so a blob only decrypts under the key that made it and with
exactly the context it was made with. Key policies are stored and validated (``Version`` and a
``Statement`` list) but not evaluated yet; the ``Recipient`` parameter is accepted and refused.
Changes to a key take an exclusive ``flock`` on ``.lock`` and files are replaced atomically.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from loguru import logger
from marshmallow import Schema, fields

from enclave_core import hookimpl
from enclave_core.errors import (
    BackendError,
    CryptoError,
    InvalidKeyState,
    NotFound,
    ValidationError,
)
from enclave_core.interfaces import BackendContext, KeyInfo, KmsResult, Recipient
from enclave_core.registry import BackendRegistry

ACCOUNT = "000000000000"
BLOB_VERSION = 1
NONCE_BYTES = 12
MAX_PLAINTEXT = 4096  # the AWS KMS Encrypt limit
MATERIAL_AAD = b"enclave-local-kms/key-material/v1:"


def default_policy(account: str = ACCOUNT) -> dict[str, Any]:
    """The policy AWS gives a key created without one: the account root may do everything."""
    return {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


def _check_policy(policy: Any) -> dict[str, Any]:
    if not isinstance(policy, dict) or not isinstance(policy.get("Version"), str):
        raise ValidationError("local KMS: a key policy needs a 'Version' string")
    statements = policy.get("Statement")
    if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
        raise ValidationError("local KMS: a key policy needs a 'Statement' list of objects")
    try:
        copy: dict[str, Any] = json.loads(json.dumps(policy))  # a private, JSON-clean copy
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"local KMS: the key policy is not JSON: {exc}") from None
    return copy


def _context_bytes(context: dict[str, str] | None) -> bytes:
    context = context or {}
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise ValidationError("local KMS: the encryption context must map strings to strings")
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalKms:
    """Keys on disk with encryption contexts, key states and stored policies."""

    name: ClassVar[str] = "local"

    class Options(Schema):
        """``kms.options`` of the local backend."""

        path = fields.String(load_default=".enclave/kms")

    def __init__(self, directory: Path, *, region: str = "us-east-1") -> None:
        self.directory = Path(directory)
        self.region = region

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> LocalKms:
        """Build the backend on ``options["path"]`` resolved against enclave.yaml's folder."""
        return cls(context.resolve(options["path"]), region=context.region)

    # ------------------------------------------------------------------ storage of keys

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _master(self) -> AESGCM:
        path = self.directory / "master.key"
        if not path.exists():
            with self._locked():
                if not path.exists():
                    _write_atomic(path, AESGCM.generate_key(bit_length=256))
        key = path.read_bytes()
        if len(key) != 32:
            raise BackendError(f"local KMS: {path} is corrupted (expected 32 bytes)")
        return AESGCM(key)

    def _key_id(self, key_id: str) -> str:
        """Accept a key id or a key ARN; return the key id."""
        kid = key_id.rsplit(":key/", 1)[-1] if key_id.startswith("arn:") else key_id
        try:
            if str(uuid.UUID(kid)) == kid:
                return kid
        except ValueError:
            pass
        raise NotFound(f"local KMS: key {key_id!r} does not exist (not a key id or key ARN)")

    def _load(self, key_id: str) -> dict[str, Any]:
        kid = self._key_id(key_id)
        try:
            record: dict[str, Any] = json.loads((self.directory / f"{kid}.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(f"local KMS: key {kid} does not exist") from None
        except (OSError, ValueError) as exc:
            raise BackendError(f"local KMS: key file of {kid} is unreadable: {exc}") from None
        deletion = record.get("deletion_date")
        if record["state"] == "PendingDeletion" and deletion and deletion <= _now():
            (self.directory / f"{kid}.json").unlink(missing_ok=True)  # its waiting period is over
            raise NotFound(f"local KMS: key {kid} was deleted on {deletion}")
        return record

    def _save(self, record: dict[str, Any]) -> None:
        data = json.dumps(record, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        _write_atomic(self.directory / f"{record['key_id']}.json", data)

    def _usable(self, key_id: str) -> dict[str, Any]:
        record = self._load(key_id)
        if record["state"] != "Enabled":
            raise InvalidKeyState(f"local KMS: key {record['key_id']} is {record['state']}")
        return record

    def _material(self, record: dict[str, Any]) -> AESGCM:
        sealed = base64.b64decode(record["material"])
        aad = MATERIAL_AAD + record["key_id"].encode("ascii")
        try:
            material = self._master().decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise BackendError(
                f"local KMS: key material of {record['key_id']} does not open with master.key"
            ) from None
        return AESGCM(material)

    @staticmethod
    def _info(record: dict[str, Any]) -> KeyInfo:
        return KeyInfo(
            key_id=record["key_id"],
            arn=record["arn"],
            state=record["state"],
            description=record.get("description", ""),
            deletion_date=record.get("deletion_date"),
        )

    def _update(self, key_id: str, **changes: Any) -> KeyInfo:
        with self._locked():
            record = self._load(key_id)
            record.update(changes)
            self._save(record)
        return self._info(record)

    def key_ids(self) -> list[str]:
        """Return the ids of every key in the directory, sorted."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    # ------------------------------------------------------------------ key management

    def create_key(self, *, description: str = "", policy: dict[str, Any] | None = None) -> KeyInfo:
        """Create an enabled key with fresh material and ``policy`` (default: account root)."""
        stored_policy = _check_policy(policy if policy is not None else default_policy())
        kid = str(uuid.uuid4())
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._master().encrypt(
            nonce, AESGCM.generate_key(bit_length=256), MATERIAL_AAD + kid.encode("ascii")
        )
        record = {
            "key_id": kid,
            "arn": f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{kid}",
            "state": "Enabled",
            "description": description,
            "creation_date": _now(),
            "deletion_date": None,
            "policy": stored_policy,
            "material": base64.b64encode(nonce + sealed).decode("ascii"),
        }
        with self._locked():
            self._save(record)
        logger.bind(key_id=kid).info("local KMS key created")
        return self._info(record)

    def describe_key(self, key_id: str) -> KeyInfo:
        """Return the key's metadata; NotFound if it does not exist."""
        return self._info(self._load(key_id))

    def get_key_policy(self, key_id: str) -> dict[str, Any]:
        """Return the key policy document."""
        policy: dict[str, Any] = self._load(key_id)["policy"]
        return policy

    def put_key_policy(
        self, key_id: str, policy: dict[str, Any], *, bypass_lockout_safety_check: bool = False
    ) -> None:
        """Replace the key policy (the lockout safety check is not simulated)."""
        info = self._update(key_id, policy=_check_policy(policy))
        logger.bind(key_id=info.key_id).info("local KMS key policy replaced")

    def enable_key(self, key_id: str) -> KeyInfo:
        """Enable a disabled key."""
        if self._load(key_id)["state"] == "PendingDeletion":
            raise InvalidKeyState(f"local KMS: key {self._key_id(key_id)} is PendingDeletion")
        return self._update(key_id, state="Enabled")

    def disable_key(self, key_id: str) -> KeyInfo:
        """Disable a key: it can no longer encrypt or decrypt."""
        if self._load(key_id)["state"] == "PendingDeletion":
            raise InvalidKeyState(f"local KMS: key {self._key_id(key_id)} is PendingDeletion")
        return self._update(key_id, state="Disabled")

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 7) -> KeyInfo:
        """Schedule deletion after 7..30 days; the key is unusable from now on."""
        if isinstance(pending_window_days, bool) or not isinstance(pending_window_days, int):
            raise ValidationError("local KMS: the pending window must be a whole number of days")
        if not 7 <= pending_window_days <= 30:
            raise ValidationError(
                f"local KMS: the pending window must be 7..30 days, not {pending_window_days}"
            )
        with self._locked():
            record = self._load(key_id)
            if record["state"] == "PendingDeletion":
                raise InvalidKeyState(
                    f"local KMS: key {record['key_id']} is PendingDeletion "
                    f"(deletion date {record['deletion_date']})"
                )
            when = datetime.now(UTC) + timedelta(days=pending_window_days)
            record.update(state="PendingDeletion", deletion_date=when.isoformat(timespec="seconds"))
            self._save(record)
        logger.bind(key_id=record["key_id"]).info(
            "local KMS key deletion scheduled", deletion_date=record["deletion_date"]
        )
        return self._info(record)

    def cancel_key_deletion(self, key_id: str) -> KeyInfo:
        """Cancel a scheduled deletion; the key becomes Disabled, as in AWS."""
        if self._load(key_id)["state"] != "PendingDeletion":
            raise InvalidKeyState(f"local KMS: key {self._key_id(key_id)} is not PendingDeletion")
        return self._update(key_id, state="Disabled", deletion_date=None)

    # ------------------------------------------------------------------ cryptography

    @staticmethod
    def _no_recipient(recipient: Recipient | None) -> None:
        if recipient is not None:
            raise BackendError("Recipient is not supported by the local KMS yet")

    def encrypt(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt 1..4096 bytes under the key, binding ``context``; return the ciphertext blob."""
        if not 1 <= len(plaintext) <= MAX_PLAINTEXT:
            raise ValidationError(f"local KMS: plaintext must be 1..{MAX_PLAINTEXT} bytes")
        record = self._usable(key_id)
        kid: str = record["key_id"]
        header = bytes([BLOB_VERSION, len(kid)]) + kid.encode("ascii")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._material(record).encrypt(
            nonce, bytes(plaintext), header + _context_bytes(context)
        )
        return header + nonce + sealed

    def decrypt(
        self,
        key_id: str,
        ciphertext: bytes,
        context: dict[str, str],
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Decrypt a blob made by :meth:`encrypt`; ``context`` must equal the one used then.

        The key comes from the blob; a non-empty ``key_id`` must name that same key.
        """
        self._no_recipient(recipient)
        blob = bytes(ciphertext)
        if len(blob) < 2 or blob[0] != BLOB_VERSION or len(blob) < 2 + blob[1] + NONCE_BYTES + 16:
            raise CryptoError("local KMS decrypt: the ciphertext blob is malformed")
        end = 2 + blob[1]
        header, blob_key = blob[:end], blob[2:end].decode("ascii", "replace")
        if key_id and self._key_id(key_id) != blob_key:
            raise CryptoError(
                f"local KMS decrypt: the ciphertext was made under key {blob_key}, not {key_id}"
            )
        record = self._usable(blob_key)
        try:
            plaintext = self._material(record).decrypt(
                blob[end : end + NONCE_BYTES],
                blob[end + NONCE_BYTES :],
                header + _context_bytes(context),
            )
        except InvalidTag:
            raise CryptoError(
                f"local KMS decrypt with key {blob_key}: the ciphertext was altered or the "
                "encryption context does not match"
            ) from None
        return KmsResult(key_id=record["arn"], plaintext=plaintext)

    def generate_data_key(
        self,
        key_id: str,
        context: dict[str, str],
        *,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Return 1..1024 random bytes and their ciphertext blob under the key."""
        self._no_recipient(recipient)
        if not 1 <= number_of_bytes <= 1024:
            raise ValidationError("local KMS: number_of_bytes must be 1..1024")
        record = self._usable(key_id)
        plaintext = os.urandom(number_of_bytes)
        blob = self.encrypt(record["key_id"], plaintext, context)
        return KmsResult(key_id=record["arn"], plaintext=plaintext, ciphertext_blob=blob)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@hookimpl
def enclave_register_kms(registry: BackendRegistry[Any]) -> None:
    """Register the ``local`` KMS backend."""
    registry.add(LocalKms)
