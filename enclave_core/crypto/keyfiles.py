"""KMS-style symmetric keys kept as files: the storage under the ``local`` KMS backend.

A :class:`KeyDirectory` holds one ``<key id>.json`` record per key (state, policy, origin,
grants...) with its key material sealed under the directory's ``master.key``, and makes and opens
version-1 ciphertext blobs bound to their key and encryption context. Writers hold a ``flock``.
Who may do what is decided by the backend, not here. The record and blob layouts:
docs/architecture.md, "KMS: the local KMS and the aws backend".
"""

from __future__ import annotations

import base64
import fcntl
import hmac
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_core.errors import (
    BackendError,
    CryptoError,
    InvalidKeyState,
    NotFound,
    ValidationError,
)
from enclave_core.plugin.interfaces import GrantInfo, KeyInfo

BLOB_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
MATERIAL_AAD = b"enclave-local-kms/key-material/v1:"
WHO = "local KMS"
ORIGINS = ("AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")
_MULTI_REGION_ID = re.compile(r"mrk-[0-9a-f]{32}")


def now_iso() -> str:
    """The current UTC time as KMS-style ISO 8601 (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def context_bytes(context: dict[str, str] | None) -> bytes:
    """An encryption context as sorted compact JSON; ValidationError unless it maps str to str."""
    context = context or {}
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise ValidationError(f"{WHO}: the encryption context must map strings to strings")
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


class KeyDirectory:
    """Key records and their sealed material in one directory (see the module docstring)."""

    def __init__(self, directory: Path, *, region: str, account: str) -> None:
        self.directory = Path(directory)
        self.region = region
        self.account = account

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's exclusive lock (across processes) for a read-modify-write."""
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
            with self.locked():
                if not path.exists():
                    _write_atomic(path, AESGCM.generate_key(bit_length=256))
        key = path.read_bytes()
        if len(key) != 32:
            raise BackendError(f"{WHO}: {path} is corrupted (expected 32 bytes)")
        return AESGCM(key)

    @staticmethod
    def key_id(key_id: str) -> str:
        """Accept a key id or a key ARN; return the key id (NotFound for anything else)."""
        kid = key_id.rsplit(":key/", 1)[-1] if key_id.startswith("arn:") else key_id
        if _MULTI_REGION_ID.fullmatch(kid):
            return kid
        try:
            if str(uuid.UUID(kid)) == kid:
                return kid
        except ValueError:
            pass
        raise NotFound(f"{WHO}: key {key_id!r} does not exist (not a key id or key ARN)")

    def load(self, key_id: str) -> dict[str, Any]:
        """Read a key's record; NotFound if absent or past its deletion date."""
        kid = self.key_id(key_id)
        try:
            record: dict[str, Any] = json.loads((self.directory / f"{kid}.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(f"{WHO}: key {kid} does not exist") from None
        except (OSError, ValueError) as exc:
            raise BackendError(f"{WHO}: key file of {kid} is unreadable: {exc}") from None
        deletion = record.get("deletion_date")
        if record["state"] == "PendingDeletion" and deletion and deletion <= now_iso():
            (self.directory / f"{kid}.json").unlink(missing_ok=True)  # its waiting period is over
            raise NotFound(f"{WHO}: key {kid} was deleted on {deletion}")
        return record

    def save(self, record: dict[str, Any]) -> None:
        """Write a record atomically (call under :meth:`locked`)."""
        data = json.dumps(record, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        _write_atomic(self.directory / f"{record['key_id']}.json", data)

    def _sealed(self, kid: str, material: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._master().encrypt(nonce, material, MATERIAL_AAD + kid.encode("ascii"))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def new_record(
        self,
        *,
        description: str,
        policy: dict[str, Any],
        origin: str = "AWS_KMS",
        multi_region: bool = False,
        custom_key_store_id: str | None = None,
    ) -> dict[str, Any]:
        """A fresh key (not saved yet): enabled with new sealed material, or, for origin
        ``EXTERNAL``, ``PendingImport`` with none until :meth:`import_material`."""
        if origin not in ORIGINS:
            raise ValidationError(f"{WHO}: unknown key origin {origin!r}")
        kid = "mrk-" + uuid.uuid4().hex if multi_region else str(uuid.uuid4())
        external = origin == "EXTERNAL"
        self._master()  # made now, outside any lock: an import seals under the lock later
        material = None if external else self._sealed(kid, AESGCM.generate_key(bit_length=256))
        return {
            "key_id": kid,
            "arn": f"arn:aws:kms:{self.region}:{self.account}:key/{kid}",
            "state": "PendingImport" if external else "Enabled",
            "description": description,
            "creation_date": now_iso(),
            "deletion_date": None,
            "policy": policy,
            "origin": origin,
            "multi_region": multi_region,
            "custom_key_store_id": custom_key_store_id,
            "grants": [],
            "material": material,
        }

    def import_material(self, record: dict[str, Any], material: bytes) -> None:
        """Seal ``material`` (32 bytes) as the record's key material (call under :meth:`locked`)."""
        if len(material) != 32:
            raise ValidationError(f"{WHO}: key material for {record['key_id']} must be 32 bytes")
        record["material"] = self._sealed(record["key_id"], bytes(material))

    def has_material(self, record: dict[str, Any], material: bytes) -> bool:
        """Whether the record's key material is exactly ``material`` (constant time)."""
        if not record.get("material"):
            return False
        return hmac.compare_digest(self._open_material(record), bytes(material))

    def key_ids(self) -> list[str]:
        """The ids of every key in the directory, sorted."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    @staticmethod
    def info(record: dict[str, Any]) -> KeyInfo:
        """A record's public metadata (older records: AWS_KMS, single-Region, no store)."""
        return KeyInfo(
            key_id=record["key_id"],
            arn=record["arn"],
            state=record["state"],
            description=record.get("description", ""),
            deletion_date=record.get("deletion_date"),
            origin=record.get("origin") or "AWS_KMS",
            multi_region=bool(record.get("multi_region", False)),
            custom_key_store_id=record.get("custom_key_store_id"),
            key_spec="SYMMETRIC_DEFAULT",
            key_usage="ENCRYPT_DECRYPT",
            key_manager="CUSTOMER",
        )

    @staticmethod
    def grants(record: dict[str, Any]) -> list[GrantInfo]:
        """The grants stored in a record (none in records older than grants)."""
        found = []
        for grant in record.get("grants") or []:
            constraints = grant.get("constraints") or {}
            found.append(
                GrantInfo(
                    grant_id=grant["grant_id"],
                    key_id=record["arn"],
                    grantee_principal=grant["grantee_principal"],
                    operations=tuple(grant["operations"]),
                    retiring_principal=grant.get("retiring_principal"),
                    name=grant.get("name", ""),
                    encryption_context_subset=constraints.get("EncryptionContextSubset"),
                    encryption_context_equals=constraints.get("EncryptionContextEquals"),
                )
            )
        return found

    def _open_material(self, record: dict[str, Any]) -> bytes:
        if not record.get("material"):
            raise InvalidKeyState(f"{WHO}: key {record['key_id']} has no key material")
        sealed = base64.b64decode(record["material"])
        aad = MATERIAL_AAD + record["key_id"].encode("ascii")
        try:
            return self._master().decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise BackendError(
                f"{WHO}: key material of {record['key_id']} does not open with master.key"
            ) from None

    def _material(self, record: dict[str, Any]) -> AESGCM:
        return AESGCM(self._open_material(record))

    def seal(self, record: dict[str, Any], plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt under the record's key, binding ``context``; return the ciphertext blob."""
        kid: str = record["key_id"]
        header = bytes([BLOB_VERSION, len(kid)]) + kid.encode("ascii")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._material(record).encrypt(
            nonce, bytes(plaintext), header + context_bytes(context)
        )
        return header + nonce + sealed

    def blob_key(self, blob: bytes, key_id: str = "") -> str:
        """The key id a blob names; CryptoError if malformed or not made under ``key_id``."""
        if (
            len(blob) < 2
            or blob[0] != BLOB_VERSION
            or len(blob) < 2 + blob[1] + NONCE_BYTES + TAG_BYTES
        ):
            raise CryptoError(f"{WHO} decrypt: the ciphertext blob is malformed")
        kid = blob[2 : 2 + blob[1]].decode("ascii", "replace")
        if key_id and self.key_id(key_id) != kid:
            raise CryptoError(
                f"{WHO} decrypt: the ciphertext was made under key {kid}, not {key_id}"
            )
        return kid

    def unseal(self, record: dict[str, Any], blob: bytes, context: dict[str, str]) -> bytes:
        """Decrypt a blob of the record's key with exactly ``context``; CryptoError otherwise."""
        end = 2 + blob[1]
        try:
            return self._material(record).decrypt(
                blob[end : end + NONCE_BYTES],
                blob[end + NONCE_BYTES :],
                blob[:end] + context_bytes(context),
            )
        except InvalidTag:
            raise CryptoError(
                f"{WHO} decrypt with key {record['key_id']}: the ciphertext was altered or the "
                "encryption context does not match"
            ) from None
