"""The Nitro Secure Module's message format: CBOR requests and responses.

The NSM speaks serde_cbor encodings of Rust enums, externally tagged: a unit variant is a text
string, a struct variant a one-entry map ``{variant: {field: value}}``, a failure
``{"Error": "<ErrorCode>"}``. :func:`encode_request` and :func:`decode_response` (strict; raises
:class:`NsmError`) are the enclave's side; :func:`decode_request`, :func:`encode_response` and
:func:`encode_error` the device's, for emulators.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from enclave_core.errors import NsmError

#: ``NSM_REQUEST_MAX_SIZE`` and ``NSM_RESPONSE_MAX_SIZE`` of the kernel driver (``linux/nsm.h``).
REQUEST_MAX_SIZE = 0x1000
RESPONSE_MAX_SIZE = 0x3000
#: The NSM's ErrorCode enum.
ERROR_CODES = frozenset(
    {
        "Success",
        "InvalidArgument",
        "InvalidIndex",
        "InvalidResponse",
        "ReadOnlyIndex",
        "InvalidOperation",
        "BufferTooSmall",
        "InputTooLarge",
        "InternalError",
    }
)
DIGESTS = frozenset({"SHA256", "SHA384", "SHA512"})
#: Nitro Enclaves always use SHA-384, so every PCR value is 48 bytes.
PCR_SIZE = 48

Check = Callable[[Any], bool]


def _u16(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _bytes(value: Any) -> bool:
    return isinstance(value, bytes)


def _nonempty_bytes(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) > 0


def _optional_bytes(value: Any) -> bool:
    return value is None or isinstance(value, bytes)


def _pcr(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == PCR_SIZE


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 0


def _u16_list(value: Any) -> bool:
    return isinstance(value, list) and all(_u16(v) for v in value)


def _digest(value: Any) -> bool:
    return isinstance(value, str) and value in DIGESTS


#: Request variants: None for a unit variant, else the fields in serde (declaration) order.
REQUESTS: dict[str, dict[str, Check] | None] = {
    "DescribePCR": {"index": _u16},
    "ExtendPCR": {"index": _u16, "data": _bytes},
    "LockPCR": {"index": _u16},
    "LockPCRs": {"range": _u16},
    "DescribeNSM": None,
    "Attestation": {
        "user_data": _optional_bytes,
        "nonce": _optional_bytes,
        "public_key": _optional_bytes,
    },
    "GetRandom": None,
}
#: Success responses, by the request variant they answer.
RESPONSES: dict[str, dict[str, Check] | None] = {
    "DescribePCR": {"lock": _bool, "data": _pcr},
    "ExtendPCR": {"data": _pcr},
    "LockPCR": None,
    "LockPCRs": None,
    "DescribeNSM": {
        "version_major": _u16,
        "version_minor": _u16,
        "version_patch": _u16,
        "module_id": _text,
        "max_pcrs": _u16,
        "locked_pcrs": _u16_list,
        "digest": _digest,
    },
    "Attestation": {"document": _nonempty_bytes},
    "GetRandom": {"random": _nonempty_bytes},
}


def _encode(variant: str, fields: Mapping[str, Any] | None, table: dict[str, Any]) -> bytes:
    """Encode one enum value after checking it against ``table``'s shape for ``variant``."""
    if variant not in table:
        raise NsmError("InvalidArgument", f"NSM message: unknown variant {variant!r}")
    shape = table[variant]
    if shape is None:
        if fields:
            raise NsmError("InvalidArgument", f"NSM message: {variant} takes no fields")
        return cbor2.dumps(variant)
    given = dict(fields or {})
    if set(given) != set(shape) or not all(check(given[k]) for k, check in shape.items()):
        raise NsmError("InvalidArgument", f"NSM message: invalid fields for {variant}")
    return cbor2.dumps({variant: {k: given[k] for k in shape}})


def encode_request(variant: str, fields: Mapping[str, Any] | None = None) -> bytes:
    """Return the CBOR request for ``variant`` (a unit variant when ``fields`` is None)."""
    return _encode(variant, fields, REQUESTS)


