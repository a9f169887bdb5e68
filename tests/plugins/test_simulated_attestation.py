"""Tests for the ``simulated`` NSM and its dev CA: PCR maths, NSM errors, signed documents."""

from __future__ import annotations

import hashlib
import stat
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import marshmallow
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from enclave_plugins.simulated_attestation import SimulatedNsm, measure_app_dir

from enclave_core import __version__
from enclave_core.crypto import cose
from enclave_core.crypto.devca import DevCa
from enclave_core.errors import AttestationError, ConfigError, NsmError
from enclave_core.plugin.interfaces import Attestation, BackendContext
from enclave_core.plugin.manager import get_plugin_manager
from tests.helpers import backend_context
from tests.vectors import NITRO as TESTDATA

MODULE_ID = "i-0a22e5c5f24d22174-enc0191cceb4289903f"


def _sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def _reference_pcr0(files: dict[str, bytes]) -> bytes:
    """PCR0 computed independently: sorted names, 8-byte big-endian length prefixes."""
    digest = hashlib.sha384()
    for name in sorted(files):
        raw = name.encode()
        digest.update(struct.pack(">Q", len(raw)) + raw)
        digest.update(struct.pack(">Q", len(files[name])) + files[name])
    return digest.digest()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "app.py").write_bytes(b"print('hello')\n")
    (app / "lib" / "util.py").write_bytes(b"X = 1\n")
    # none of these are measured
    for ignored in (".enclave/kms/master.key", "__pycache__/app.cpython-311.pyc", ".git/HEAD"):
        (app / ignored).parent.mkdir(parents=True, exist_ok=True)
        (app / ignored).write_bytes(b"ignored")
    (app / "lib" / "util.pyc").write_bytes(b"ignored")
    return app


@pytest.fixture
def measured_nsm(tmp_path: Path, app_dir: Path) -> SimulatedNsm:
    return SimulatedNsm(state_dir=tmp_path / "state", app_dir=app_dir, module_id=MODULE_ID)


def _chain(document: dict[str, object]) -> list[x509.Certificate]:
    ders = [*document["cabundle"], document["certificate"]]  # type: ignore[misc]
    return [x509.load_der_x509_certificate(der) for der in ders]


# ------------------------------------------------------------------ PCRs


def test_initial_pcrs(measured_nsm: SimulatedNsm) -> None:
    assert isinstance(measured_nsm, Attestation)
    pcr = {i: measured_nsm.describe_pcr(i) for i in range(32)}
    assert pcr[1].data == _sha384(f"simple-enclave simulated kernel {__version__}".encode())
    assert pcr[2].data == _sha384(f"simple-enclave simulated runtime {__version__}".encode())
    assert pcr[4].data == _sha384(bytes(48) + b"i-0a22e5c5f24d22174")
    assert all(pcr[i].data == bytes(48) for i in [3, *range(5, 32)])
    assert [i for i in range(32) if pcr[i].locked] == list(range(16))


def test_pcr0_measures_app_files_and_excludes_state_and_caches(
    measured_nsm: SimulatedNsm, app_dir: Path
) -> None:
    files = {"app.py": b"print('hello')\n", "lib/util.py": b"X = 1\n"}
    assert measured_nsm.describe_pcr(0).data == _reference_pcr0(files)
    assert measure_app_dir(app_dir) == _reference_pcr0(files)


def test_pcr0_changes_when_an_app_file_changes(app_dir: Path) -> None:
    before = measure_app_dir(app_dir)
    (app_dir / "__pycache__" / "new.pyc").write_bytes(b"cache")
    (app_dir / ".enclave" / "storage").write_bytes(b"state")
    assert measure_app_dir(app_dir) == before  # excluded paths do not count
    (app_dir / "app.py").write_bytes(b"print('hello!')\n")
    changed = measure_app_dir(app_dir)
    assert changed != before
    (app_dir / "app.py").rename(app_dir / "main.py")
    assert measure_app_dir(app_dir) not in (before, changed)


