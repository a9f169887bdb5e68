"""The runtime's shared state: boot progress, backends, keys and the app's condition.

One :class:`RuntimeState` is created per runtime process. Boot fills it in stage by stage; the
public routes, the control listener, the app API and the app supervisor read it. Everything runs on
one event loop, so plain attributes suffice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.metrics import Metrics
from enclave_core.plugin.interfaces import Attestation, Kms, Secrets, Storage
from enclave_core.protocol.userdata import attestation_user_data
from enclave_core.runtime.attested_kms import RecipientSession
from enclave_core.runtime.dynsecrets import DynamicSecrets

if TYPE_CHECKING:  # hints only: these modules import this one
    from cryptography import x509

    from enclave_core.kmspolicy.keycheck import KeyVerdict
    from enclave_core.protocol.migration_chain import ChainReport
    from enclave_core.runtime.manifest import Manifest

STAGES = ("config", "attestation", "kms_key", "static_secrets", "storage", "dynamic_secrets", "app")


@dataclass(repr=False)
class RuntimeState:
    """Everything the runtime knows, shared by its listeners and tasks.

    Secret material (the management token, the signing key, static secret values, the storage
    data key) is held here but never included in ``repr`` or logs.
    """

    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    stage: str = "config"
    stage_history: list[str] = field(default_factory=list)
    boot_error: str | None = None
    #: Why the app is not serving (exited, restarting, failing its health check), or None.
    app_problem: str | None = None
    #: Whether the app's port accepts connections (the proxy may forward).
    app_up: bool = False
    #: Set when the runtime must exit (3: the app failed repeatedly).
    exit_code: int | None = None

    attestation: Attestation | None = None
    kms: Kms | None = None
    secrets: Secrets | None = None
    raw_storage: Storage | None = None
    storage: Storage | None = None
    dynamic: DynamicSecrets | None = None
    #: The boot's KMS Recipient key pair and document (every decrypt goes through it).
    recipient: RecipientSession | None = None

    pcr0: str | None = None
    #: This image's PCR8 when it is signed (non-zero), else None.
    pcr8: str | None = None
    #: The root attestation documents (records, chain links, Recipients) must chain to.
    trust_root: x509.Certificate | None = None
    #: The KMS key as the enclave verified it (metadata, exact policy, no grants).
    key_verdict: KeyVerdict | None = None
    #: This image's verified ciphertext manifest, once the data keys are open.
    manifest: Manifest | None = None
    #: The migration links back to the first image, as far as they verify.
    chain: ChainReport | None = None
    signing_key: Ed25519PrivateKey | None = None
    attestation_pubkey: str | None = None
    tls_cert_der: bytes | None = None
    tls_cert_sha256: str | None = None
    kms_key_id: str | None = None
    mgmt_token: str | None = None
    static_env: dict[str, str] = field(default_factory=dict)
    #: The storage data key in plaintext, for export-key to re-encrypt (memory only, never logged).
    storage_dek: bytes | None = None
    #: ``"genesis"`` or the previous image's PCR0, from this image's attested manifest; None
    #: while boot has not opened the data keys.
    previous_pcr0: str | None = None
    #: The newest chain link's attestation document (base64), when the link verified.
    previous_pcr0_attestation: str | None = None
    dynamic_env: dict[str, str] = field(default_factory=dict)
    dynamic_secrets: int | None = None

    def __repr__(self) -> str:
        return f"RuntimeState(name={self.config.name!r}, stage={self.stage!r})"

    # ------------------------------------------------------------------ boot progress

    def enter_stage(self, stage: str) -> None:
        """Record that boot entered ``stage`` (one of STAGES)."""
        if stage not in STAGES:
            raise ValueError(f"unknown boot stage {stage!r}")
        self.stage = stage
        self.stage_history.append(stage)
        logger.bind(stage=stage).info("boot stage")

    def fail(self, reason: str) -> None:
        """Boot failed: serve degraded with ``reason`` (which names the stage, never a secret)."""
        self.boot_error = reason
        logger.bind(stage=self.stage, error=reason).error("boot failed; runtime degraded")

    @property
    def storage_ready(self) -> bool:
        """Whether boot has made encrypted storage available."""
        return self.storage is not None and self.dynamic is not None

    # ------------------------------------------------------------------ what /health says

    def health(self) -> tuple[int, dict[str, Any]]:
        """The runtime's ``/health``: HTTP status and body."""
        if self.boot_error is not None:
            return 503, {"status": "degraded", "error": self.boot_error}
        if self.app_problem is not None:
            return 503, {"status": "degraded", "error": self.app_problem}
        if self.stage != "app" or not self.app_up:
            return 503, {"status": "initializing", "stage": self.stage}
        return 200, {"status": "ready"}

    def app_unavailable(self) -> str | None:
        """Why requests cannot be proxied to the app right now, or None when they can."""
        if self.app_up:
            return None
        if self.boot_error is not None:
            return f"the enclave is degraded: {self.boot_error}"
        if self.app_problem is not None:
            return self.app_problem
        return f"the app is not ready yet (boot stage {self.stage})"

    def enclave_info(self) -> dict[str, Any]:
        """The body of ``GET /v1/enclave-info``."""
        return {
            "name": self.config.name,
            "version": __version__,
            "pcr0": self.pcr0,
            "attestation_pubkey": self.attestation_pubkey,
            "tls_cert_sha256": self.tls_cert_sha256,
            "kms_key_id": self.kms_key_id,
            "previous_pcr0": self.previous_pcr0,
            "previous_pcr0_attestation": self.previous_pcr0_attestation,
            "pcr8": self.pcr8,
            "key_origin": self.key_verdict.kind if self.key_verdict is not None else None,
            "migration_chain": self.chain.as_json() if self.chain is not None else None,
            "migration_chain_complete": self.chain.complete if self.chain is not None else None,
            "dynamic_secrets": self.dynamic_secrets,
            "metrics": self.metrics.snapshot(),
        }

    def user_data(self) -> bytes | None:
        """The attestation ``user_data`` binding, once the signing key exists."""
        if self.signing_key is None:
            return None
        raw = self.signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return attestation_user_data(self.tls_cert_der, raw)
