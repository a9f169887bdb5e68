"""enclave_core.verify: every check, against crafted inputs, a scripted fake and a real runtime."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_core.crypto.attestation import VerifiedDocument
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.errors import AttestationError
from enclave_core.protocol.signing import public_key_hex, sign_response
from enclave_core.protocol.userdata import attestation_user_data
from enclave_core.runtime.tls import make_tls_identity
from enclave_core.testing import dev_config_document, write_config
from enclave_core.verify import (
    HTTPS_REQUIRED,
    check_certificate,
    check_pcr0,
    check_signed_response,
    check_user_data,
    parse_expected_pcr0,
    verify_enclave,
)
from tests.doubles.fake_enclave import FakeEnclave
from tests.vectors import NITRO as TESTDATA

PCR0 = bytes(range(48))


def document(pcr0: bytes = PCR0, *, debug: bool = False) -> VerifiedDocument:
    zero = bytes(48)
    pcrs = {0: pcr0, 1: zero if debug else b"\x01" * 48, 2: zero if debug else b"\x02" * 48}
    now = datetime.now(UTC)
    return VerifiedDocument(
        module_id="i-0-enc0",
        timestamp=now,
        digest="SHA384",
        pcrs=pcrs,
        certificate=b"",
        cabundle=[],
        public_key=None,
        user_data=None,
        nonce=None,
        debug_mode=debug,
        verified_at=now,
    )


# ---------------------------------------------------------------- the checks, crafted inputs


def test_pcr0_must_match_and_debug_documents_are_refused() -> None:
    check_pcr0(document(), PCR0)
    other = bytes(reversed(PCR0))
    with pytest.raises(AttestationError) as exc:
        check_pcr0(document(), other)
    assert str(exc.value) == f"PCR0 mismatch: expected {other.hex()}, got {PCR0.hex()}"
    # All zero is debug mode, refused even by a caller that expects zeros.
    with pytest.raises(AttestationError, match="debug-mode"):
        check_pcr0(document(bytes(48), debug=True), bytes(48))
    with pytest.raises(AttestationError, match="debug-mode"):
        check_pcr0(document(bytes(48)), bytes(48))


def test_user_data_must_be_nitridings_68_bytes() -> None:
    cert, key = hashlib.sha256(b"cert").digest(), hashlib.sha256(b"key").digest()
    good = b"\x12\x20" + cert + b"\x12\x20" + key
    assert check_user_data(good) == (cert, key)
    with pytest.raises(AttestationError, match="has none"):
        check_user_data(None)
    for short in (b"", good[:34], good[:67]):  # a shorter one fails, it is never skipped
        with pytest.raises(AttestationError, match=f"expected 68 bytes.*got {len(short)}"):
            check_user_data(short)
    with pytest.raises(AttestationError, match="got 69"):
        check_user_data(good + b"\x00")
    with pytest.raises(AttestationError, match="bytes 0-1"):
        check_user_data(b"\x12\x21" + good[2:])
    with pytest.raises(AttestationError, match="bytes 34-35"):
        check_user_data(good[:34] + b"\x00\x00" + good[36:])


def test_certificate_must_be_the_attested_one() -> None:
    der = b"certificate DER"
    assert check_certificate(der, hashlib.sha256(der).digest()) == hashlib.sha256(der).hexdigest()
    with pytest.raises(AttestationError, match="TLS certificate is not the attested one"):
        check_certificate(der + b"x", hashlib.sha256(der).digest())


def test_signed_response_needs_the_attested_key_and_a_valid_signature() -> None:
    key = Ed25519PrivateKey.generate()
    pub = public_key_hex(key)
    digest = hashlib.sha256(bytes.fromhex(pub)).digest()
    body = b'{"a": 1}'
    info = "/v1/enclave-info"
    headers = {
        "x-attestation-pubkey": pub,
        "x-attestation-signature": sign_response(key, "GET", info, 200, body, "n1"),
    }
    assert check_signed_response(headers, "GET", info, 200, body, "n1", digest) == pub
    with pytest.raises(AttestationError, match="no X-Attestation-Signature header"):
        check_signed_response({"x-attestation-pubkey": pub}, "GET", info, 200, body, "n1", digest)
    with pytest.raises(AttestationError, match="no X-Attestation-Pubkey header"):
        check_signed_response(
            {"x-attestation-signature": headers["x-attestation-signature"]},
            "GET",
            info,
            200,
            body,
            "n1",
            digest,
        )
    with pytest.raises(AttestationError, match="response signature does not verify"):
        check_signed_response(headers, "GET", info, 200, body, "n2", digest)  # another request's
    with pytest.raises(AttestationError, match="response signature does not verify"):
        check_signed_response(headers, "GET", info, 500, body, "n1", digest)
    with pytest.raises(AttestationError, match="signing key is not the attested one"):
        check_signed_response(
            headers, "GET", info, 200, body, "n1", hashlib.sha256(b"other").digest()
        )


def test_a_response_signed_for_another_path_does_not_verify() -> None:
    # A recorded GET /health (same nonce, here none) presented as the answer to enclave-info.
    key = Ed25519PrivateKey.generate()
    pub = public_key_hex(key)
    digest = hashlib.sha256(bytes.fromhex(pub)).digest()
    body = b'{"status": "ready"}'
    headers = {
        "x-attestation-pubkey": pub,
        "x-attestation-signature": sign_response(key, "GET", "/health", 200, body, ""),
    }
    assert check_signed_response(headers, "GET", "/health", 200, body, "", digest) == pub
    for method, target in (("GET", "/v1/enclave-info"), ("POST", "/health"), ("GET", "/health?")):
        with pytest.raises(AttestationError, match="does not match the method, path"):
            check_signed_response(headers, method, target, 200, body, "", digest)


def test_expected_pcr0_and_url_are_checked_first() -> None:
    assert parse_expected_pcr0("0x" + PCR0.hex().upper()) == PCR0
    for bad in ("", "00" * 47, "zz" * 48):
        with pytest.raises(AttestationError, match="96 hex"):
            parse_expected_pcr0(bad)
    with pytest.raises(AttestationError) as exc:
        verify_enclave("http://127.0.0.1:1", PCR0)
    assert str(exc.value) == HTTPS_REQUIRED
    for url in ("ftp://x", "https://", "https://h/?q=1", "https://u:p@h/"):
        with pytest.raises(AttestationError, match="--url"):
            verify_enclave(url, PCR0)


# ---------------------------------------------------------------- a scripted HTTPS enclave


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeEnclave]:
    server = FakeEnclave(tmp_path)
    yield server
    server.close()


def verify_fake(fake: FakeEnclave, pcr0: bytes | None = None) -> dict[str, object]:
    root = load_root_pem(fake.root_pem)
    return verify_enclave(fake.url, pcr0 or fake.pcr0, root=root, timeout=10).as_dict()


def test_an_honest_enclave_verifies(fake: FakeEnclave) -> None:
    result = verify_fake(fake)
    assert list(result) == [
        "url",
        "module_id",
        "pcr0",
        "tls_cert_sha256",
        "attestation_pubkey",
        "nonce",
        "timestamp",
        "previous_pcr0",
        "previous_pcr0_verified",
        "migration_chain",
        "migration_chain_complete",
        "verified",
    ]
    assert result["verified"] is True
    assert result["pcr0"] == fake.pcr0.hex() and result["tls_cert_sha256"] == fake.tls.sha256
    assert result["attestation_pubkey"] == public_key_hex(fake.key)
    assert result["module_id"] == fake.nsm.module_id and result["previous_pcr0"] == "genesis"
    assert result["previous_pcr0_verified"] is None  # nothing to verify
    nonce = str(result["nonce"])
    assert len(nonce) == 40 and fake.requests[0] == f"/enclave/attestation?nonce={nonce}"
    assert fake.requests[1] == "/v1/enclave-info"
    assert verify_fake(fake)["nonce"] != nonce  # fresh each time


def expect_failure(fake: FakeEnclave, fragment: str, pcr0: bytes | None = None) -> str:
    with pytest.raises(AttestationError) as exc:
        verify_fake(fake, pcr0)
    assert fragment in str(exc.value)
    return str(exc.value)


def test_a_replayed_document_fails_on_its_nonce(fake: FakeEnclave) -> None:
    fake.behaviour.document = fake.nsm.attestation(
        nonce=os.urandom(20), user_data=fake.honest_user_data()
    )
    expect_failure(fake, "nonce mismatch")


def test_the_wrong_pcr0_fails(fake: FakeEnclave) -> None:
    message = expect_failure(fake, "PCR0 mismatch", pcr0=PCR0)
    assert message == f"PCR0 mismatch: expected {PCR0.hex()}, got {fake.pcr0.hex()}"


def test_a_debug_mode_enclave_is_refused(tmp_path: Path) -> None:
    server = FakeEnclave(tmp_path, pcr0=bytes(48))
    try:
        expect_failure(server, "debug-mode", pcr0=bytes(48))
    finally:
        server.close()


def test_short_user_data_fails_instead_of_being_skipped(fake: FakeEnclave) -> None:
    fake.behaviour.user_data = fake.honest_user_data()[:34]
    expect_failure(fake, "user_data: expected 68 bytes (nitriding layout), got 34")
    # The right layout and signing key, but the certificate half names another server.
    other = make_tls_identity("other")
    key = bytes.fromhex(public_key_hex(fake.key))
    fake.behaviour.user_data = attestation_user_data(other.certificate_der, key)
    expect_failure(fake, "TLS certificate is not the attested one")


def test_a_missing_or_foreign_signature_fails(fake: FakeEnclave) -> None:
    fake.behaviour.sign = False
    expect_failure(fake, "no X-Attestation-Signature header")
    fake.behaviour.sign = True
    fake.behaviour.signing_key = Ed25519PrivateKey.generate()
    expect_failure(fake, "response signing key is not the attested one")
    fake.behaviour.signing_key = None
    fake.behaviour.signed_nonce = "replayed"
    expect_failure(fake, "response signature does not verify")


@pytest.mark.parametrize("path", ["/enclave/attestation", "/v1/enclave-info"])
@pytest.mark.parametrize(
    "signed_for",
    [
        ("GET", "/health"),  # a signed answer to another path, same nonce
        ("GET", "/v1/enclave-info?x"),
        ("GET", "/enclave/attestation"),  # the query (the document's nonce) is signed too
        ("POST", "/v1/enclave-info"),  # to another method
    ],
)
def test_a_response_signed_for_another_request_fails(
    fake: FakeEnclave, path: str, signed_for: tuple[str, str]
) -> None:
    fake.behaviour.signed_for = {path: signed_for}
    expect_failure(fake, "does not match the method, path, status, body and nonce")


def test_enclave_info_must_describe_what_was_verified(fake: FakeEnclave) -> None:
    fake.behaviour.info = {"tls_cert_sha256": "00" * 32}
    expect_failure(fake, "enclave-info tls_cert_sha256")


def test_the_connection_must_stay_the_same(fake: FakeEnclave) -> None:
    fake.behaviour.close_after_attestation = True
    expect_failure(fake, "closed the TLS connection")


def test_documents_are_verified_at_the_present_time(fake: FakeEnclave) -> None:
    # A real AWS document: at its own timestamp its chain is valid; now its leaf has expired.
    fake.behaviour.document = (TESTDATA / "nitrite-2024-09-07.cbor").read_bytes()
    with pytest.raises(AttestationError, match="expired"):
        verify_enclave(fake.url, fake.pcr0, timeout=10)  # the pinned AWS root


def test_the_dev_root_is_not_trusted_by_default(fake: FakeEnclave) -> None:
    with pytest.raises(AttestationError, match="certificate chain"):
        verify_enclave(fake.url, fake.pcr0, timeout=10)


def test_an_unreachable_enclave_fails_cleanly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AttestationError, match=f"cannot connect to 127.0.0.1:{port}"):
        verify_enclave(f"https://127.0.0.1:{port}", PCR0, timeout=5)


# ---------------------------------------------------------------- a real runtime over TLS


class TlsInterceptor:
    """A man in the middle: terminates TLS with its own certificate, forwards to the runtime.

    It runs on an asyncio loop in a thread of its own. asyncio does TLS through memory BIOs on
    one thread; blocking SSL sockets read by one thread while another writes them are not safe
    (one OpenSSL object used from two threads), which made an earlier threaded version stall.
    """

    def __init__(self, target_port: int) -> None:
        self.identity = make_tls_identity("interceptor")
        self.target_port = target_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(
            self._connect, "127.0.0.1", 0, ssl=self.identity.context, ssl_handshake_timeout=10
        )

    async def _connect(
        self, front_in: asyncio.StreamReader, front_out: asyncio.StreamWriter
    ) -> None:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        self.writers.add(front_out)
        try:
            back_in, back_out = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port, ssl=client), 10
            )
        except (OSError, TimeoutError):
            front_out.close()
            return
        self.writers.add(back_out)
        await asyncio.gather(
            self._pump(front_in, back_out), self._pump(back_in, front_out), return_exceptions=True
        )

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def https_json(port: int, path: str) -> tuple[int, bytes]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, str]]:
    """`enclave runtime` with the local backends and runtime.tls; (port, dev root, pcr0)."""
    folder = tmp_path_factory.mktemp("runtime")
    document = dev_config_document(runtime={"tls": True})
    port = document["app"]["port"]
    document["app"]["command"] = [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)]
    config = write_config(folder, document)
    log = (folder.parent / f"{folder.name}-runtime.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave_core.cli.main", "runtime", "-c", str(config.path)],
        stdout=log,
        stderr=log,
        cwd=folder,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"runtime exited with {proc.returncode}"
            try:
                if https_json(config.runtime.port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the runtime never finished booting"
            time.sleep(0.1)
        info = json.loads(https_json(config.runtime.port, "/v1/enclave-info")[1])
        yield config.runtime.port, config.state_dir / "dev-root.pem", info["pcr0"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_real_runtime_verifies(runtime: tuple[int, Path, str]) -> None:
    port, root, pcr0 = runtime
    result = verify_enclave(f"https://127.0.0.1:{port}", pcr0, root=load_root_pem(root))
    assert result.verified and result.pcr0 == pcr0 and result.previous_pcr0 == "genesis"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        served = sock.getpeercert(binary_form=True)
    assert served is not None and result.tls_cert_sha256 == hashlib.sha256(served).hexdigest()


def test_a_real_runtime_fails_with_a_wrong_pcr0_or_root(runtime: tuple[int, Path, str]) -> None:
    port, root, pcr0 = runtime
    wrong = ("0" if pcr0[0] != "0" else "1") + pcr0[1:]
    with pytest.raises(AttestationError, match=f"PCR0 mismatch: expected {wrong}, got {pcr0}"):
        verify_enclave(f"https://127.0.0.1:{port}", wrong, root=load_root_pem(root))
    with pytest.raises(AttestationError, match="certificate chain"):
        verify_enclave(f"https://127.0.0.1:{port}", pcr0)  # the AWS root: not a real enclave


def test_a_man_in_the_middle_is_detected(runtime: tuple[int, Path, str]) -> None:
    port, root, pcr0 = runtime
    interceptor = TlsInterceptor(port)
    try:
        with pytest.raises(AttestationError, match="TLS certificate is not the attested one"):
            verify_enclave(f"https://127.0.0.1:{interceptor.port}", pcr0, root=load_root_pem(root))
    finally:
        interceptor.close()