def test_pcr0_encoding_is_unambiguous(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "ab").write_bytes(b"c")
    (two / "a").write_bytes(b"bc")
    assert measure_app_dir(one) != measure_app_dir(two)


def test_missing_app_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="does not exist"):
        SimulatedNsm(state_dir=tmp_path / "state", app_dir=tmp_path / "missing")


def test_pcr0_option_overrides_measurement(tmp_path: Path, app_dir: Path) -> None:
    custom = "ab" * 48
    options = SimulatedNsm.Options().load({"pcr0": custom, "module_id": MODULE_ID})
    backend = SimulatedNsm.from_options(options, _context(tmp_path, app_dir))
    assert backend.describe_pcr(0).data == bytes.fromhex(custom)
    for bad in ({"pcr0": "ab"}, {"module_id": "no-enclave-part"}, {"pcr1": "00"}):
        with pytest.raises(marshmallow.ValidationError):
            SimulatedNsm.Options().load(bad)


def test_pcr8_option_stands_for_a_signed_image(tmp_path: Path, app_dir: Path) -> None:
    # On Nitro, PCR8 measures the certificate that signed the EIF; all zero for an unsigned one.
    signer = "5c" * 48
    options = SimulatedNsm.Options().load({"pcr8": signer.upper(), "module_id": MODULE_ID})
    backend = SimulatedNsm.from_options(options, _context(tmp_path, app_dir))
    assert backend.describe_pcr(8).data == bytes.fromhex(signer)
    assert backend.describe_pcr(8).locked
    assert backend.describe_pcr(0).data == measure_app_dir(app_dir, (tmp_path / ".enclave",))
    document = cose.decode_document(cose.decode_sign1(backend.attestation()).payload)
    assert document["pcrs"][8] == bytes.fromhex(signer)
    with pytest.raises(NsmError, match="ReadOnlyIndex|locked"):
        backend.extend_pcr(8, b"another signer")
    for bad in ({"pcr8": "ab"}, {"pcr8": "zz" * 48}, {"pcr8": "ab" * 48 + "\n"}):
        with pytest.raises(marshmallow.ValidationError):
            SimulatedNsm.Options().load(bad)


def test_without_pcr8_the_image_is_unsigned(tmp_path: Path, app_dir: Path) -> None:
    options = SimulatedNsm.Options().load({"module_id": MODULE_ID})
    assert options["pcr8"] is None
    backend = SimulatedNsm.from_options(options, _context(tmp_path, app_dir))
    assert backend.describe_pcr(8).data == bytes(48)
    document = cose.decode_document(cose.decode_sign1(backend.attestation()).payload)
    assert document["pcrs"][8] == bytes(48)


def test_extend_pcr_matches_hashlib(measured_nsm: SimulatedNsm) -> None:
    first = measured_nsm.extend_pcr(16, b"hello")
    assert first == _sha384(bytes(48) + b"hello")
    second = measured_nsm.extend_pcr(16, b"world")
    assert second == _sha384(first + b"world")
    assert measured_nsm.describe_pcr(16).data == second
    assert measured_nsm.describe_pcr(17).data == bytes(48)


def test_locked_and_invalid_pcr_errors(measured_nsm: SimulatedNsm) -> None:
    for index in (0, 4, 15):
        with pytest.raises(NsmError) as err:
            measured_nsm.extend_pcr(index, b"x")
        assert err.value.code == "ReadOnlyIndex"
        with pytest.raises(NsmError) as err:
            measured_nsm.lock_pcr(index)
        assert err.value.code == "ReadOnlyIndex"
    for index in (32, 100, -1):
        for call in (
            measured_nsm.describe_pcr,
            measured_nsm.lock_pcr,
            lambda i: measured_nsm.extend_pcr(i, b"x"),
        ):
            with pytest.raises(NsmError) as err:
                call(index)
            assert err.value.code == "InvalidIndex"
    measured_nsm.extend_pcr(20, b"x")
    value = measured_nsm.describe_pcr(20).data
    measured_nsm.lock_pcr(20)
    assert measured_nsm.describe_pcr(20).locked
    with pytest.raises(NsmError) as err:
        measured_nsm.extend_pcr(20, b"y")
    assert err.value.code == "ReadOnlyIndex"
    with pytest.raises(NsmError) as err:
        measured_nsm.lock_pcr(20)
    assert err.value.code == "ReadOnlyIndex"
    assert measured_nsm.describe_pcr(20).data == value


