"""``nitro`` attestation: the real Nitro Secure Module, driven through ``/dev/nsm``.

Options (``attestation.options``): ``device``, the NSM character device (default ``/dev/nsm``).
Each operation is one ``NSM_IOCTL_RAW`` ioctl whose messages :mod:`enclave_core.crypto.nsm_protocol`
encodes and checks; errors are :class:`NsmError` with the NSM's code, as the ``simulated`` backend
raises them. The ioctl layout and the error mapping: docs/architecture.md, "Attestation documents
and the simulated NSM".
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from loguru import logger
from marshmallow import Schema, fields, validate

from enclave_core import hookimpl
from enclave_core.crypto import nsm_protocol as proto
from enclave_core.errors import AttestationError, NsmError
from enclave_core.plugin.interfaces import BackendContext, PcrState
from enclave_core.plugin.registry import BackendRegistry

DEFAULT_DEVICE = "/dev/nsm"
NSM_MAGIC = 0x0A
MAX_FIELD_BYTES = 1024  # user_data, nonce and public_key of an attestation request
MAX_RANDOM_TOTAL = 1 << 20
RANDOM_CHUNK = 256  # what the NSM returns per GetRandom


class NsmIovec(ctypes.Structure):
    """``struct nsm_iovec { __u64 addr; __u64 len; }``."""

    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class NsmRaw(ctypes.Structure):
    """``struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; }``."""

    _fields_ = [("request", NsmIovec), ("response", NsmIovec)]


def _iowr(kind: int, nr: int, size: int) -> int:
    """Linux ``_IOWR``: direction read|write (3) << 30 | size << 16 | type << 8 | nr."""
    return (3 << 30) | (size << 16) | (kind << 8) | nr


#: ``_IOWR(NSM_MAGIC, 0, struct nsm_raw)`` = 0xC0200A00.
NSM_IOCTL_RAW = _iowr(NSM_MAGIC, 0, ctypes.sizeof(NsmRaw))

IoctlFn = Callable[[int, int, bytearray, bool], Any]
OpenerFn = Callable[[str, int], int]


class NitroNsm:
    """The Nitro Secure Module of the enclave this process runs in."""

    name: ClassVar[str] = "nitro"

    class Options(Schema):
        """``attestation.options`` of the nitro NSM."""

        device = fields.String(load_default=DEFAULT_DEVICE, validate=validate.Length(min=1))

    def __init__(
        self,
        device: str = DEFAULT_DEVICE,
        *,
        ioctl: IoctlFn = fcntl.ioctl,
        opener: OpenerFn = os.open,
    ) -> None:
        self.device = str(device)
        self._ioctl = ioctl
        self._opener = opener
        self._fd: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> NitroNsm:
        """Build the backend; the device is not opened until the first request."""
        return cls(device=options.get("device") or DEFAULT_DEVICE)

    # ------------------------------------------------------------------ device

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = self._opener(self.device, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                raise AttestationError(
                    f"NSM device {self.device} not found: is this running inside a Nitro Enclave "
                    "(and is the nsm driver loaded)?"
                ) from None
            except OSError as exc:
                raise AttestationError(
                    f"cannot open NSM device {self.device}: {exc.strerror or exc}"
                ) from None
        return self._fd

    def close(self) -> None:
        """Close the device; a later request opens it again."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> NitroNsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exchange(self, request: bytes) -> bytes:
        """Send one request through NSM_IOCTL_RAW and return the response bytes (lock held)."""
        fd = self._open()
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(proto.RESPONSE_MAX_SIZE)
        buf = bytearray(ctypes.sizeof(NsmRaw))
        raw = NsmRaw.from_buffer(buf)
        raw.request.addr, raw.request.len = ctypes.addressof(req), len(request)
        raw.response.addr, raw.response.len = ctypes.addressof(resp), proto.RESPONSE_MAX_SIZE
        try:
            # mutate=True: the driver writes response.len back into buf.
            self._ioctl(fd, NSM_IOCTL_RAW, buf, True)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            if exc.errno == errno.EMSGSIZE:
                raise NsmError("InputTooLarge", f"NSM ioctl on {self.device}: {name}") from None
            raise NsmError("InternalError", f"NSM ioctl on {self.device} failed: {name}") from None
        length = raw.response.len
        if length > proto.RESPONSE_MAX_SIZE:
            raise NsmError("InvalidResponse", f"NSM ioctl: response length {length} is too large")
        return ctypes.string_at(resp, length)

    def _call(
        self, variant: str, body: dict[str, Any] | None = None, subject: str = ""
    ) -> dict[str, Any]:
        """Send ``variant`` with ``body`` and return the checked response fields.

        ``subject`` names the resource (``"PCR16"``) in error messages.
        """
        try:
            request = proto.encode_request(variant, body)
            if len(request) > proto.REQUEST_MAX_SIZE:
                raise NsmError(
                    "InputTooLarge",
                    f"NSM {variant} {subject}".rstrip()
                    + f": request of {len(request)} bytes exceeds "
                    f"{proto.REQUEST_MAX_SIZE}",
                )
            with self._lock:
                response = self._exchange(request)
            return proto.decode_response(response, variant, subject)
        except NsmError as exc:
            logger.bind(operation=variant, code=exc.code).warning("NSM request failed")
            raise

    def _fail(self, variant: str, code: str, message: str) -> NsmError:
        logger.bind(operation=variant, code=code).warning("NSM request failed")
        return NsmError(code, message)

    # ------------------------------------------------------------------ operations

    def _index(self, variant: str, index: int) -> int:
        """Return ``index`` if it fits the request's u16; the NSM itself rejects 32..65535."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 0xFFFF:
            raise self._fail(variant, "InvalidIndex", f"NSM: PCR index {index!r} is out of range")
        return index

    def describe_pcr(self, index: int) -> PcrState:
        """Return PCR ``index``'s value and lock state."""
        index = self._index("DescribePCR", index)
        answer = self._call("DescribePCR", {"index": index}, f"PCR{index}")
        return PcrState(index=index, data=answer["data"], locked=answer["lock"])

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data`` and return its new value."""
        index = self._index("ExtendPCR", index)
        body = {"index": index, "data": bytes(data)}
        answer: bytes = self._call("ExtendPCR", body, f"PCR{index}")["data"]
        return answer

    def lock_pcr(self, index: int) -> None:
        """Lock PCR ``index`` against further extension."""
        index = self._index("LockPCR", index)
        self._call("LockPCR", {"index": index}, f"PCR{index}")

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``[0, range_)``."""
        if isinstance(range_, bool) or not isinstance(range_, int) or range_ < 0:
            raise self._fail("LockPCRs", "InvalidArgument", f"NSM: invalid PCR range {range_!r}")
        if range_ > 0xFFFF:
            raise self._fail("LockPCRs", "InvalidIndex", f"NSM: PCR range {range_} is too large")
        self._call("LockPCRs", {"range": range_}, f"PCRs 0..{range_ - 1}")

    def describe_nsm(self) -> dict[str, Any]:
        """Return version, module_id, max_pcrs, locked_pcrs (sorted) and digest."""
        answer = self._call("DescribeNSM")
        answer["locked_pcrs"] = sorted(answer["locked_pcrs"])
        return answer

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """Return a signed attestation document (COSE_Sign1 bytes) binding the three fields."""
        body: dict[str, bytes | None] = {}
        for field, value in (
            ("user_data", user_data),
            ("nonce", nonce),
            ("public_key", public_key),
        ):
            if value is not None and len(value) > MAX_FIELD_BYTES:
                raise self._fail("Attestation", "InputTooLarge", f"NSM: {field} is over 1024 bytes")
            body[field] = None if value is None else bytes(value)
        document: bytes = self._call("Attestation", body)["document"]
        return document

    def get_random(self, length: int = 32) -> bytes:
        """Return ``length`` (at most 1 MiB) random bytes, in as many GetRandom calls as needed."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise self._fail("GetRandom", "InvalidArgument", f"NSM: invalid length {length!r}")
        if length > MAX_RANDOM_TOTAL:
            raise self._fail("GetRandom", "InputTooLarge", f"NSM: {length} random bytes > 1 MiB")
        out = bytearray()
        # Bounded: tolerate answers down to a quarter of the usual 256 bytes, then give up.
        for _ in range(4 * -(-length // RANDOM_CHUNK)):
            if len(out) >= length:
                break
            out += self._call("GetRandom")["random"]
        if len(out) < length:
            raise self._fail("GetRandom", "InvalidResponse", "NSM: too few random bytes returned")
        return bytes(out[:length])


@hookimpl
def enclave_register_attestation(registry: BackendRegistry[Any]) -> None:
    """Register the ``nitro`` attestation backend."""
    registry.add(NitroNsm)
