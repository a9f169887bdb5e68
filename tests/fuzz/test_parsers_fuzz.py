"""Fuzz the parsers that read hostile input: only the project's own exceptions may come out.

Random bytes and mutations of valid seeds (real Nitro documents, a simulated NSM document, a
CiphertextForRecipient, NSM responses, examples/hello/enclave.yaml) go to the attestation
verifier and COSE parser, the CMS parser, the NSM response codec and the config loader. Anything
but the module's EnclaveError subclass fails the test, and so does an example slower than the
deadline (a hang). ``ENCLAVE_FUZZ_EXAMPLES`` scales the examples per test (default 120).
"""

from __future__ import annotations

import os
import string
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from enclave_plugins.simulated_attestation import SimulatedNsm
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from enclave_core.config import load_config, parse_config
from enclave_core.crypto import attestation, cms, cose, nsm_protocol
from enclave_core.errors import AttestationError, ConfigError, CryptoError, NsmError
from tests.vectors import NITRO as NITRO_DIR

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_YAML = REPO / "examples" / "hello" / "enclave.yaml"

FUZZ = settings(
    deadline=timedelta(seconds=2),
    max_examples=int(os.environ.get("ENCLAVE_FUZZ_EXAMPLES", "120")),
    suppress_health_check=[HealthCheck.too_slow],
)

# -- byte mutations -------------------------------------------------------------------------
# A mutation is (operation, position in 0..1 of the seed, bytes): positions are fractions so
# one strategy serves seeds of any length.
OPS = ("flip", "truncate", "insert", "delete", "replace", "duplicate")
mutations = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.floats(0, 1, allow_nan=False),
        st.binary(min_size=1, max_size=16),
    ),
    max_size=4,
)


def mutate(data: bytes, steps: list[tuple[str, float, bytes]]) -> bytes:
    """Apply byte-level mutations to ``data``."""
    for op, where, chunk in steps:
        at = min(int(where * len(data)), max(len(data) - 1, 0))
        span = len(chunk)
        if op == "flip" and data:
            data = data[:at] + bytes([data[at] ^ (chunk[0] or 1)]) + data[at + 1 :]
        elif op == "truncate":
            data = data[:at]
        elif op == "insert":
            data = data[:at] + chunk + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + span :]
        elif op == "replace":
            data = data[:at] + chunk + data[at + span :]
        elif op == "duplicate":
            data = data[:at] + data[at : at + span] * 2 + data[at + span :]
    return data


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.binary(max_size=64)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-40, 40), inner, max_size=4)
    ),
    max_leaves=12,
)


def expect(exc_type: type[Exception], call: Callable[[], Any]) -> None:
    """Run ``call``; any exception other than ``exc_type`` (a project error) fails the test."""
    try:
        call()
    except exc_type:
        pass


# -- seeds ----------------------------------------------------------------------------------
# Built once by the autouse fixture below and kept out of the test signatures, so hypothesis
# does not print kilobytes of seeds with every falsifying example.
DOCUMENTS: dict[str, tuple[bytes, x509.Certificate]] = {}
ENVELOPES: dict[str, bytes] = {}
KEYS: list[rsa.RSAPrivateKey] = []


@pytest.fixture(scope="module", autouse=True)
def _seeds(tmp_path_factory: pytest.TempPathFactory) -> None:
    DOCUMENTS.update(_documents(tmp_path_factory))
    KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ENVELOPES.update(_envelopes(KEYS[0]))


def _documents(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[bytes, x509.Certificate]]:
    """Attestation documents with the root each verifies against: real ones and a simulated one."""
    root = x509.load_pem_x509_certificate((NITRO_DIR / "root-G1.pem").read_bytes())
    seeds = {p.name: (p.read_bytes(), root) for p in sorted(NITRO_DIR.glob("*.cbor"))}
    assert len(seeds) == 5, f"expected the five real documents in {NITRO_DIR}"
    synthetic = NITRO_DIR / "synthetic"
    dev_root = x509.load_pem_x509_certificate((synthetic / "dev-root.pem").read_bytes())
    seeds["dev-sample"] = ((synthetic / "dev-sample.cbor").read_bytes(), dev_root)
    state = tmp_path_factory.mktemp("nsm") / ".enclave"
    nsm = SimulatedNsm(state_dir=state, app_dir=state.parent, pcr0=bytes(48))
    document = nsm.attestation(user_data=b"fuzz", nonce=b"n" * 16, public_key=b"k" * 32)
    sim_root = x509.load_pem_x509_certificate((state / "dev-root.pem").read_bytes())
    seeds["simulated"] = (document, sim_root)
    for data, trusted in seeds.values():  # every seed is valid: mutations start from a good one
        attestation.verify_document(data, root=trusted)
    return seeds


