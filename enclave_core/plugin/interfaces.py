"""The five capability contracts every backend implements, and the values they exchange.

A backend class has a class attribute ``name`` (what users write under ``<capability>.backend``),
a nested marshmallow ``Options`` schema for its ``options:`` block, and a classmethod
``from_options(options, context)`` that builds it. Operations are synchronous; the runtime and
supervisor call them from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import marshmallow


@dataclass(frozen=True)
class BackendContext:
    """What a backend may know about the deployment it serves.

    :ivar name: the app name from enclave.yaml.
    :ivar prefix: the deployment name; SSM-style paths are ``/{prefix}/{name}/``.
    :ivar region: the AWS region.
    :ivar mode: ``development`` or ``production``.
    :ivar base_dir: the folder of enclave.yaml; relative paths in options are relative to it.
    :ivar state_dir: the state directory (``.enclave/`` beside enclave.yaml).
    :ivar app_dir: the app's files (``app.dir``).
    :ivar session: an injected boto3 session, or None to build one lazily.
    """

    name: str
    prefix: str
    region: str
    mode: str
    base_dir: Path
    state_dir: Path
    app_dir: Path
    session: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str | Path) -> Path:
        """Resolve ``path`` relative to the folder of enclave.yaml."""
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


class Backend(Protocol):
    """What every backend class provides, whatever its capability."""

    name: ClassVar[str]
    Options: ClassVar[type[marshmallow.Schema]]

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> Any:
        """Build the backend from its validated ``options`` block."""
        ...


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class StoredObject:
    """An object read from storage: its bytes and its entity tag."""

    data: bytes
    etag: str


@runtime_checkable
class Storage(Protocol):
    """Object storage. Keys are ``/``-separated relative names, already validated by the core.

    The core wraps every Storage in AES-256-GCM envelope encryption, so a backend only ever sees
    ciphertext.
    """

    name: ClassVar[str]

    def get(self, key: str) -> StoredObject:
        """Return the object; raise :class:`~enclave_core.errors.NotFound` when it is missing."""
        ...

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Store ``data`` atomically and return its new ETag.

        ``if_match`` requires the current ETag to equal it; ``if_none_match`` requires the key to be
        absent. Either failing raises :class:`~enclave_core.errors.PreconditionFailed` and changes
        nothing.
        """
        ...

    def delete(self, key: str) -> bool:
        """Delete the object; return whether it existed."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Return every key starting with ``prefix``, sorted."""
        ...


# --------------------------------------------------------------------------- secrets


@runtime_checkable
class Secrets(Protocol):
    """A parameter store holding ciphertexts and migration state (SSM Parameter Store in AWS).

    Names are relative to ``/{prefix}/{name}/``, for example ``KMSKeyID`` or
    ``signing_key/Ciphertext``. Values are strings (base64 for binary data).
    """

    name: ClassVar[str]

    def get(self, name: str) -> str | None:
        """Return the value, or None when the parameter is absent."""
        ...

    def put(self, name: str, value: str) -> None:
        """Create or overwrite the parameter atomically."""
        ...

    # Optional, and strongly recommended (the built-in backends have it; see
    # :func:`enclave_core.runtime.boot.create_parameter`):
    #
    #     def create(self, name: str, value: str) -> bool:
    #         """Store the parameter only if it is absent; return False, writing nothing, if it
    #         exists. Atomic: of concurrent creates of one name exactly one returns True."""
    #
    # Several enclaves booting at once against one store (``instances: N``) use it so that
    # exactly one generated data key or static secret is kept; without it they fall back to
    # get-then-put, and two first boots could each keep a different secret.

    def delete(self, name: str) -> bool:
        """Delete the parameter; return whether it existed."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Return the relative names starting with ``prefix``, sorted."""
        ...


# --------------------------------------------------------------------------- kms


@dataclass(frozen=True)
class Recipient:
    """The KMS ``Recipient`` parameter: an attestation document carrying an RSA public key."""

    attestation_document: bytes
    key_encryption_algorithm: str = "RSAES_OAEP_SHA_256"


