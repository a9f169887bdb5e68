"""Tiny in-memory doubles of the backend Protocols, for the runtime's unit tests.

They are real implementations (real AES-GCM in the KMS, real SHA-384 PCRs), only kept in memory.
``DoublesPlugin`` registers them under the name ``testmem``; instances are shared per state
directory, so a second boot in the same folder sees what the first one stored.

The KMS double behaves like the local KMS where the runtime can tell: key policies (with the
key's ARN as resource) and grants are evaluated with :mod:`enclave_core.kmspolicy.evaluation`, keys
describe themselves as single-Region ``AWS_KMS`` symmetric keys, and a Recipient gets a real CMS
envelope and no plaintext. The NSM double's attestation documents are real Nitro-format COSE_Sign1
documents signed by a development CA (:class:`enclave_core.crypto.devca.DevCa`) kept per state
directory, so verifiers accept them: its root is written to ``<state_dir>/dev-root.pem``, where the
simulated NSM writes it, while its private keys stay in a process-wide scratch folder (removed at
exit), so the state directory holds no private key, as the runtime's tests check. The KMS double
reads the document's payload without verifying it; tests of the real checks use the local KMS and
the simulated NSM.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from marshmallow import Schema

from enclave_core import hookimpl
from enclave_core.crypto import cose
from enclave_core.crypto.cms import build_ciphertext_for_recipient
from enclave_core.crypto.devca import MARGIN, DevCa, LeafBundle
from enclave_core.errors import (
    AccessDenied,
    AttestationError,
    CryptoError,
    InvalidKeyState,
    NotFound,
    NsmError,
    PreconditionFailed,
    ValidationError,
)
from enclave_core.kmspolicy.evaluation import (
    RequestContext,
    authorize,
    default_policy,
    evaluate,
    validate_policy,
)
from enclave_core.plugin.interfaces import (
    BackendContext,
    GrantInfo,
    KeyInfo,
    KmsResult,
    PcrState,
    Recipient,
    StoredObject,
)
from enclave_core.plugin.registry import BackendRegistry

NAME = "testmem"
_INSTANCES: dict[tuple[str, str], Any] = {}
_SCRATCH: list[tempfile.TemporaryDirectory[str]] = []  # where the doubles' dev CAs keep keys


def _make(cls: type[Any], state_dir: Any) -> Any:
    """The instance of ``cls`` for ``state_dir``, made on first use."""
    key = (cls.__name__, str(state_dir))
    if key not in _INSTANCES:
        _INSTANCES[key] = cls(Path(state_dir)) if cls is MemoryNsm else cls()
    return _INSTANCES[key]


def _shared(cls: type[Any], context: BackendContext) -> Any:
    return _make(cls, context.state_dir)


def _dev_ca(state_dir: Path | None) -> DevCa:
    """The dev CA of ``state_dir``: files in the scratch folder, root in the state directory."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="memory-nsm-"))
    folder = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    ca = DevCa(Path(_SCRATCH[0].name) / folder)
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        ca.root_pem_path = state_dir / "dev-root.pem"
    return ca


class MemoryStorage:
    """Storage in a dict; ETag = quoted SHA-256 prefix of the stored bytes."""

    name: ClassVar[str] = NAME

    class Options(Schema):
        pass

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> MemoryStorage:
        return _shared(cls, context)

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'

    def get(self, key: str) -> StoredObject:
        if key not in self.objects:
            raise NotFound(f"memory storage: {key!r} not found")
        return StoredObject(self.objects[key], self.etag(self.objects[key]))

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        current = self.objects.get(key)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"memory storage: {key!r} exists")
        if if_match is not None and (current is None or self.etag(current) != if_match):
            raise PreconditionFailed(f"memory storage: {key!r} changed")
        self.objects[key] = data
        return self.etag(data)

    def delete(self, key: str) -> bool:
        return self.objects.pop(key, None) is not None

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


class MemorySecrets:
    """A parameter store in a dict."""

    name: ClassVar[str] = NAME

    class Options(Schema):
        pass

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> MemorySecrets:
        return _shared(cls, context)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def put(self, name: str, value: str) -> None:
        self.values[name] = value

    def delete(self, name: str) -> bool:
        return self.values.pop(name, None) is not None

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.values if k.startswith(prefix))