def test_extend_data_over_the_request_limit(measured_nsm: SimulatedNsm) -> None:
    measured_nsm.extend_pcr(16, bytes(4000))
    with pytest.raises(NsmError) as err:
        measured_nsm.extend_pcr(16, bytes(4096))
    assert err.value.code == "InputTooLarge"


def test_lock_pcrs_range(measured_nsm: SimulatedNsm) -> None:
    with pytest.raises(NsmError) as err:
        measured_nsm.lock_pcrs(33)
    assert err.value.code == "InvalidIndex"
    measured_nsm.lock_pcrs(20)
    assert measured_nsm.describe_nsm()["locked_pcrs"] == list(range(20))
    measured_nsm.extend_pcr(20, b"still open")
    measured_nsm.lock_pcrs(32)
    assert measured_nsm.describe_nsm()["locked_pcrs"] == list(range(32))
    with pytest.raises(NsmError) as err:
        measured_nsm.extend_pcr(31, b"x")
    assert err.value.code == "ReadOnlyIndex"


def test_describe_nsm(measured_nsm: SimulatedNsm) -> None:
    major, minor, patch = (int(p) for p in __version__.split("."))
    assert measured_nsm.describe_nsm() == {
        "version_major": major,
        "version_minor": minor,
        "version_patch": patch,
        "module_id": MODULE_ID,
        "max_pcrs": 32,
        "locked_pcrs": list(range(16)),
        "digest": "SHA384",
    }


def test_get_random(measured_nsm: SimulatedNsm) -> None:
    assert len(measured_nsm.get_random()) == 32
    assert len(measured_nsm.get_random(256)) == 256
    assert measured_nsm.get_random(64) != measured_nsm.get_random(64)
    with pytest.raises(NsmError) as err:
        measured_nsm.get_random(257)
    assert err.value.code == "InputTooLarge"


# ------------------------------------------------------------------ attestation documents


def test_document_verifies_with_the_leaf_key_and_fails_after_a_flipped_byte(
    measured_nsm: SimulatedNsm,
) -> None:
    signed = measured_nsm.attestation(user_data=b"tls-hash", nonce=b"n" * 32, public_key=b"pk")
    document = cose.decode_document(cose.decode_sign1(signed).payload)
    leaf_key = _chain(document)[-1].public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    cose.verify_signature(signed, leaf_key)
    for index in (len(signed) - 1, signed.index(b"tls-hash")):
        tampered = bytearray(signed)
        tampered[index] ^= 0x01
        with pytest.raises(AttestationError):
            cose.verify_signature(bytes(tampered), leaf_key)


def test_document_fields(measured_nsm: SimulatedNsm) -> None:
    before = time.time_ns() // 1_000_000
    measured_nsm.extend_pcr(16, b"a")
    measured_nsm.lock_pcr(16)
    measured_nsm.extend_pcr(17, b"b")  # extended but not locked: not in the document
    signed = measured_nsm.attestation(
        nonce=b"\x01" * 1024, user_data=b"\x02" * 1024, public_key=b"\x03" * 1024
    )
    after = time.time_ns() // 1_000_000
    document = cose.decode_document(cose.decode_sign1(signed).payload)
    assert list(document) == list(cose.DOCUMENT_KEYS)
    assert document["module_id"] == MODULE_ID
    assert before <= document["timestamp"] <= after
    assert sorted(document["pcrs"]) == [*range(16), 16]
    assert document["pcrs"][0] == measured_nsm.describe_pcr(0).data
    assert document["pcrs"][16] == measured_nsm.describe_pcr(16).data
    assert (document["nonce"], document["user_data"], document["public_key"]) == (
        b"\x01" * 1024,
        b"\x02" * 1024,
        b"\x03" * 1024,
    )
    empty = cose.decode_document(cose.decode_sign1(measured_nsm.attestation()).payload)
    assert (empty["nonce"], empty["user_data"], empty["public_key"]) == (None, None, None)