@dataclass(frozen=True)
class KeyInfo:
    """Metadata of a KMS key (KMS DescribeKey's ``KeyMetadata``).

    The fields after ``deletion_date`` describe what kind of key it is. Each is None when the
    backend does not say (backends written before they existed); security checks treat None as
    a refusal, never as the safe value.

    :ivar state: Enabled, Disabled, PendingDeletion, PendingImport...
    :ivar origin: where the key material comes from: ``AWS_KMS`` (made by KMS), ``EXTERNAL``
        (imported by the key's owner, who therefore has it), ``AWS_CLOUDHSM`` or
        ``EXTERNAL_KEY_STORE`` (kept in a custom key store its owner controls).
    :ivar multi_region: whether other Regions may hold replicas sharing the key material.
    :ivar custom_key_store_id: the custom key store holding the material, if any.
    :ivar key_spec: e.g. ``SYMMETRIC_DEFAULT``.
    :ivar key_usage: e.g. ``ENCRYPT_DECRYPT``.
    :ivar key_manager: ``CUSTOMER`` or ``AWS``.
    """

    key_id: str
    arn: str
    state: str
    description: str = ""
    deletion_date: str | None = None
    origin: str | None = None
    multi_region: bool | None = None
    custom_key_store_id: str | None = None
    key_spec: str | None = None
    key_usage: str | None = None
    key_manager: str | None = None


@dataclass(frozen=True)
class GrantInfo:
    """One grant on a KMS key (an element of KMS ListGrants' ``Grants``).

    A grant lets ``grantee_principal`` call ``operations`` (KMS operation names such as
    ``Decrypt``, ``GenerateDataKey``, ``Encrypt``, ``CreateGrant``, ``RetireGrant``,
    ``DescribeKey``) on the key whatever the key policy says, unless the policy explicitly
    denies it; changing the key policy does not remove grants.

    :ivar retiring_principal: who may retire the grant besides the grantee (when the grant lists
        ``RetireGrant``).
    :ivar encryption_context_subset: the grant applies only to requests whose encryption context
        contains every one of these pairs.
    :ivar encryption_context_equals: the grant applies only to requests with exactly this
        encryption context.
    """

    grant_id: str
    key_id: str
    grantee_principal: str
    operations: tuple[str, ...]
    retiring_principal: str | None = None
    name: str = ""
    encryption_context_subset: dict[str, str] | None = None
    encryption_context_equals: dict[str, str] | None = None


@dataclass(frozen=True)
class KmsResult:
    """The answer of Decrypt or GenerateDataKey.

    Without a Recipient, ``plaintext`` is set. With one, ``plaintext`` is None and
    ``ciphertext_for_recipient`` holds a CMS envelope for the enclave's key.
    ``ciphertext_blob`` is set by GenerateDataKey.
    """

    key_id: str
    plaintext: bytes | None = None
    ciphertext_for_recipient: bytes | None = None
    ciphertext_blob: bytes | None = None