def encode_response(variant: str, fields: Mapping[str, Any] | None = None) -> bytes:
    """Return the CBOR success response for ``variant`` (emulator side)."""
    return _encode(variant, fields, RESPONSES)


def encode_error(code: str) -> bytes:
    """Return the CBOR error response ``{"Error": code}`` (emulator side)."""
    if code not in ERROR_CODES:
        raise NsmError("InvalidArgument", f"NSM message: unknown error code {code!r}")
    return cbor2.dumps({"Error": code})


def _loads(data: bytes, code: str, what: str) -> Any:
    """Decode exactly one definite-length CBOR item; raise NsmError(code) otherwise."""
    buf = io.BytesIO(bytes(data))
    try:
        decoder = cbor2.CBORDecoder(
            buf, read_size=1, allow_indefinite=False, allow_duplicate_keys=False
        )
        item = decoder.decode()
    except Exception as exc:  # cbor2 raises assorted errors (and tag hooks more) on hostile input
        raise NsmError(code, f"{what}: not valid CBOR ({type(exc).__name__})") from None
    if buf.tell() != len(data):
        raise NsmError(code, f"{what}: {len(data) - buf.tell()} trailing byte(s)")
    return item


def _split(item: Any, code: str, what: str) -> tuple[str, Any]:
    """Split an externally tagged enum value into (variant, body); body is None for a unit."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and len(item) == 1:
        ((variant, body),) = item.items()
        if isinstance(variant, str):
            return variant, body
    raise NsmError(code, f"{what}: not a text string or a one-entry map")


def _check_body(body: Any, shape: dict[str, Check], code: str, what: str) -> dict[str, Any]:
    if not isinstance(body, dict) or set(body) != set(shape):
        raise NsmError(code, f"{what}: expected exactly the fields {sorted(shape)}")
    for key, check in shape.items():
        if not check(body[key]):
            raise NsmError(code, f"{what}: field {key!r} has the wrong type or size")
    return dict(body)


def decode_response(data: bytes, variant: str, subject: str = "") -> dict[str, Any]:
    """Parse the NSM's answer to a ``variant`` request and return its fields ({} for a unit).

    Raises NsmError with the module's code for ``{"Error": code}`` and ``InvalidResponse`` when
    the answer is malformed, of another variant or of the wrong shape. ``subject`` (say
    ``"PCR16"``) is named in the error messages.
    """
    label = f"NSM {variant} ({subject})" if subject else f"NSM {variant}"
    what = f"{label} response"
    got, body = _split(_loads(data, "InvalidResponse", what), "InvalidResponse", what)
    if got == "Error":
        if isinstance(body, str) and body in ERROR_CODES and body != "Success":
            raise NsmError(body, f"{label}: the module answered {body}")
        raise NsmError("InvalidResponse", f"{what}: malformed error code")
    if got != variant or variant not in RESPONSES:
        raise NsmError("InvalidResponse", f"{what}: got variant {got!r}")
    shape = RESPONSES[variant]
    if shape is None:
        if body is not None:
            raise NsmError("InvalidResponse", f"{what}: expected a unit variant")
        return {}
    if body is None:
        raise NsmError("InvalidResponse", f"{what}: expected a map of fields")
    return _check_body(body, shape, "InvalidResponse", what)


def decode_request(data: bytes) -> tuple[str, dict[str, Any]]:
    """Parse a request (emulator side) into (variant, fields); raise NsmError InvalidArgument."""
    what = "NSM request"
    variant, body = _split(_loads(data, "InvalidArgument", what), "InvalidArgument", what)
    if variant not in REQUESTS:
        raise NsmError("InvalidArgument", f"{what}: unknown variant {variant!r}")
    shape = REQUESTS[variant]
    if shape is None:
        if body is not None:
            raise NsmError("InvalidArgument", f"{what}: {variant} takes no fields")
        return variant, {}
    return variant, _check_body(body, shape, "InvalidArgument", f"{what} {variant}")