@pytest.mark.parametrize("field", ["user_data", "nonce", "public_key"])
def test_attestation_inputs_over_1024_bytes(measured_nsm: SimulatedNsm, field: str) -> None:
    with pytest.raises(NsmError) as err:
        measured_nsm.attestation(**{field: bytes(1025)})
    assert err.value.code == "InputTooLarge"


def test_document_has_the_hardware_structure(measured_nsm: SimulatedNsm) -> None:
    real = (TESTDATA / "nitrite-2024-09-07.cbor").read_bytes()
    ours = measured_nsm.attestation(nonce=b"n")
    assert ours[:7] == real[:7] == b"\x84\x44\xa1\x01\x38\x22\xa0"  # untagged, ES384, {}
    real_doc = cbor2.loads(cbor2.loads(real)[2])
    our_doc = cbor2.loads(cbor2.loads(ours)[2])
    assert list(our_doc) == list(real_doc)
    assert list(our_doc["pcrs"]) == list(real_doc["pcrs"])
    assert len(our_doc["cabundle"]) == len(real_doc["cabundle"]) == 4


def test_dev_ca_chain(measured_nsm: SimulatedNsm, tmp_path: Path) -> None:
    document = cose.decode_document(cose.decode_sign1(measured_nsm.attestation()).payload)
    root, regional, zonal, instance, leaf = _chain(document)
    for parent, child in [
        (root, root),
        (root, regional),
        (regional, zonal),
        (zonal, instance),
        (instance, leaf),
    ]:
        child.verify_directly_issued_by(parent)
        assert child.signature_hash_algorithm is not None
        assert child.signature_hash_algorithm.name == "sha384"
        public_key = child.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert isinstance(public_key.curve, ec.SECP384R1)
    assert root.subject.rfc4514_string() == "CN=dev.nitro-enclaves,OU=DEV,O=Local Development,C=US"
    assert root.not_valid_after_utc - root.not_valid_before_utc > timedelta(days=365 * 30)
    constraints = [
        c.extensions.get_extension_for_class(x509.BasicConstraints)
        for c in (root, regional, zonal, instance, leaf)
    ]
    assert [(c.value.ca, c.value.path_length) for c in constraints] == [
        (True, None),
        (True, 2),
        (True, 1),
        (True, 0),
        (False, None),
    ]
    assert all(c.critical for c in constraints)
    usage = {
        c: c.extensions.get_extension_for_class(x509.KeyUsage).value for c in (root, instance, leaf)
    }
    assert usage[root].key_cert_sign and usage[root].crl_sign and usage[root].digital_signature
    assert usage[instance].key_cert_sign and not usage[instance].digital_signature
    assert usage[leaf].digital_signature and usage[leaf].content_commitment
    assert not usage[leaf].key_cert_sign
    assert (
        timedelta(hours=3)
        <= leaf.not_valid_after_utc - leaf.not_valid_before_utc
        <= timedelta(hours=3, seconds=5)
    )
    assert MODULE_ID in leaf.subject.rfc4514_string()
    assert "i-0a22e5c5f24d22174" in instance.subject.rfc4514_string()
    # the trust anchor is on disk, and private keys are private
    state = tmp_path / "state"
    pem = (state / "dev-root.pem").read_bytes()
    assert x509.load_pem_x509_certificate(pem) == root
    keys = sorted((state / "dev-ca").glob("*.key"))
    assert len(keys) == 4
    assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}
    assert stat.S_IMODE((state / "dev-ca").stat().st_mode) == 0o700
    assert all(len(der) <= 1024 for der in document["cabundle"])