def _envelopes(rsa_key: rsa.RSAPrivateKey) -> dict[str, bytes]:
    """Valid CiphertextForRecipient envelopes, DER and KMS's BER layout."""
    public = rsa_key.public_key()
    seeds = {
        "der": cms.build_ciphertext_for_recipient(b"k" * 32, public),
        "ber": cms.build_ciphertext_for_recipient(b"k" * 32, public, indefinite_length=True),
        "ber-chunked": cms.build_ciphertext_for_recipient(
            b"p" * 100, public, indefinite_length=True, chunk_size=16
        ),
    }
    for data in seeds.values():
        assert cms.open_ciphertext_for_recipient(data, rsa_key)
    return seeds


DOC_NAMES = [
    "evervault-2022-10-13.cbor",
    "evervault-cert-2023-01-18.cbor",
    "evervault-debug-2022-10-12.cbor",
    "nitrite-2024-09-07.cbor",
    "nitrite-debug-2024-09-07.cbor",
    "dev-sample",
    "simulated",
]


# -- attestation ----------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512))
@example(data=b"\x84" + b"\x9f" * 50)  # indefinite arrays
@example(data=b"\xd2" * 400 + b"\x80")  # tag 18 nested far deeper than any document
@example(data=b"\x81" * 5000 + b"\x80")  # deep nesting (recursion)
def test_random_bytes_attestation(data: bytes) -> None:
    """Random bytes: the verifier and the COSE parsers raise only AttestationError."""
    expect(AttestationError, lambda: attestation.verify_document(data))
    expect(AttestationError, lambda: cose.decode_sign1(data))
    expect(AttestationError, lambda: cose.decode_document(data))


@FUZZ
@given(name=st.sampled_from(DOC_NAMES), steps=mutations)
def test_mutated_documents(name: str, steps: list[tuple[str, float, bytes]]) -> None:
    """Byte mutations of valid documents: only AttestationError comes out."""
    seed, root = DOCUMENTS[name]
    data = mutate(seed, steps)
    expect(AttestationError, lambda: attestation.verify_document(data, root=root))
    expect(AttestationError, lambda: cose.decode_sign1(data))


@FUZZ
@given(
    name=st.sampled_from(DOC_NAMES),
    key=st.sampled_from(cose.DOCUMENT_KEYS) | st.text(max_size=8),
    value=cbor_values,
    envelope_slot=st.sampled_from([None, 0, 1, 3]),
    tag=st.booleans(),
)
# cose.decode_document raised TypeError (unhashable list) on a non-text digest before the fix.
@example(name="nitrite-2024-09-07.cbor", key="digest", value=[], envelope_slot=None, tag=False)
def test_structured_document_mutations(
    name: str,
    key: str,
    value: Any,
    envelope_slot: int | None,
    tag: bool,
) -> None:
    """Re-encoded documents with one payload field or envelope element replaced."""
    seed, root = DOCUMENTS[name]
    protected, unprotected, payload, signature = cbor2.loads(seed)
    document = cbor2.loads(payload)
    document[key] = value
    parts: list[Any] = [protected, unprotected, cbor2.dumps(document), signature]
    if envelope_slot is not None:
        parts[envelope_slot] = value
    envelope: Any = cbor2.CBORTag(18, parts) if tag else parts
    data = cbor2.dumps(envelope)
    expect(AttestationError, lambda: attestation.verify_document(data, root=root))
    expect(AttestationError, lambda: cose.decode_sign1(data))
    expect(AttestationError, lambda: cose.decode_document(parts[2]))


# -- CMS ------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512))
@example(data=b"\x30\x80" * 3000)  # indefinite-length SEQUENCEs nested without end
@example(data=b"\x30\x84\xff\xff\xff\xff")  # a length far past the end
def test_random_bytes_cms(data: bytes) -> None:
    """Random bytes: the CMS parser and opener raise only CryptoError."""
    rsa_key = KEYS[0]
    expect(CryptoError, lambda: cms.parse_ciphertext_for_recipient(data))
    expect(CryptoError, lambda: cms.open_ciphertext_for_recipient(data, rsa_key))


@FUZZ
@given(name=st.sampled_from(["der", "ber", "ber-chunked"]), steps=mutations)
def test_mutated_envelopes(name: str, steps: list[tuple[str, float, bytes]]) -> None:
    """Byte mutations of valid envelopes: only CryptoError comes out."""
    rsa_key = KEYS[0]
    data = mutate(ENVELOPES[name], steps)
    expect(CryptoError, lambda: cms.parse_ciphertext_for_recipient(data))
    expect(CryptoError, lambda: cms.open_ciphertext_for_recipient(data, rsa_key))


# -- NSM protocol ---------------------------------------------------------------------------