class MemoryKms:
    """KMS with real AES-GCM keys, encryption contexts bound as associated data, evaluated key
    policies and grants, and Recipient answers (from the documents of :class:`MemoryNsm`)."""

    name: ClassVar[str] = NAME
    PRINCIPAL = "arn:aws:iam::000000000000:role/enclave"

    class Options(Schema):
        pass

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, bytes]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.grants: dict[str, list[GrantInfo]] = {}
        self.calls: list[str] = []
        #: When set, describe_key waits for it (lets a test observe the kms_key stage).
        self.gate: threading.Event | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> MemoryKms:
        return _shared(cls, context)

    def caller_arn(self) -> str:
        return self.PRINCIPAL

    @staticmethod
    def arn(key_id: str) -> str:
        """The key's ARN, in the account of :attr:`PRINCIPAL` (as KMS names keys)."""
        return f"arn:aws:kms:us-east-1:000000000000:key/{key_id}"

    def _info(self, key_id: str) -> KeyInfo:
        if key_id not in self.keys:
            raise NotFound(f"memory kms: key {key_id} not found")
        return KeyInfo(
            key_id,
            self.arn(key_id),
            self.keys[key_id][0],
            origin="AWS_KMS",
            multi_region=False,
            custom_key_store_id=None,
            key_spec="SYMMETRIC_DEFAULT",
            key_usage="ENCRYPT_DECRYPT",
            key_manager="CUSTOMER",
        )

    def _authorize(self, key_id: str, action: str, context: RequestContext | None = None) -> None:
        self._info(key_id)
        decision = authorize(
            self.policies[key_id],
            self.grants.get(key_id, []),
            action=action,
            principal=self.PRINCIPAL,
            context=context or RequestContext(),
            resource=self.arn(key_id),
        )
        if not decision.allowed:
            raise AccessDenied(f"memory kms: {action} on {key_id} denied: {decision.reason}")

    @staticmethod
    def _read_recipient(recipient: Recipient) -> tuple[bytes, dict[int, bytes]]:
        """The document's public key and PCRs, read from its payload (not verified)."""
        try:
            payload = cose.decode_sign1(recipient.attestation_document).payload
            document = cose.decode_document(payload)
        except AttestationError as exc:
            raise AccessDenied(
                f"memory kms: the attestation document is malformed: {exc}"
            ) from None
        if document["public_key"] is None:
            raise ValidationError("memory kms: the attestation document has no public key")
        return document["public_key"], dict(document["pcrs"])

    def _usable(
        self, key_id: str, action: str, context: dict[str, str], recipient: Recipient | None
    ) -> bytes | None:
        """Authorize and check the state; return the Recipient's public key (DER) if any."""
        public_key, pcrs = None, None
        if recipient is not None:
            public_key, pcrs = self._read_recipient(recipient)
        self._authorize(key_id, action, RequestContext(encryption_context=context, pcrs=pcrs))
        if self.keys[key_id][0] != "Enabled":
            raise InvalidKeyState(f"memory kms: key {key_id} is {self.keys[key_id][0]}")
        return public_key

    def set_state(self, key_id: str, state: str) -> None:
        self.keys[key_id] = (state, self.keys[key_id][1])

    def create_key(
        self,
        *,
        description: str = "",
        policy: dict[str, Any] | str | None = None,
        bypass_lockout_safety_check: bool = False,
    ) -> KeyInfo:
        self.calls.append("create_key")
        stored = validate_policy(policy) if policy is not None else None
        key_id = str(uuid.uuid4())
        self.keys[key_id] = ("Enabled", AESGCM.generate_key(256))
        self.policies[key_id] = stored or default_policy("000000000000")
        return self._info(key_id)

    def describe_key(self, key_id: str) -> KeyInfo:
        self.calls.append("describe_key")
        if self.gate is not None:
            self.gate.wait(10)
        self._authorize(key_id, "kms:DescribeKey")
        return self._info(key_id)

    def get_key_policy(self, key_id: str) -> dict[str, Any]:
        self.calls.append("get_key_policy")
        self._authorize(key_id, "kms:GetKeyPolicy")
        return json.loads(json.dumps(self.policies[key_id]))

    def put_key_policy(
        self,
        key_id: str,
        policy: dict[str, Any] | str,
        *,
        bypass_lockout_safety_check: bool = False,
    ) -> None:
        self.calls.append("put_key_policy")
        self._authorize(key_id, "kms:PutKeyPolicy")
        self.policies[key_id] = validate_policy(policy)

    def list_grants(self, key_id: str) -> list[GrantInfo]:
        self.calls.append("list_grants")
        self._info(key_id)
        decision = evaluate(
            self.policies[key_id],
            action="kms:ListGrants",
            principal=self.PRINCIPAL,
            context=RequestContext(),
            resource=self.arn(key_id),
        )
        if not decision.allowed:
            raise AccessDenied(f"memory kms: kms:ListGrants on {key_id} denied: {decision.reason}")
        return list(self.grants.get(key_id, []))

    def create_grant(
        self,
        key_id: str,
        *,
        grantee_principal: str,
        operations: Sequence[str],
        retiring_principal: str | None = None,
        name: str = "",
        constraints: Mapping[str, Mapping[str, str]] | None = None,
    ) -> str:
        """A grant the key honours from now on (no narrowing checks: a test double)."""
        self.calls.append("create_grant")
        self._authorize(key_id, "kms:CreateGrant")
        constraints = constraints or {}
        subset = constraints.get("EncryptionContextSubset")
        equals = constraints.get("EncryptionContextEquals")
        grant = GrantInfo(
            grant_id=secrets.token_hex(32),
            key_id=self.arn(key_id),
            grantee_principal=grantee_principal,
            operations=tuple(operations),
            retiring_principal=retiring_principal,
            name=name,
            encryption_context_subset=dict(subset) if subset is not None else None,
            encryption_context_equals=dict(equals) if equals is not None else None,
        )
        self.grants.setdefault(key_id, []).append(grant)
        return grant.grant_id

    def _drop_grant(self, key_id: str, grant_id: str) -> None:
        kept = [g for g in self.grants.get(key_id, []) if g.grant_id != grant_id]
        if len(kept) == len(self.grants.get(key_id, [])):
            raise NotFound(f"memory kms: key {key_id} has no grant {grant_id}")
        self.grants[key_id] = kept

    def retire_grant(self, key_id: str, grant_id: str) -> None:
        self.calls.append("retire_grant")
        self._info(key_id)
        self._drop_grant(key_id, grant_id)

    def revoke_grant(self, key_id: str, grant_id: str) -> None:
        self.calls.append("revoke_grant")
        self._authorize(key_id, "kms:RevokeGrant")
        self._drop_grant(key_id, grant_id)

    def _aad(self, key_id: str, context: dict[str, str]) -> bytes:
        return key_id.encode() + json.dumps(context, sort_keys=True).encode()

    def _seal(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        nonce = os.urandom(12)
        material = self.keys[key_id][1]
        return nonce + AESGCM(material).encrypt(nonce, plaintext, self._aad(key_id, context))

    def encrypt(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        self.calls.append("encrypt")
        self._usable(key_id, "kms:Encrypt", context, None)
        return self._seal(key_id, plaintext, context)

    @staticmethod
    def _answer(key_id: str, plain: bytes, public_key: bytes | None, **extra: Any) -> KmsResult:
        if public_key is None:
            return KmsResult(key_id=key_id, plaintext=plain, **extra)
        envelope = build_ciphertext_for_recipient(plain, public_key)
        return KmsResult(key_id=key_id, ciphertext_for_recipient=envelope, **extra)

    def decrypt(
        self,
        key_id: str,
        ciphertext: bytes,
        context: dict[str, str],
        recipient: Recipient | None = None,
    ) -> KmsResult:
        self.calls.append("decrypt")
        public_key = self._usable(key_id, "kms:Decrypt", context, recipient)
        material = self.keys[key_id][1]
        try:
            plain = AESGCM(material).decrypt(
                ciphertext[:12], ciphertext[12:], self._aad(key_id, context)
            )
        except InvalidTag:
            raise CryptoError(f"memory kms: ciphertext does not decrypt under {key_id}") from None
        return self._answer(key_id, plain, public_key)

    def generate_data_key(
        self,
        key_id: str,
        context: dict[str, str],
        *,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> KmsResult:
        self.calls.append("generate_data_key")
        public_key = self._usable(key_id, "kms:GenerateDataKey", context, recipient)
        plain = os.urandom(number_of_bytes)
        blob = self._seal(key_id, plain, context)
        return self._answer(key_id, plain, public_key, ciphertext_blob=blob)

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 7) -> KeyInfo:
        self._authorize(key_id, "kms:ScheduleKeyDeletion")
        self.set_state(key_id, "PendingDeletion")
        return self._info(key_id)


class MemoryNsm:
    """An NSM with SHA-384 PCRs (0..15 locked) and real attestation documents signed by the dev
    CA of its state directory (see the module docstring)."""

    name: ClassVar[str] = NAME
    PCR0 = hashlib.sha384(b"test app").digest()

    class Options(Schema):
        pass

    def __init__(self, state_dir: Path | None = None) -> None:
        self.pcrs = [bytes(48) for _ in range(32)]
        self.pcrs[0] = self.PCR0
        self.locked = set(range(16))
        self.documents: list[dict[str, bytes | None]] = []
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.module_id: str | None = None
        self._ca: DevCa | None = None
        self._leaf: LeafBundle | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> MemoryNsm:
        return _shared(cls, context)

    def describe_pcr(self, index: int) -> PcrState:
        return PcrState(index, self.pcrs[index], index in self.locked)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        if index in self.locked:
            raise NsmError("ReadOnlyIndex", f"NSM: PCR{index} is locked")
        self.pcrs[index] = hashlib.sha384(self.pcrs[index] + data).digest()
        return self.pcrs[index]

    def lock_pcr(self, index: int) -> None:
        if index in self.locked:
            raise NsmError("ReadOnlyIndex", f"NSM: PCR{index} is already locked")
        self.locked.add(index)

    def lock_pcrs(self, range_: int) -> None:
        self.locked.update(range(range_))

    def describe_nsm(self) -> dict[str, Any]:
        return {
            "version": "test",
            "module_id": "test",
            "max_pcrs": 32,
            "locked_pcrs": sorted(self.locked),
        }

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        for name, value in (("user_data", user_data), ("nonce", nonce), ("public_key", public_key)):
            if value is not None and len(value) > cose.MAX_FIELD_BYTES:
                raise NsmError("InputTooLarge", f"NSM: {name} is over 1024 bytes")
        self.documents.append({"user_data": user_data, "nonce": nonce, "public_key": public_key})
        leaf = self._signing_leaf()
        assert self.module_id is not None
        payload = cose.build_document(
            module_id=self.module_id,
            timestamp_ms=time.time_ns() // 1_000_000,
            pcrs={i: self.pcrs[i] for i in range(32) if i < 16 or i in self.locked},
            certificate=leaf.certificate,
            cabundle=leaf.cabundle,
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )
        return cose.sign1(payload, leaf.private_key)

    def _signing_leaf(self) -> LeafBundle:
        """The dev CA's leaf for this NSM, made on first use and renewed before it expires."""
        if self._ca is None:
            self._ca = _dev_ca(self.state_dir)
            self.module_id = f"{self._ca.instance_id()}-enc{secrets.token_hex(8)}"
        if self._leaf is None or self._leaf.expires_within(MARGIN):
            assert self.module_id is not None
            self._leaf = self._ca.issue_leaf(self.module_id)
        return self._leaf

    def get_random(self, length: int = 32) -> bytes:
        return os.urandom(length)


class DoublesPlugin:
    """Registers every double under the backend name ``testmem``."""

    @hookimpl
    def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
        registry.add(MemoryStorage)

    @hookimpl
    def enclave_register_secrets(self, registry: BackendRegistry[Any]) -> None:
        registry.add(MemorySecrets)

    @hookimpl
    def enclave_register_kms(self, registry: BackendRegistry[Any]) -> None:
        registry.add(MemoryKms)

    @hookimpl
    def enclave_register_attestation(self, registry: BackendRegistry[Any]) -> None:
        registry.add(MemoryNsm)


DOUBLES_CONFIG: dict[str, Any] = {
    "storage": {"backend": NAME, "options": {}},
    "secrets": {
        "backend": NAME,
        "options": {},
        "static": [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}],
    },
    "kms": {"backend": NAME, "options": {}},
    "attestation": {"backend": NAME, "options": {}},
}


def shared(cls: type[Any], state_dir: Any) -> Any:
    """The double instance a boot in ``state_dir`` uses."""
    return _make(cls, state_dir)
