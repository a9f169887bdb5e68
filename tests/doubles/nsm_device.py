"""A test-only stand-in for ``/dev/nsm``: an ``ioctl`` function that plays the kernel driver.

:class:`FakeNsmDevice` is called exactly as ``fcntl.ioctl(fd, request, buf, mutate)`` would be. It
unpacks ``struct nsm_raw`` from the 32 bytes itself (``struct``, not the product's ctypes
classes), reads the request from the address in it, answers by delegating to a
:class:`SimulatedNsm` and writes the CBOR answer and its length back, as the driver does. It uses
plain cbor2 rather than the product's codec, so the two are checked against each other.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.errors import NsmError

NSM_IOCTL_RAW = 0xC0200A00
REQUEST_MAX = 0x1000
RESPONSE_CAPACITY = 0x3000
RAW_LAYOUT = "=QQQQ"  # request.addr, request.len, response.addr, response.len


@dataclass
class Call:
    """One ioctl as the fake saw it."""

    fd: int
    code: int
    request: bytes
    capacity: int
    mutate: bool


@dataclass
class FakeNsmDevice:
    """Plays the NSM driver on top of a simulated NSM; knobs let tests break it on purpose.

    :ivar response: when set, answered verbatim instead of the simulated NSM's answer.
    :ivar reported_length: when set, written back as response.len instead of the real length.
    :ivar fail_errno: when set, the ioctl raises OSError(fail_errno) as the driver would.
    :ivar random_chunk: how many bytes each GetRandom answer carries.
    :ivar delay: seconds each call lingers, so overlapping calls (a missing lock) show up.
    """

    nsm: SimulatedNsm
    response: bytes | None = None
    reported_length: int | None = None
    fail_errno: int | None = None
    random_chunk: int = 256
    delay: float = 0.0
    calls: list[Call] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, fd: int, code: int, buf: Any, mutate: bool = True) -> int:
        """Handle one ``ioctl(fd, code, buf, mutate)``."""
        assert code == NSM_IOCTL_RAW, hex(code)
        assert isinstance(buf, bytearray) and len(buf) == 32
        assert mutate is True
        os.fstat(fd)  # the backend passes the descriptor it really opened
        with self._guard:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.delay:
                time.sleep(self.delay)
            return self._handle(fd, code, buf, mutate)
        finally:
            with self._guard:
                self.concurrent -= 1

    def _handle(self, fd: int, code: int, buf: bytearray, mutate: bool) -> int:
        req_addr, req_len, resp_addr, capacity = struct.unpack(RAW_LAYOUT, bytes(buf))
        request = ctypes.string_at(req_addr, req_len)
        self.calls.append(Call(fd, code, request, capacity, mutate))
        if self.fail_errno is not None:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        if req_len > REQUEST_MAX:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        answer = self.response if self.response is not None else self.answer(request)
        if len(answer) > capacity:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        ctypes.memmove(resp_addr, answer, len(answer))
        length = self.reported_length if self.reported_length is not None else len(answer)
        struct.pack_into("=Q", buf, 24, length)
        return 0

    def answer(self, request: bytes) -> bytes:
        """Return the CBOR answer the NSM gives to ``request``."""
        message = cbor2.loads(request)
        try:
            return cbor2.dumps(self._dispatch(message))
        except NsmError as exc:
            return cbor2.dumps({"Error": exc.code})

    def _dispatch(self, message: Any) -> Any:
        nsm = self.nsm
        if message == "DescribeNSM":
            return {"DescribeNSM": nsm.describe_nsm()}
        if message == "GetRandom":
            return {"GetRandom": {"random": nsm.get_random(self.random_chunk)}}
        assert isinstance(message, dict) and len(message) == 1, message
        ((variant, body),) = message.items()
        if variant == "DescribePCR":
            state = nsm.describe_pcr(body["index"])
            return {"DescribePCR": {"lock": state.locked, "data": state.data}}
        if variant == "ExtendPCR":
            return {"ExtendPCR": {"data": nsm.extend_pcr(body["index"], body["data"])}}
        if variant == "LockPCR":
            nsm.lock_pcr(body["index"])
            return "LockPCR"
        if variant == "LockPCRs":
            nsm.lock_pcrs(body["range"])
            return "LockPCRs"
        if variant == "Attestation":
            assert list(body) == ["user_data", "nonce", "public_key"], body
            return {"Attestation": {"document": nsm.attestation(**body)}}
        return {"Error": "InvalidOperation"}