@runtime_checkable
class Kms(Protocol):
    """Key management with policies, encryption contexts and the Nitro Recipient flow."""

    name: ClassVar[str]

    def create_key(
        self,
        *,
        description: str = "",
        policy: dict[str, Any] | str | None = None,
        bypass_lockout_safety_check: bool = False,
    ) -> KeyInfo:
        """Create an enabled symmetric encryption key.

        :param description: free text, stored with the key (a migration finds its key by it).
        :param policy: the key policy the key has from its creation, enforced exactly as after
            :meth:`put_key_policy`, so there is no moment at which the key is open (KMS
            CreateKey's ``Policy``): a document, or its JSON text as the AWS API takes it.
            None: the backend's default policy (AWS: the account root may do everything).
        :param bypass_lockout_safety_check: like :meth:`put_key_policy`'s: without it, a
            ``policy`` that would not let the caller put a policy later is refused
            (ValidationError); with it, the key is created locked (CreateKey's
            ``BypassPolicyLockoutSafetyCheck``). Ignored without ``policy``.

        Backends written before ``policy``/``bypass_lockout_safety_check`` existed may lack
        them; callers that need them check the signature and otherwise create, then put.
        """
        ...

    def describe_key(self, key_id: str) -> KeyInfo:
        """Return the key's metadata; NotFound if it does not exist."""
        ...

    def get_key_policy(self, key_id: str) -> dict[str, Any]:
        """Return the key policy document."""
        ...

    def put_key_policy(
        self,
        key_id: str,
        policy: dict[str, Any] | str,
        *,
        bypass_lockout_safety_check: bool = False,
    ) -> None:
        """Replace the key policy (a document, or its JSON text as the AWS API takes it)."""
        ...

    def list_grants(self, key_id: str) -> list[GrantInfo]:
        """Return every grant on the key (KMS ListGrants, all pages).

        Grants give permissions the key policy does not show, and they survive policy changes,
        so an enclave refuses a key whose grants it cannot list.
        """
        ...

    # Optional (the built-in backends have them; callers check with ``hasattr``):
    #
    #     def create_grant(
    #         self,
    #         key_id: str,
    #         *,
    #         grantee_principal: str,
    #         operations: Sequence[str],
    #         retiring_principal: str | None = None,
    #         name: str = "",
    #         constraints: dict[str, dict[str, str]] | None = None,
    #     ) -> str:
    #         """Create a grant (KMS CreateGrant) and return its grant id. ``constraints`` is
    #         {"EncryptionContextSubset": {...}} or {"EncryptionContextEquals": {...}}."""
    #
    #     def retire_grant(self, key_id: str, grant_id: str) -> None:
    #         """Retire a grant (KMS RetireGrant): its retiring principal or grantee gives it up."""
    #
    #     def revoke_grant(self, key_id: str, grant_id: str) -> None:
    #         """Revoke a grant (KMS RevokeGrant): a key administrator takes it away."""

    def encrypt(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt under the key with an encryption context; return the ciphertext blob."""
        ...

    def decrypt(
        self,
        key_id: str,
        ciphertext: bytes,
        context: dict[str, str],
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Decrypt; the context must equal the one used to encrypt."""
        ...

    def generate_data_key(
        self,
        key_id: str,
        context: dict[str, str],
        *,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Generate a data key; return its ciphertext blob and plaintext (or recipient envelope)."""
        ...

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 7) -> KeyInfo:
        """Schedule the key's deletion after the waiting period."""
        ...

    def caller_arn(self) -> str:
        """The IAM principal this backend calls KMS as (an IAM role ARN, not an STS session).

        The runtime names it in the key policy it applies when it locks a key to its PCR0.
        """
        ...


# --------------------------------------------------------------------------- attestation


@dataclass(frozen=True)
class PcrState:
    """One PCR as DescribePCR reports it."""

    index: int
    data: bytes
    locked: bool


@runtime_checkable
class Attestation(Protocol):
    """The Nitro Secure Module's API (its requests and responses, as aws-nitro-enclaves-nsm-api
    defines them)."""

    name: ClassVar[str]

    def describe_pcr(self, index: int) -> PcrState:
        """Return a PCR's value and lock state."""
        ...

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend a PCR (``SHA-384(old || data)``) and return its new value."""
        ...

    def lock_pcr(self, index: int) -> None:
        """Lock one PCR against further extension."""
        ...

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``[0, range_)``."""
        ...

    def describe_nsm(self) -> dict[str, Any]:
        """Return version, module_id, max_pcrs, locked_pcrs and digest."""
        ...

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """Return a signed attestation document (COSE_Sign1 bytes)."""
        ...

    def get_random(self, length: int = 32) -> bytes:
        """Return random bytes from the module."""
        ...


# --------------------------------------------------------------------------- launcher


@dataclass(frozen=True)
class LaunchSpec:
    """What the supervisor asks a launcher to start."""

    config_path: Path
    cpu_count: int
    memory_mib: int
    cid: int
    eif: Path
    debug_mode: bool
    name: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnclaveDescription:
    """One running enclave, in the shape of ``nitro-cli describe-enclaves``."""

    enclave_id: str
    enclave_cid: int
    process_id: int
    state: str  # RUNNING, TERMINATING
    name: str
    cpu_count: int
    memory_mib: int
    flags: str = "NONE"

    def as_nitro_json(self) -> dict[str, Any]:
        """Return the element of ``nitro-cli describe-enclaves`` output this describes."""
        return {
            "EnclaveName": self.name,
            "EnclaveID": self.enclave_id,
            "ProcessID": self.process_id,
            "EnclaveCID": self.enclave_cid,
            "NumberOfCPUs": self.cpu_count,
            "CPUIDs": list(range(1, self.cpu_count + 1)),
            "MemoryMiB": self.memory_mib,
            "State": self.state,
            "Flags": self.flags,
        }


@dataclass(frozen=True)
class ExitInfo:
    """Why an enclave is gone: an exit code or a signal, and the last lines it logged."""

    exit_code: int | None
    signal: str | None
    log_tail: list[str]
    timestamp: str
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        """Return the ``last_exit`` object of the supervisor's ``/health``."""
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "log_tail": self.log_tail,
            "timestamp": self.timestamp,
        }


@runtime_checkable
class Launcher(Protocol):
    """Starts, describes and stops the enclave (a local process or a real Nitro enclave)."""

    name: ClassVar[str]

    def start(self, spec: LaunchSpec) -> EnclaveDescription:
        """Start the enclave; raise LauncherError with the likely cause on failure."""
        ...

    def describe(self) -> EnclaveDescription | None:
        """Return the running enclave, or None when there is none."""
        ...

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the enclave (gracefully, then forcibly after ``timeout_s``)."""
        ...

    def last_exit(self) -> ExitInfo | None:
        """Return why the last enclave ended, once it has ended."""
        ...

    def enclave_address(self, port: int) -> str:
        """Return the transport address of an enclave port (``vsock://CID:P`` or ``tcp://...``)."""
        ...

    def log_lines(self) -> list[str]:
        """Return the enclave's recent log lines (runtime and app), oldest first."""
        ...
