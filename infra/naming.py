"""Names the stack gives to AWS resources, and the S3 keys and host paths its user data uses.

Pure functions of enclave.yaml (no aws-cdk-lib), so ``enclave deploy``, ``status`` and
``destroy`` compute the same names without synthesizing.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from enclave_core.config import Config
from enclave_core.errors import ConfigError

__all__ = [
    "ADOPTED_OUTPUT",
    "EIF_OBJECT_KEY",
    "HOST_APP_DIR",
    "HOST_ROOT",
    "PCR_FILE",
    "WHEELS_PREFIX",
    "Adopted",
    "eif_bucket_name",
    "host_eif_path",
    "parameter_path",
    "pcr_file",
    "read_pcr0",
    "stack_name",
    "storage_bucket_name",
    "storage_prefix",
]

#: The enclave image in the EIF bucket (``enclave deploy`` uploads it there).
EIF_OBJECT_KEY = "image.eif"
#: The wheelhouse of simple-enclave and its dependencies in the EIF bucket: the hosts live in
#: isolated subnets (no route to PyPI), so ``enclave deploy`` uploads the wheels it resolved.
WHEELS_PREFIX = "wheels/"
#: Everything simple-enclave puts on a host: the virtualenv, the wheels, the app folder.
HOST_ROOT = PurePosixPath("/opt/simple-enclave")
#: The folder of the host's enclave.yaml (its ``.enclave/`` state and ``artifacts/`` live there).
HOST_APP_DIR = HOST_ROOT / "app"

#: Where ``enclave build`` writes the image's measurements, relative to enclave.yaml's folder.
PCR_FILE = "artifacts/pcr.json"
#: The stack output recording what the stack uses without owning it (JSON of :class:`Adopted`).
ADOPTED_OUTPUT = "AdoptedResources"


@dataclass(frozen=True)
class Adopted:
    """Resources an earlier deployment left behind that a new stack uses instead of creating.

    ``enclave destroy`` retains the buckets, the instance role and the key (the key's policy
    names that role, so a new role could never use it); ``enclave deploy`` adopts them, and the
    data of the destroyed deployment is readable again. Each field is None when that resource
    is created afresh.
    """

    storage_bucket: str | None = None
    eif_bucket: str | None = None
    role_arn: str | None = None
    key_id: str | None = None
    #: The PCR0 the adopted key is locked to (set with ``key_id``).
    key_pcr0: str | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in asdict(self).values())

    def to_json(self) -> str:
        """Compact JSON, the value of the :data:`ADOPTED_OUTPUT` output."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Adopted:
        """Parse :meth:`to_json`'s output.

        :raises ValueError: not a JSON object of known string fields.
        """
        doc: Any = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        if not all(isinstance(v, str) and v for v in doc.values()):
            raise ValueError("every field must be a non-empty string")
        if ("key_id" in doc) != ("key_pcr0" in doc):
            raise ValueError("key_id and key_pcr0 go together")
        return cls(**doc)


_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def stack_name(config: Config) -> str:
    """The CloudFormation stack name, ``{prefix}Nitro{name}`` (``devNitrohello``).

    ``_`` and ``.`` in the prefix become ``-`` (CloudFormation allows letters, digits and ``-``).

    :raises ConfigError: when the prefix does not start with a letter.
    """
    name = re.sub(r"[_.]", "-", f"{config.prefix}Nitro{config.name}")
    if not _STACK_NAME.match(name):
        raise ConfigError(
            f"prefix {config.prefix!r}: a CloudFormation stack name ({name!r}) must start with "
            "a letter and hold at most 128 letters, digits and '-'"
        )
    return name


def parameter_path(config: Config) -> str:
    """The parameter path (README: Migration) without its trailing slash: ``/{prefix}/{name}``."""
    return config.secrets_path.rstrip("/")


def _bucket(config: Config, role: str) -> str | None:
    if config.account is None:
        return None
    name = f"{config.prefix}-{config.name}-{role}-{config.account}-{config.region}"
    name = re.sub(r"[^a-z0-9.-]", "-", name.lower())
    return name if _BUCKET_NAME.match(name) and ".." not in name else None


def eif_bucket_name(config: Config) -> str | None:
    """``{prefix}-{name}-eif-{account}-{region}`` (lower case), or None when ``account`` is not
    set or the name would not be a valid bucket name: CloudFormation then picks one, which the
    stack's ``EifBucketName`` output gives."""
    return _bucket(config, "eif")


def storage_bucket_name(config: Config) -> str | None:
    """The storage bucket's name: ``storage.options.bucket`` when the storage backend is ``s3``
    (the name the enclave's own enclave.yaml uses), else ``{prefix}-{name}-storage-{account}-
    {region}``, or None (CloudFormation picks one; see the ``StorageBucketName`` output)."""
    storage = config.storage
    bucket = storage.options.get("bucket") if storage.backend == "s3" else None
    if isinstance(bucket, str) and bucket:
        return bucket
    return _bucket(config, "storage")


def storage_prefix(config: Config) -> str:
    """The key prefix the s3 storage backend writes under (``""`` or ending in ``/``)."""
    if config.storage.backend != "s3":
        return ""
    prefix = str(config.storage.options.get("prefix") or "").strip("/")
    return f"{prefix}/" if prefix else ""


def host_eif_path(config: Config) -> PurePosixPath:
    """Where the host keeps the EIF: ``enclave.eif`` resolved against the host's app folder."""
    eif = PurePosixPath(config.enclave.eif)
    return eif if eif.is_absolute() else HOST_APP_DIR / eif


def pcr_file(config: Config) -> Path:
    """``artifacts/pcr.json`` beside enclave.yaml."""
    return config.base_dir / PCR_FILE


def read_pcr0(config: Config) -> str:
    """``PCR0`` of ``artifacts/pcr.json`` beside enclave.yaml (not validated here).

    :raises ConfigError: when the file is missing, unreadable or has no ``PCR0`` string.
    """
    path = pcr_file(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; run `enclave build` or give --pcr0 HEX") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the PCRs: {exc}") from None
    pcr0 = data.get("PCR0") if isinstance(data, dict) else None
    if not isinstance(pcr0, str):
        raise ConfigError(f"{path}: no PCR0 string in it")
    return pcr0