VARIANTS = sorted(nsm_protocol.RESPONSES)
NSM_SEEDS = [
    nsm_protocol.encode_response("DescribePCR", {"lock": True, "data": bytes(48)}),
    nsm_protocol.encode_response("Attestation", {"document": b"doc"}),
    nsm_protocol.encode_response("GetRandom", {"random": b"r" * 32}),
    nsm_protocol.encode_response("LockPCR"),
    nsm_protocol.encode_response(
        "DescribeNSM",
        {
            "version_major": 1,
            "version_minor": 0,
            "version_patch": 0,
            "module_id": "i-0-enc0",
            "max_pcrs": 32,
            "locked_pcrs": [0, 1],
            "digest": "SHA384",
        },
    ),
    nsm_protocol.encode_error("InvalidIndex"),
]


@FUZZ
@given(
    variant=st.sampled_from(VARIANTS) | st.text(max_size=12),
    data=st.binary(max_size=256)
    | st.builds(mutate, st.sampled_from(NSM_SEEDS), mutations)
    | st.builds(
        lambda name, body: cbor2.dumps({name: body}),
        st.sampled_from([*VARIANTS, "Error"]),
        cbor_values,
    )
    | cbor_values.map(cbor2.dumps),
)
@example(variant="DescribeNSM", data=b"\x81" * 5000 + b"\x80")
def test_nsm_decode_response(variant: str, data: bytes) -> None:
    """Random and mutated NSM answers: decode_response raises only NsmError."""
    expect(NsmError, lambda: nsm_protocol.decode_response(data, variant, "fuzz"))


# -- config ---------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["local", "production", "127.0.0.1:1", "0.0.0.0:443", "x", "$env"])
)
CONFIG_KEYS = sorted(
    {
        *yaml.safe_load(EXAMPLE_YAML.read_text(encoding="utf-8")),
        *("cpu_count", "memory_mib", "cid", "eif", "debug_mode", "dir", "command", "port"),
        *("env", "health_path", "app_api_port", "control_port", "tls", "backend", "options"),
        *("static", "env_var", "listen", "ingress", "watchdog", "interval_s", "allow"),
        *("backoff_initial_s", "backoff_max_s", "unhealthy_after", "imds_port", "disable"),
        "$env",
    }
)
keys = st.sampled_from(CONFIG_KEYS) | st.text(max_size=8) | st.integers(-3, 3)
documents_yaml = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=25,
)
config_documents = st.builds(
    lambda name, rest: {"name": name, **rest} if name is not None else rest,
    st.sampled_from(["hello", "a", None, "Bad Name"]),
    st.dictionaries(st.sampled_from(CONFIG_KEYS), documents_yaml, max_size=6),
)
DEEP: dict[str, Any] = {}
_node = DEEP
for _ in range(3000):
    _node["a"] = {}
    _node = _node["a"]
CYCLE: list[Any] = []
CYCLE.append(CYCLE)
LAUGHS = "name: a\nstorage:\n  options:\n    l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@FUZZ
@given(document=config_documents | documents_yaml)
def test_parse_config_documents(document: Any) -> None:
    """parse_config on random documents of the real keys: only ConfigError."""
    expect(ConfigError, lambda: parse_config(document, base_dir=Path("/nonexistent")))


# Too deep for hypothesis to print as an @example, so plain regression cases.
@pytest.mark.parametrize(
    "options",
    [DEEP, {"x": CYCLE}],
    ids=["deep-recursion-error-before-fix", "alias-cycle"],
)
def test_parse_config_refuses_pathological_nesting(options: dict[str, Any]) -> None:
    """Documents nested past any real config are a ConfigError, not a RecursionError."""
    document = {"name": "a", "storage": {"options": options}}
    with pytest.raises(ConfigError, match="nests deeper than 64 levels"):
        parse_config(document, base_dir=Path("/nonexistent"))


def _load_text(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "enclave.yaml")
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        expect(ConfigError, lambda: load_config(path))


EXAMPLE_TEXT = EXAMPLE_YAML.read_text(encoding="utf-8")


@FUZZ
@given(
    text=st.text(max_size=300)
    | st.text(alphabet=string.printable, max_size=300)
    | st.binary(max_size=300)
    | st.builds(
        lambda steps: mutate(EXAMPLE_TEXT.encode(), steps).decode("utf-8", "replace"),
        mutations,
    )
    | documents_yaml.map(lambda d: yaml.safe_dump(d, default_flow_style=None))
)
@example(text="name: a\nx: " + "[" * 600 + "]" * 600)  # RecursionError in PyYAML before the fix
@example(text=LAUGHS)  # a billion laughs: hung before the fix
@example(text="name: a\nstorage:\n  options: &a [*a]\n")  # a recursive alias
@example(text=b"name: \xff\xfe")
def test_load_config_text(text: str | bytes) -> None:
    """load_config on random and mutated enclave.yaml files: only ConfigError."""
    _load_text(text)


@FUZZ
@given(document=config_documents)
def test_load_config_documents(document: dict[Any, Any]) -> None:
    """Random documents of the real keys written as YAML: load_config raises only ConfigError."""
    _load_text(yaml.safe_dump(document, default_flow_style=False))