def test_intermediates_are_reused_and_leaves_are_per_enclave(tmp_path: Path, app_dir: Path) -> None:
    state = tmp_path / "state"
    first = SimulatedNsm(state_dir=state, app_dir=app_dir)
    second = SimulatedNsm(state_dir=state, app_dir=app_dir)
    assert first.module_id != second.module_id
    assert first.module_id.split("-enc")[0] == second.module_id.split("-enc")[0]  # same "host"
    docs = [
        cose.decode_document(cose.decode_sign1(n.attestation()).payload) for n in (first, second)
    ]
    assert docs[0]["cabundle"] == docs[1]["cabundle"]
    assert docs[0]["certificate"] != docs[1]["certificate"]
    assert first.describe_pcr(4).data == second.describe_pcr(4).data


def test_expiring_levels_are_reissued_with_everything_below(tmp_path: Path) -> None:
    ca = DevCa(tmp_path)
    now = datetime.now(UTC)
    chain = [c.der for c in ca.ensure_chain("i-1", now)]
    assert [c.der for c in ca.ensure_chain("i-1", now + timedelta(hours=20))] == chain
    later = [
        c.der for c in ca.ensure_chain("i-1", now + timedelta(hours=22))
    ]  # instance < 3h10m left
    assert later[:3] == chain[:3] and later[3] != chain[3]
    much_later = [c.der for c in ca.ensure_chain("i-1", now + timedelta(days=15))]  # regional < 6d
    assert much_later[0] == chain[0] and much_later[1] != chain[1] and much_later[2] != chain[2]


def test_leaf_bundle_expiry_window(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    leaf = DevCa(tmp_path).issue_leaf(MODULE_ID, now)
    assert not leaf.expires_within(timedelta(minutes=10), now)
    assert leaf.expires_within(timedelta(minutes=10), now + timedelta(hours=2, minutes=55))
    with pytest.raises(AttestationError, match="-enc"):
        DevCa(tmp_path).issue_leaf("i-123")


def test_unreadable_root_is_an_error_not_a_silent_new_ca(tmp_path: Path) -> None:
    ca = DevCa(tmp_path)
    ca.root_certificate()
    (tmp_path / "dev-ca" / "root.key").write_bytes(b"garbage")
    with pytest.raises(AttestationError, match="unreadable"):
        ca.root_certificate()


CHILD = """
import sys, time
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from enclave_core.crypto.devca import DevCa

state, go = Path(sys.argv[1]), Path(sys.argv[2])
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.002)
root = DevCa(state).root_certificate()
print(root.public_bytes(serialization.Encoding.PEM).decode())
"""


def test_concurrent_ca_creation_yields_one_root(tmp_path: Path) -> None:
    state, go = tmp_path / "state", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(0.5)
    go.touch()
    roots = set()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        roots.add(out.strip())
    assert len(roots) == 1
    assert (state / "dev-root.pem").read_text().strip() == roots.pop()
    assert len(list((state / "dev-ca").glob("instance-*.pem"))) == 1


def _context(tmp_path: Path, app_dir: Path, mode: str = "development") -> BackendContext:
    return backend_context(tmp_path, mode=mode, app_dir=app_dir)


def test_from_options_and_production_refusal(tmp_path: Path, app_dir: Path) -> None:
    options = SimulatedNsm.Options().load({})
    assert options == {"pcr0": None, "pcr8": None, "module_id": None}
    backend = SimulatedNsm.from_options(options, _context(tmp_path, app_dir))
    backend.attestation()
    root = x509.load_pem_x509_certificate((tmp_path / ".enclave" / "dev-root.pem").read_bytes())
    assert root.public_bytes(serialization.Encoding.DER)
    with pytest.raises(ConfigError, match="development only"):
        SimulatedNsm.from_options(options, _context(tmp_path, app_dir, mode="production"))


def test_hook_enclave_register_attestation() -> None:
    plugins = get_plugin_manager()
    assert plugins.attestation.get("simulated") is SimulatedNsm
    assert plugins.attestation.owner("simulated") == "simulated-attestation"
