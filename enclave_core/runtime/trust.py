"""The root the runtime's attestation documents chain to, for records and chain links.

Production: the pinned AWS Nitro root G1, always. Development: the development root the simulated
NSM keeps in ``state_dir/dev-root.pem`` when it exists (development defends against nothing; the
checks still run on the production code path), else the AWS root. Read on first use: the
simulated NSM writes its root when it signs its first document.
"""

from __future__ import annotations

from cryptography import x509

from enclave_core.config import Config
from enclave_core.crypto.aws_root import aws_nitro_root, load_root_pem
from enclave_core.runtime.state import RuntimeState

DEV_ROOT_FILE = "dev-root.pem"


def trust_root(config: Config) -> x509.Certificate:
    """The trust anchor for ``config`` (see the module docstring)."""
    if config.mode == "development":
        path = config.state_dir / DEV_ROOT_FILE
        if path.is_file():
            return load_root_pem(path)
    return aws_nitro_root()


def root_of(state: RuntimeState) -> x509.Certificate:
    """``state``'s trust anchor, read once."""
    if state.trust_root is None:
        state.trust_root = trust_root(state.config)
    return state.trust_root
