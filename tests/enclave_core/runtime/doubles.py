"""Tiny in-memory doubles of the backend Protocols, for the runtime's unit tests.

They are real implementations (real AES-GCM in the KMS, real SHA-384 PCRs), only kept in memory.
``DoublesPlugin`` registers them under the name ``testmem``; instances are shared per state
directory, so a second boot in the same folder sees what the first one stored.

The KMS double behaves like the local KMS where the runtime can tell: key policies are evaluated
with :mod:`enclave_core.kms_policy`, and a Recipient gets a real CMS envelope and no plaintext.
The NSM double's "attestation document" is transparent, not signed
(``DOC:<nonce>:<user_data>:<public_key>:<pcr0>``, hex fields), and the KMS double reads it
without verification; tests of the real checks use the local KMS and the simulated NSM.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from marshmallow import Schema

from enclave_core import hookimpl
from enclave_core.crypto.cms import build_ciphertext_for_recipient
from enclave_core.errors import (
    AccessDenied,
    CryptoError,
    InvalidKeyState,
    NotFound,
    NsmError,
    PreconditionFailed,
)
from enclave_core.interfaces import (
    BackendContext,
    KeyInfo,
    KmsResult,
    PcrState,
    Recipient,
    StoredObject,
)
from enclave_core.kms_policy import RequestContext, default_policy, evaluate
from enclave_core.registry import BackendRegistry

NAME = "testmem"
_INSTANCES: dict[tuple[str, str], Any] = {}


def _shared(cls: type[Any], context: BackendContext) -> Any:
    return _INSTANCES.setdefault((cls.__name__, str(context.state_dir)), cls())


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
    policies and Recipient answers (from the transparent documents of :class:`MemoryNsm`)."""

    name: ClassVar[str] = NAME
    PRINCIPAL = "arn:aws:iam::000000000000:role/enclave"

    class Options(Schema):
        pass

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, bytes]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        #: When set, describe_key waits for it (lets a test observe the kms_key stage).
        self.gate: threading.Event | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> MemoryKms:
        return _shared(cls, context)

    def caller_arn(self) -> str:
        return self.PRINCIPAL

    def _info(self, key_id: str) -> KeyInfo:
        if key_id not in self.keys:
            raise NotFound(f"memory kms: key {key_id} not found")
        return KeyInfo(key_id, f"arn:test:kms:key/{key_id}", self.keys[key_id][0])

    def _authorize(self, key_id: str, action: str, context: RequestContext | None = None) -> None:
        self._info(key_id)
        decision = evaluate(
            self.policies[key_id],
            action=action,
            principal=self.PRINCIPAL,
            context=context or RequestContext(),
        )
        if not decision.allowed:
            raise AccessDenied(f"memory kms: {action} on {key_id} denied: {decision.reason}")

    def _usable(
        self, key_id: str, action: str, context: dict[str, str], recipient: Recipient | None
    ) -> bytes | None:
        """Authorize and check the state; return the Recipient's public key (DER) if any."""
        public_key, pcrs = None, None
        if recipient is not None:
            _, _nonce, _user_data, key_hex, pcr0_hex = recipient.attestation_document.split(b":")
            public_key, pcrs = (
                bytes.fromhex(key_hex.decode()),
                {0: bytes.fromhex(pcr0_hex.decode())},
            )
        self._authorize(key_id, action, RequestContext(encryption_context=context, pcrs=pcrs))
        if self.keys[key_id][0] != "Enabled":
            raise InvalidKeyState(f"memory kms: key {key_id} is {self.keys[key_id][0]}")
        return public_key

    def set_state(self, key_id: str, state: str) -> None:
        self.keys[key_id] = (state, self.keys[key_id][1])

    def create_key(self, *, description: str = "", policy: dict[str, Any] | None = None) -> KeyInfo:
        self.calls.append("create_key")
        key_id = str(uuid.uuid4())
        self.keys[key_id] = ("Enabled", AESGCM.generate_key(256))
        self.policies[key_id] = policy or default_policy("000000000000")
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
        self, key_id: str, policy: dict[str, Any], *, bypass_lockout_safety_check: bool = False
    ) -> None:
        self.calls.append("put_key_policy")
        self._authorize(key_id, "kms:PutKeyPolicy")
        self.policies[key_id] = json.loads(json.dumps(policy))

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
    """An NSM with SHA-384 PCRs (0..15 locked) and a transparent 'attestation document'."""

    name: ClassVar[str] = NAME
    PCR0 = hashlib.sha384(b"test app").digest()

    class Options(Schema):
        pass

    def __init__(self) -> None:
        self.pcrs = [bytes(48) for _ in range(32)]
        self.pcrs[0] = self.PCR0
        self.locked = set(range(16))
        self.documents: list[dict[str, bytes | None]] = []

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
        self.documents.append({"user_data": user_data, "nonce": nonce, "public_key": public_key})
        fields = (nonce or b"", user_data or b"", public_key or b"", self.pcrs[0])
        return b"DOC:" + b":".join(f.hex().encode() for f in fields)

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
    return _INSTANCES.setdefault((cls.__name__, str(state_dir)), cls())
