"""The public listener's TLS identity: certificate, context, no key on disk, bound at boot."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enclave_core.config import Config
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.protocol.signing import verify_response_signature
from enclave_core.protocol.userdata import attestation_user_data
from enclave_core.runtime import tls
from enclave_core.runtime.server import serve_runtime
from enclave_core.runtime.tls import TlsIdentity, make_tls_identity
from enclave_core.testing import free_port
from tests.doubles.memory_backends import DOUBLES_CONFIG, DoublesPlugin, MemoryNsm, shared


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def test_the_certificate_is_a_fresh_self_signed_p256_server_certificate() -> None:
    identity = make_tls_identity("hello")
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    assert identity.sha256 == hashlib.sha256(identity.certificate_der).hexdigest()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hello"
    assert cert.issuer == cert.subject
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)  # self-signed, signature valid
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=365)
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    other = x509.load_der_x509_certificate(make_tls_identity("hello").certificate_der)
    assert other.serial_number != cert.serial_number and other.public_key() != key
    assert "PRIVATE" not in repr(identity) and identity.sha256[:16] in repr(identity)


def handshake(identity: TlsIdentity, client: ssl.SSLContext) -> tuple[str | None, bytes | None]:
    """A real TLS handshake over a socket pair; the client's view (version, peer certificate)."""
    left, right = socket.socketpair()
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            with identity.context.wrap_socket(left, server_side=True) as sock:
                sock.recv(1)
        except (OSError, ssl.SSLError) as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right) as sock:
            result = sock.version(), sock.getpeercert(binary_form=True)
            sock.sendall(b"x")
    finally:
        right.close()
        thread.join(10)
        left.close()
    assert not server_error
    return result


def test_the_context_serves_the_certificate_over_tls_12_or_later() -> None:
    identity = make_tls_identity("hello")
    assert identity.context.minimum_version == ssl.TLSVersion.TLSv1_2
    version, peer = handshake(identity, client_context())
    assert version == "TLSv1.3" and peer == identity.certificate_der
    legacy = client_context()
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(identity, legacy) == ("TLSv1.2", identity.certificate_der)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_memfd_path_writes_no_file(private_tmp: Path) -> None:
    fds = set(os.listdir("/proc/self/fd"))
    identity = make_tls_identity("hello", use_memfd=True)
    assert handshake(identity, client_context())[1] == identity.certificate_der
    assert list(private_tmp.iterdir()) == []
    assert set(os.listdir("/proc/self/fd")) <= fds  # the in-memory files are closed


def test_the_fallback_writes_an_encrypted_key_privately_and_deletes_it(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, bytes]] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        key = Path(keyfile)
        seen.append(
            (
                stat.S_IMODE(key.parent.stat().st_mode),
                stat.S_IMODE(key.stat().st_mode),
                key.read_bytes(),
            )
        )
        original(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    identity = make_tls_identity("hello", use_memfd=False)
    assert handshake(identity, client_context())[1] == identity.certificate_der
    [(dir_mode, key_mode, key_pem)] = seen
    assert (dir_mode, key_mode) == (0o700, 0o600)
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert list(private_tmp.iterdir()) == []  # nothing left behind


def test_a_key_that_cannot_be_loaded_is_a_crypto_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from enclave_core.errors import CryptoError

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ssl.SSLError("boom")

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", broken)
    with pytest.raises(CryptoError, match="TLS: cannot load"):
        tls.make_tls_identity("hello")


# ---------------------------------------------------------------- the runtime serves it


def https_get(port: int, path: str, nonce: str) -> tuple[int, dict[str, str], bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context().wrap_socket(raw) as sock:
            peer = sock.getpeercert(binary_form=True)
            assert peer is not None
            request = (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Attestation-Nonce: {nonce}\r\n"
                "Connection: close\r\n\r\n"
            )
            sock.sendall(request.encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, peer


def test_the_runtime_serves_https_bound_into_every_attestation_document(
    make_config: Callable[..., Config],
) -> None:
    port = free_port()
    app = {
        "port": port,
        "command": [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
    }
    config = make_config(**DOUBLES_CONFIG, runtime={"tls": True}, app=app)
    plugins = get_plugin_manager(extra_plugins=[("test-doubles", DoublesPlugin())])
    rt = config.runtime
    temp_before = set(os.listdir(tempfile.gettempdir()))

    def plain(url: str) -> int:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback http
            return int(resp.status)

    async def scenario() -> tuple[Any, ...]:
        stop = asyncio.Event()
        task = asyncio.create_task(serve_runtime(config, plugins, stop=stop))
        deadline = time.monotonic() + 30
        while True:
            try:
                health = await asyncio.to_thread(https_get, rt.port, "/health", "h")
                if health[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        info = await asyncio.to_thread(https_get, rt.port, "/v1/enclave-info", "n-1")
        att = await asyncio.to_thread(https_get, rt.port, "/enclave/attestation?nonce=0a0b", "")
        control = await asyncio.to_thread(plain, f"http://127.0.0.1:{rt.control_port}/health")
        stop.set()
        return health, info, att, control, await task

    health, info, att, control, code = asyncio.run(scenario())
    assert code == 0 and control == 200  # the control listener stays plain HTTP
    status, headers, body, peer = info
    document = json.loads(body)
    assert status == 200 and document["tls_cert_sha256"] == hashlib.sha256(peer).hexdigest()
    verify_response_signature(
        headers["x-attestation-pubkey"],
        headers["x-attestation-signature"],
        "GET",
        "/v1/enclave-info",
        200,
        body,
        "n-1",
    )
    assert headers["x-attestation-pubkey"] == document["attestation_pubkey"]
    # Every document a client or KMS sees (the Recipient ones of boot included) binds the
    # certificate and the key; the others bind an attested record (the manifest) instead.
    bound = attestation_user_data(peer, bytes.fromhex(document["attestation_pubkey"]))
    nsm = shared(MemoryNsm, config.state_dir)
    seen = [d for d in nsm.documents if d["public_key"] is not None or d["nonce"] is not None]
    assert any(d["public_key"] is not None for d in seen)
    assert all(d["user_data"] == bound for d in seen)
    records = [d for d in nsm.documents if d not in seen]
    assert records and all(len(d["user_data"]) == 32 for d in records)
    assert att[0] == 200 and nsm.documents[-1]["nonce"] == bytes.fromhex("0a0b")
    # Neither the key nor the certificate went to the state directory or the temp directory.
    pem_marker = b"PRIVATE KEY"
    for path in config.state_dir.rglob("*"):
        if path.is_file():
            assert peer not in path.read_bytes() and pem_marker not in path.read_bytes()
    for name in set(os.listdir(tempfile.gettempdir())) - temp_before:
        assert not name.startswith("enclave-tls-")
