"""``simulated`` attestation: a software Nitro Secure Module for development and tests.

Options (``attestation.options``): ``pcr0`` (96 hex characters overriding the measured PCR0),
``pcr8`` (the PCR8 of a signed image; default none, all zero) and ``module_id``
(``i-<instance>-enc<enclave>``). PCR0 is the digest of the app's files
(:func:`enclave_core.image.files.measure`); documents are byte-faithful Nitro documents signed by
the dev CA (:mod:`enclave_core.crypto.devca`). Refuses ``mode: production``. How PCRs and errors
mirror the NSM: docs/architecture.md, "Attestation documents and the simulated NSM".
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import cbor2
from marshmallow import Schema, fields, validate

from enclave_core import __version__, hookimpl
from enclave_core.crypto import cose
from enclave_core.crypto.devca import MARGIN, DevCa, LeafBundle
from enclave_core.errors import AttestationError, ConfigError, NsmError
from enclave_core.image.files import image_files, measure
from enclave_core.pcrs import PCR_HEX_RE
from enclave_core.plugin.interfaces import BackendContext, PcrState
from enclave_core.plugin.registry import BackendRegistry

MAX_PCRS = 32
BOOT_LOCKED = 16
PCR_SIZE = 48
MAX_RANDOM = 256
MAX_REQUEST = 4096  # NSM_REQUEST_MAX_SIZE of the kernel driver
KERNEL = f"simple-enclave simulated kernel {__version__}"
RUNTIME = f"simple-enclave simulated runtime {__version__}"


def measure_app_dir(app_dir: Path, exclude: tuple[Path, ...] = ()) -> bytes:
    """Return PCR0 for ``app_dir``: the digest of its image files.

    The files and the digest are :mod:`enclave_core.image.files`' (the same rule ``enclave
    build`` and the development snapshots use); ``exclude`` adds private paths (the state
    directory).
    """
    root = Path(app_dir).resolve()
    if not root.is_dir():
        raise AttestationError(f"simulated NSM: app directory {root} does not exist")
    return measure(image_files(root, private=exclude))


def _extend(old: bytes, data: bytes) -> bytes:
    return hashlib.sha384(old + data).digest()


class SimulatedNsm:
    """A software NSM with PCRs, locking, random bytes and dev-CA-signed attestation documents."""

    name: ClassVar[str] = "simulated"

    class Options(Schema):
        """``attestation.options`` of the simulated NSM."""

        pcr0 = fields.String(
            load_default=None, allow_none=True, validate=validate.Regexp(PCR_HEX_RE)
        )
        pcr8 = fields.String(
            load_default=None, allow_none=True, validate=validate.Regexp(PCR_HEX_RE)
        )
        module_id = fields.String(
            load_default=None,
            allow_none=True,
            validate=validate.Regexp(r"^i-[0-9A-Za-z]+-enc[0-9A-Za-z]+$"),
        )

    def __init__(
        self,
        *,
        state_dir: Path,
        app_dir: Path,
        region: str = "us-east-1",
        pcr0: bytes | None = None,
        module_id: str | None = None,
        pcr8: bytes | None = None,
    ) -> None:
        """:param pcr0: PCR0 instead of the measurement of ``app_dir``.
        :param pcr8: PCR8 of a signed image (the signing certificate's measurement); None for an
            unsigned image (all zero).
        """
        self._ca = DevCa(state_dir, region=region)
        if module_id is None:
            module_id = f"{self._ca.instance_id()}-enc{secrets.token_hex(8)}"
        self.module_id = module_id
        instance_id = module_id.split("-enc", 1)[0]
        self._lock = threading.Lock()
        self._leaf: LeafBundle | None = None
        self._pcrs = [bytes(PCR_SIZE) for _ in range(MAX_PCRS)]
        self._pcrs[0] = pcr0 if pcr0 is not None else measure_app_dir(app_dir, (Path(state_dir),))
        self._pcrs[1] = hashlib.sha384(KERNEL.encode()).digest()
        self._pcrs[2] = hashlib.sha384(RUNTIME.encode()).digest()
        self._pcrs[4] = _extend(bytes(PCR_SIZE), instance_id.encode("ascii"))
        if pcr8 is not None:
            self._pcrs[8] = pcr8
        self._locked = set(range(BOOT_LOCKED))

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> SimulatedNsm:
        """Build the NSM for ``context``; refuse production mode."""
        if context.mode == "production":
            raise ConfigError(
                "attestation backend 'simulated' is for development only; mode: production "
                "needs the 'nitro' backend"
            )
        pcr0, pcr8 = options.get("pcr0"), options.get("pcr8")
        return cls(
            state_dir=context.state_dir,
            app_dir=context.app_dir,
            region=context.region,
            pcr0=bytes.fromhex(pcr0) if pcr0 else None,
            module_id=options.get("module_id"),
            pcr8=bytes.fromhex(pcr8) if pcr8 else None,
        )

    @staticmethod
    def _check_index(index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_PCRS:
            raise NsmError("InvalidIndex", f"NSM: PCR index {index!r} is not in 0..31")

    def describe_pcr(self, index: int) -> PcrState:
        """Return PCR ``index``'s value and lock state."""
        self._check_index(index)
        with self._lock:
            return PcrState(index=index, data=self._pcrs[index], locked=index in self._locked)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data`` and return the new value."""
        self._check_index(index)
        if len(cbor2.dumps({"ExtendPCR": {"index": index, "data": bytes(data)}})) > MAX_REQUEST:
            raise NsmError("InputTooLarge", f"NSM: extend data for PCR{index} is too large")
        with self._lock:
            if index in self._locked:
                raise NsmError("ReadOnlyIndex", f"NSM: PCR{index} is locked")
            self._pcrs[index] = _extend(self._pcrs[index], bytes(data))
            return self._pcrs[index]

    def lock_pcr(self, index: int) -> None:
        """Lock PCR ``index``; a PCR that is already locked (0..15 from boot) is read-only."""
        self._check_index(index)
        with self._lock:
            if index in self._locked:
                raise NsmError("ReadOnlyIndex", f"NSM: PCR{index} is already locked")
            self._locked.add(index)

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``[0, range_)``; those already locked stay locked."""
        if isinstance(range_, bool) or not isinstance(range_, int) or range_ < 0:
            raise NsmError("InvalidArgument", f"NSM: invalid PCR range {range_!r}")
        if range_ > MAX_PCRS:
            raise NsmError("InvalidIndex", f"NSM: PCR range {range_} exceeds {MAX_PCRS}")
        with self._lock:
            self._locked.update(range(range_))

    def describe_nsm(self) -> dict[str, Any]:
        """Return the module's description, as DescribeNSM does."""
        major, minor, patch = (int(p) for p in (re.findall(r"\d+", __version__) + ["0"] * 3)[:3])
        with self._lock:
            locked = sorted(self._locked)
        return {
            "version_major": major,
            "version_minor": minor,
            "version_patch": patch,
            "module_id": self.module_id,
            "max_pcrs": MAX_PCRS,
            "locked_pcrs": locked,
            "digest": "SHA384",
        }

    def get_random(self, length: int = 32) -> bytes:
        """Return ``length`` (at most 256) random bytes."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise NsmError("InvalidArgument", f"NSM: invalid random length {length!r}")
        if length > MAX_RANDOM:
            raise NsmError("InputTooLarge", f"NSM: at most {MAX_RANDOM} random bytes per call")
        return os.urandom(length)

    def _signing_leaf(self) -> LeafBundle:
        # The NSM's leaf lives about 3 hours; issue a fresh one before it runs out.
        if self._leaf is None or self._leaf.expires_within(MARGIN):
            self._leaf = self._ca.issue_leaf(self.module_id)
        return self._leaf

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """Return a signed attestation document (untagged COSE_Sign1) binding the three fields."""
        for field, value in (
            ("user_data", user_data),
            ("nonce", nonce),
            ("public_key", public_key),
        ):
            if value is not None and len(value) > cose.MAX_FIELD_BYTES:
                raise NsmError("InputTooLarge", f"NSM: {field} is over 1024 bytes")
        with self._lock:
            pcrs = {
                i: self._pcrs[i] for i in range(MAX_PCRS) if i < BOOT_LOCKED or i in self._locked
            }
            leaf = self._signing_leaf()
        payload = cose.build_document(
            module_id=self.module_id,
            timestamp_ms=time.time_ns() // 1_000_000,
            pcrs=pcrs,
            certificate=leaf.certificate,
            cabundle=leaf.cabundle,
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )
        return cose.sign1(payload, leaf.private_key)


@hookimpl
def enclave_register_attestation(registry: BackendRegistry[Any]) -> None:
    """Register the ``simulated`` attestation backend."""
    registry.add(SimulatedNsm)
