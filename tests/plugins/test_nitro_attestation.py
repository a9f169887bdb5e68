"""Tests for the ``nitro`` NSM backend, through a fake ``/dev/nsm`` that plays the kernel driver.

The same scenarios run against the ``simulated`` backend and against ``nitro`` talking to a fake
device backed by a simulated NSM, so both must give the same answers and the same error codes.
Byte-level tests pin the ioctl number, the ``struct nsm_raw`` layout and the CBOR requests.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import marshmallow
import pytest
from enclave_plugins.nitro_attestation import NSM_IOCTL_RAW, NitroNsm, NsmRaw
from enclave_plugins.simulated_attestation import SimulatedNsm
from loguru import logger

from enclave_core.crypto import cose, nsm_protocol
from enclave_core.errors import AttestationError, NsmError
from enclave_core.plugin.interfaces import Attestation
from enclave_core.plugin.manager import get_plugin_manager
from tests.doubles.nsm_device import FakeNsmDevice
from tests.helpers import backend_context

MODULE_ID = "i-0a22e5c5f24d22174-enc0191cceb4289903f"


def _sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


@pytest.fixture
def simulated(tmp_path: Path) -> SimulatedNsm:
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_bytes(b"print('hello')\n")
    return SimulatedNsm(state_dir=tmp_path / "state", app_dir=app, module_id=MODULE_ID)


@pytest.fixture
def device(simulated: SimulatedNsm) -> FakeNsmDevice:
    return FakeNsmDevice(simulated)


@pytest.fixture
def device_path(tmp_path: Path) -> str:
    path = tmp_path / "nsm"  # a real file, so the backend holds a real descriptor
    path.write_bytes(b"")
    return str(path)


@pytest.fixture
def nitro(device: FakeNsmDevice, device_path: str) -> Iterator[NitroNsm]:
    backend = NitroNsm(device=device_path, ioctl=device)
    yield backend
    backend.close()


@pytest.fixture(params=["simulated", "nitro"])
def either_nsm(request: pytest.FixtureRequest) -> Attestation:
    backend: Attestation = request.getfixturevalue(request.param)
    return backend


# ------------------------------------------------------------------ same behaviour, both backends


def test_describe_and_extend_math(either_nsm: Attestation) -> None:
    assert isinstance(either_nsm, Attestation)
    assert either_nsm.describe_pcr(4).data == _sha384(bytes(48) + b"i-0a22e5c5f24d22174")
    assert either_nsm.describe_pcr(4).locked is True
    first = either_nsm.extend_pcr(16, b"hello")
    assert first == _sha384(bytes(48) + b"hello")
    second = either_nsm.extend_pcr(16, b"")
    assert second == _sha384(first)
    state = either_nsm.describe_pcr(16)
    assert (state.index, state.data, state.locked) == (16, second, False)
    assert either_nsm.describe_pcr(31).data == bytes(48)


@pytest.mark.parametrize("index", [0, 5, 15])
def test_boot_locked_pcrs_are_read_only(either_nsm: Attestation, index: int) -> None:
    before = either_nsm.describe_pcr(index).data
    for operation in (
        lambda: either_nsm.extend_pcr(index, b"x"),
        lambda: either_nsm.lock_pcr(index),
    ):
        with pytest.raises(NsmError) as caught:
            operation()
        assert caught.value.code == "ReadOnlyIndex"
    assert either_nsm.describe_pcr(index).data == before


def test_lock_pcr_makes_it_read_only(either_nsm: Attestation) -> None:
    value = either_nsm.extend_pcr(17, b"measured")
    either_nsm.lock_pcr(17)
    assert either_nsm.describe_pcr(17).locked is True
    for operation in (lambda: either_nsm.extend_pcr(17, b"x"), lambda: either_nsm.lock_pcr(17)):
        with pytest.raises(NsmError) as caught:
            operation()
        assert caught.value.code == "ReadOnlyIndex"
    assert either_nsm.describe_pcr(17).data == value
    assert either_nsm.describe_nsm()["locked_pcrs"] == [*range(16), 17]


@pytest.mark.parametrize("index", [32, 100, 65535, 65536, -1, True])
def test_index_out_of_range_is_invalid_index(either_nsm: Attestation, index: int) -> None:
    for operation in (
        lambda: either_nsm.describe_pcr(index),
        lambda: either_nsm.extend_pcr(index, b"x"),
        lambda: either_nsm.lock_pcr(index),
    ):
        with pytest.raises(NsmError) as caught:
            operation()
        assert caught.value.code == "InvalidIndex"


def test_lock_pcrs_range(either_nsm: Attestation) -> None:
    either_nsm.lock_pcrs(20)
    assert either_nsm.describe_nsm()["locked_pcrs"] == list(range(20))
    assert [either_nsm.describe_pcr(i).locked for i in (19, 20)] == [True, False]
    with pytest.raises(NsmError) as caught:
        either_nsm.extend_pcr(19, b"x")
    assert caught.value.code == "ReadOnlyIndex"
    either_nsm.extend_pcr(20, b"x")
    for bad, code in ((33, "InvalidIndex"), (70000, "InvalidIndex"), (-1, "InvalidArgument")):
        with pytest.raises(NsmError) as caught:
            either_nsm.lock_pcrs(bad)
        assert caught.value.code == code
    either_nsm.lock_pcrs(32)
    assert either_nsm.describe_nsm()["locked_pcrs"] == list(range(32))
    with pytest.raises(NsmError, match="PCR31"):
        either_nsm.extend_pcr(31, b"x")


def test_describe_nsm_fields(either_nsm: Attestation) -> None:
    described = either_nsm.describe_nsm()
    assert set(described) == {
        "version_major",
        "version_minor",
        "version_patch",
        "module_id",
        "max_pcrs",
        "locked_pcrs",
        "digest",
    }
    assert described["module_id"] == MODULE_ID
    assert (described["max_pcrs"], described["digest"]) == (32, "SHA384")
    assert described["locked_pcrs"] == list(range(16))
    assert all(isinstance(described[k], int) for k in ("version_major", "version_minor"))


@pytest.mark.parametrize("length", [0, 1, 32, 256])
def test_get_random_lengths(either_nsm: Attestation, length: int) -> None:
    values = {either_nsm.get_random(length) for _ in range(3)}
    assert {len(v) for v in values} == {length}
    # Three draws of 32 bytes or more never repeat (2^-256); one-byte draws may, 1 time in 85.
    if length == 0 or length >= 32:
        assert len(values) == (1 if length == 0 else 3)


def test_get_random_negative_length_is_invalid_argument(either_nsm: Attestation) -> None:
    with pytest.raises(NsmError) as caught:
        either_nsm.get_random(-1)
    assert caught.value.code == "InvalidArgument"


def _decoded(document: bytes) -> dict[str, Any]:
    return cose.decode_document(cose.decode_sign1(document).payload)


def test_attestation_documents_carry_the_fields(either_nsm: Attestation) -> None:
    document = _decoded(
        either_nsm.attestation(user_data=b"u" * 1024, nonce=b"n", public_key=b"k" * 3)
    )
    assert (document["user_data"], document["nonce"]) == (b"u" * 1024, b"n")
    assert document["public_key"] == b"kkk"
    assert document["module_id"] == MODULE_ID
    assert document["pcrs"][4] == either_nsm.describe_pcr(4).data
    empty = _decoded(either_nsm.attestation())
    assert (empty["user_data"], empty["nonce"], empty["public_key"]) == (None, None, None)


@pytest.mark.parametrize("field", ["user_data", "nonce", "public_key"])
def test_attestation_field_over_1024_bytes(either_nsm: Attestation, field: str) -> None:
    with pytest.raises(NsmError) as caught:
        either_nsm.attestation(**{field: bytes(1025)})
    assert caught.value.code == "InputTooLarge"


def test_extend_data_too_large(either_nsm: Attestation) -> None:
    with pytest.raises(NsmError) as caught:
        either_nsm.extend_pcr(16, bytes(5000))
    assert caught.value.code == "InputTooLarge"
    assert either_nsm.describe_pcr(16).data == bytes(48)


# ------------------------------------------------------------------ nitro only: the wire


def test_ioctl_number_is_iowr_of_nsm_raw() -> None:
    size = 32
    assert ctypes.sizeof(NsmRaw) == size
    assert NSM_IOCTL_RAW == (3 << 30) | (size << 16) | (0x0A << 8) | 0 == 0xC0200A00


def test_struct_layout_and_capacity(nitro: NitroNsm, device: FakeNsmDevice) -> None:
    nitro.describe_pcr(0)  # the fake asserts the code, len(buf) == 32 and mutate
    (call,) = device.calls
    assert (call.code, call.capacity, call.mutate) == (0xC0200A00, 0x3000, True)


def test_get_random_over_256_bytes_takes_several_calls(
    nitro: NitroNsm, device: FakeNsmDevice
) -> None:
    assert len(nitro.get_random(1000)) == 1000
    assert len(device.calls) == 4
    assert {c.request for c in device.calls} == {cbor2.dumps("GetRandom")}
    device.calls.clear()
    device.random_chunk = 100  # an NSM that answers with fewer bytes
    assert len(nitro.get_random(1000)) == 1000
    assert len(device.calls) == 10


def test_get_random_limits(nitro: NitroNsm, device: FakeNsmDevice) -> None:
    with pytest.raises(NsmError) as caught:
        nitro.get_random((1 << 20) + 1)
    assert caught.value.code == "InputTooLarge"
    assert device.calls == []
    device.random_chunk = 1  # too stingy: the loop gives up instead of spinning
    with pytest.raises(NsmError) as caught:
        nitro.get_random(512)
    assert caught.value.code == "InvalidResponse"
    assert len(device.calls) == 8


REQUESTS: list[tuple[Callable[[NitroNsm], object], object]] = [
    (lambda n: n.describe_pcr(3), {"DescribePCR": {"index": 3}}),
    (lambda n: n.extend_pcr(16, b"\x00ab"), {"ExtendPCR": {"index": 16, "data": b"\x00ab"}}),
    (lambda n: n.lock_pcr(18), {"LockPCR": {"index": 18}}),
    (lambda n: n.lock_pcrs(20), {"LockPCRs": {"range": 20}}),
    (lambda n: n.describe_nsm(), "DescribeNSM"),
    (lambda n: n.get_random(8), "GetRandom"),
    (
        lambda n: n.attestation(nonce=b"n"),
        {"Attestation": {"user_data": None, "nonce": b"n", "public_key": None}},
    ),
    (
        lambda n: n.attestation(user_data=b"u", nonce=b"n", public_key=b"k"),
        {"Attestation": {"user_data": b"u", "nonce": b"n", "public_key": b"k"}},
    ),
]


@pytest.mark.parametrize(("operation", "expected"), REQUESTS)
def test_request_bytes(
    nitro: NitroNsm,
    device: FakeNsmDevice,
    operation: Callable[[NitroNsm], object],
    expected: object,
) -> None:
    operation(nitro)
    assert [c.request for c in device.calls] == [cbor2.dumps(expected)]


@pytest.mark.parametrize("expected", [e for _, e in REQUESTS])
def test_codec_device_side_round_trip(expected: object) -> None:
    variant, fields = nsm_protocol.decode_request(cbor2.dumps(expected))
    assert (variant if fields == {} else {variant: fields}) == expected
    assert nsm_protocol.encode_request(variant, fields or None) == cbor2.dumps(expected)


def test_codec_rejects_bad_requests_and_encodes_answers() -> None:
    for bad in (
        cbor2.dumps("Reboot"),
        cbor2.dumps({"DescribePCR": {"index": -1}}),
        cbor2.dumps({"DescribePCR": {"index": 1, "extra": 2}}),
        cbor2.dumps({"ExtendPCR": {"index": 16, "data": "text"}}),
        cbor2.dumps({"GetRandom": {}}),
        cbor2.dumps("DescribeNSM") + b"\x00",
    ):
        with pytest.raises(NsmError) as caught:
            nsm_protocol.decode_request(bad)
        assert caught.value.code == "InvalidArgument"
    assert nsm_protocol.encode_response("LockPCR") == cbor2.dumps("LockPCR")
    answer = {"lock": True, "data": bytes(48)}
    encoded = nsm_protocol.encode_response("DescribePCR", answer)
    assert encoded == cbor2.dumps({"DescribePCR": answer})
    assert nsm_protocol.decode_response(encoded, "DescribePCR") == answer
    assert nsm_protocol.encode_error("ReadOnlyIndex") == cbor2.dumps({"Error": "ReadOnlyIndex"})
    with pytest.raises(NsmError):
        nsm_protocol.encode_response("DescribePCR", {"lock": True, "data": bytes(47)})


def test_request_bytes_literal(nitro: NitroNsm, device: FakeNsmDevice) -> None:
    nitro.describe_pcr(3)
    nitro.describe_nsm()
    assert device.calls[0].request == bytes.fromhex("a16b4465736372696265504352a165696e64657803")
    assert device.calls[1].request == b"\x6b" + b"DescribeNSM"


GOOD_PCR = {"DescribePCR": {"lock": False, "data": bytes(48)}}
BAD_RESPONSES = [
    b"",
    b"\xff",
    cbor2.dumps(GOOD_PCR)[:-5],  # truncated
    cbor2.dumps(GOOD_PCR) + b"\x00",  # trailing byte
    b"\xa1\x6bDescribePCR\xa2\x64lock\xf4\x64lock\xf4",  # duplicate key
    cbor2.dumps("DescribePCR"),  # unit instead of struct variant
    cbor2.dumps({"ExtendPCR": {"data": bytes(48)}}),  # wrong variant
    cbor2.dumps({"DescribePCR": {"lock": 0, "data": bytes(48)}}),  # lock not a bool
    cbor2.dumps({"DescribePCR": {"lock": False, "data": bytes(47)}}),  # not SHA-384 sized
    cbor2.dumps({"DescribePCR": {"lock": False, "data": "00" * 48}}),  # text, not bytes
    cbor2.dumps({"DescribePCR": {"lock": False}}),  # missing field
    cbor2.dumps({"DescribePCR": {"lock": False, "data": bytes(48), "x": 1}}),  # extra field
    cbor2.dumps({**GOOD_PCR, "LockPCR": None}),  # two variants
    cbor2.dumps({"Error": "NoSuchCode"}),
    cbor2.dumps({"Error": 3}),
    cbor2.dumps({"Error": "Success"}),
    cbor2.dumps([GOOD_PCR]),
]


@pytest.mark.parametrize("response", BAD_RESPONSES)
def test_malformed_responses_are_invalid_response(
    nitro: NitroNsm, device: FakeNsmDevice, response: bytes
) -> None:
    device.response = response
    with pytest.raises(NsmError) as caught:
        nitro.describe_pcr(16)
    assert caught.value.code == "InvalidResponse"


@pytest.mark.parametrize(
    ("operation", "response"),
    [
        (lambda n: n.get_random(8), {"GetRandom": {"random": b""}}),
        (lambda n: n.attestation(), {"Attestation": {"document": b""}}),
        (lambda n: n.lock_pcr(16), {"LockPCR": {}}),
        (lambda n: n.describe_nsm(), {"DescribeNSM": {"module_id": MODULE_ID}}),
        (lambda n: n.extend_pcr(16, b"x"), {"ExtendPCR": {"data": bytes(64)}}),
    ],
)
def test_malformed_answers_to_each_operation(
    nitro: NitroNsm,
    device: FakeNsmDevice,
    operation: Callable[[NitroNsm], object],
    response: object,
) -> None:
    device.response = cbor2.dumps(response)
    with pytest.raises(NsmError) as caught:
        operation(nitro)
    assert caught.value.code == "InvalidResponse"


def test_reported_length_over_capacity(nitro: NitroNsm, device: FakeNsmDevice) -> None:
    device.reported_length = 0x3001
    with pytest.raises(NsmError) as caught:
        nitro.describe_nsm()
    assert caught.value.code == "InvalidResponse"


def test_error_answers_map_to_their_code(nitro: NitroNsm, device: FakeNsmDevice) -> None:
    for code in ("InvalidOperation", "BufferTooSmall", "InternalError"):
        device.response = cbor2.dumps({"Error": code})
        with pytest.raises(NsmError) as caught:
            nitro.describe_nsm()
        assert caught.value.code == code


def test_errno_mapping(nitro: NitroNsm, device: FakeNsmDevice) -> None:
    device.fail_errno = errno.EMSGSIZE
    with pytest.raises(NsmError) as caught:
        nitro.describe_nsm()
    assert caught.value.code == "InputTooLarge"
    device.fail_errno = errno.EIO
    with pytest.raises(NsmError, match="EIO") as caught:
        nitro.describe_nsm()
    assert caught.value.code == "InternalError"


def test_request_over_4096_bytes_is_refused_before_the_ioctl(
    nitro: NitroNsm, device: FakeNsmDevice
) -> None:
    nitro.extend_pcr(16, bytes(4096 - 32))  # fits: 4096 - 32 bytes of data plus the envelope
    assert len(device.calls[0].request) <= 4096
    with pytest.raises(NsmError) as caught:
        nitro.extend_pcr(16, bytes(4096))
    assert caught.value.code == "InputTooLarge"
    with pytest.raises(NsmError):
        nitro.attestation(user_data=bytes(1025))
    assert len(device.calls) == 1


def test_errors_are_logged_with_their_code_and_never_the_data(
    nitro: NitroNsm, device: FakeNsmDevice
) -> None:
    records: list[str] = []
    sink = logger.add(records.append, serialize=True, level="DEBUG")
    try:
        device.fail_errno = errno.EIO
        with pytest.raises(NsmError):
            nitro.attestation(user_data=b"USER-SECRET", nonce=b"NONCE-SECRET")
        with pytest.raises(NsmError):
            nitro.extend_pcr(16, b"PCR-SECRET" * 500)
    finally:
        logger.remove(sink)
    assert len(records) == 2
    assert '"code": "InternalError"' in records[0] and '"code": "InputTooLarge"' in records[1]
    assert not any("SECRET" in r or b"SECRET".hex() in r for r in records)


def test_real_fcntl_ioctl_on_a_plain_file_is_internal_error(device_path: str) -> None:
    with NitroNsm(device=device_path) as backend, pytest.raises(NsmError, match="ENOTTY") as caught:
        backend.describe_nsm()
    assert caught.value.code == "InternalError"


# ------------------------------------------------------------------ the device file


def test_missing_device(tmp_path: Path) -> None:
    missing = tmp_path / "no-nsm"
    with pytest.raises(AttestationError) as caught:
        NitroNsm(device=str(missing)).describe_nsm()
    assert str(caught.value) == (
        f"NSM device {missing} not found: is this running inside a Nitro Enclave "
        "(and is the nsm driver loaded)?"
    )
    assert not isinstance(caught.value, NsmError)

    def absent(path: str, flags: int) -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    with pytest.raises(AttestationError) as caught:
        NitroNsm(opener=absent).get_random(1)
    assert str(caught.value) == (
        "NSM device /dev/nsm not found: is this running inside a Nitro Enclave "
        "(and is the nsm driver loaded)?"
    )


def test_device_opened_lazily_once_read_write_and_closed(
    device: FakeNsmDevice, device_path: str, tmp_path: Path
) -> None:
    opened: list[tuple[str, int]] = []

    def opener(path: str, flags: int) -> int:
        opened.append((path, flags))
        return os.open(path, flags)

    context = backend_context(tmp_path, mode="production")
    options = NitroNsm.Options().load({"device": device_path})
    backend = NitroNsm.from_options(options, context)
    assert backend.device == device_path
    backend = NitroNsm(device=device_path, ioctl=device, opener=opener)
    assert opened == []
    backend.describe_nsm()
    backend.get_random(600)
    assert opened == [(device_path, os.O_RDWR | os.O_CLOEXEC)]
    fds = {c.fd for c in device.calls}
    assert len(fds) == 1
    backend.close()
    with pytest.raises(OSError):
        os.fstat(fds.pop())
    backend.describe_nsm()  # opens again after close
    assert len(opened) == 2
    backend.close()
    backend.close()


def test_options() -> None:
    assert NitroNsm.Options().load({}) == {"device": "/dev/nsm"}
    for bad in ({"device": ""}, {"path": "/dev/nsm"}):
        with pytest.raises(marshmallow.ValidationError):
            NitroNsm.Options().load(bad)


def test_requests_are_serialised(nitro: NitroNsm, device: FakeNsmDevice) -> None:
    device.delay = 0.002  # widens the window in which unserialised calls would overlap

    def work(index: int) -> None:
        for _ in range(20):
            nitro.extend_pcr(index, b"x")

    threads = [threading.Thread(target=work, args=(16 + i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = bytes(48)
    for _ in range(20):
        expected = _sha384(expected + b"x")
    assert {nitro.describe_pcr(16 + i).data for i in range(6)} == {expected}
    assert device.max_concurrent == 1
    assert len({c.fd for c in device.calls}) == 1


def test_hook_enclave_register_attestation_nitro() -> None:
    plugins = get_plugin_manager()
    assert plugins.attestation.get("nitro") is NitroNsm
    assert plugins.attestation.owner("nitro") == "nitro-attestation"
