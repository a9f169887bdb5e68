"""A scriptable HTTPS "enclave" for the tests of `enclave verify`: real TLS, real documents.

It serves ``/enclave/attestation`` and ``/v1/enclave-info`` like the runtime does, with documents
from the real simulated NSM (dev CA) and a real Ed25519 signing key, but each step can be made to
misbehave (a replayed document, short user_data, a missing or foreign signature...), so every
check of :func:`enclave_core.verify.verify_enclave` can be seen failing end to end.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.protocol.signing import (
    NONCE_HEADER,
    PUBKEY_HEADER,
    SIGNATURE_HEADER,
    public_key_hex,
    sign_response,
)
from enclave_core.protocol.userdata import attestation_user_data
from enclave_core.runtime.tls import TlsIdentity, make_tls_identity


@dataclass
class Behaviour:
    """What the fake does; the defaults are an honest enclave."""

    #: Serve these bytes as the document instead of a fresh one (e.g. a replayed document).
    document: bytes | None = None
    #: Bind this user_data instead of the honest 68 bytes.
    user_data: bytes | None = None
    #: Sign with this key while announcing it (None: the attested key).
    signing_key: Ed25519PrivateKey | None = None
    #: Sign over this nonce instead of the request's (a replayed signed response).
    signed_nonce: str | None = None
    #: Sign the answer to a path (its query left out) as the answer to this (method, target)
    #: instead (the signed answer to another request, e.g. a recorded ``GET /health``).
    signed_for: dict[str, tuple[str, str]] = field(default_factory=dict)
    sign: bool = True
    close_after_attestation: bool = False
    #: Fields of enclave-info to override.
    info: dict[str, Any] = field(default_factory=dict)


class FakeEnclave:
    """An HTTPS server on 127.0.0.1 with a simulated NSM; ``url`` is its base URL."""

    def __init__(self, folder: Path, *, pcr0: bytes | None = None) -> None:
        (folder / "app").mkdir(parents=True, exist_ok=True)
        self.nsm = SimulatedNsm(state_dir=folder / "state", app_dir=folder / "app", pcr0=pcr0)
        self.root_pem = folder / "state" / "dev-root.pem"
        self.nsm.attestation(nonce=b"warm-up")  # the dev CA writes its root on first use
        self.tls: TlsIdentity = make_tls_identity("fake")
        self.key = Ed25519PrivateKey.generate()
        self.behaviour = Behaviour()
        self.pcr0 = self.nsm.describe_pcr(0).data
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests.append(self.path)
                status, body, close = fake.answer(self.path)
                nonce = self.headers.get(NONCE_HEADER) or ""
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                behaviour = fake.behaviour
                if behaviour.sign:
                    key = behaviour.signing_key or fake.key
                    signed = nonce if behaviour.signed_nonce is None else behaviour.signed_nonce
                    # the request's method and target as the client sent them
                    method, target = self.command, self.path
                    method, target = behaviour.signed_for.get(
                        urlsplit(target).path, (method, target)
                    )
                    signature = sign_response(key, method, target, status, body, signed)
                    self.send_header(SIGNATURE_HEADER, signature)
                    self.send_header(PUBKEY_HEADER, public_key_hex(key))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = self.tls.context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def honest_user_data(self) -> bytes:
        """What the runtime binds: the TLS certificate's and the signing key's hashes."""
        return attestation_user_data(
            self.tls.certificate_der, bytes.fromhex(public_key_hex(self.key))
        )

    def answer(self, target: str) -> tuple[int, bytes, bool]:
        """Status, body and whether to close, for one GET."""
        parts = urlsplit(target)
        behaviour = self.behaviour
        if parts.path == "/enclave/attestation":
            nonce = bytes.fromhex(parse_qs(parts.query)["nonce"][0])
            document = behaviour.document
            if document is None:
                user_data = behaviour.user_data
                if user_data is None:
                    user_data = self.honest_user_data()
                document = self.nsm.attestation(nonce=nonce, user_data=user_data)
            return 200, base64.b64encode(document), behaviour.close_after_attestation
        if parts.path == "/v1/enclave-info":
            info = {
                "name": "fake",
                "pcr0": self.pcr0.hex(),
                "attestation_pubkey": public_key_hex(self.key),
                "tls_cert_sha256": self.tls.sha256,
                "previous_pcr0": "genesis",
                "key_origin": "genesis",
                "migration_chain": [],
                **behaviour.info,
            }
            return 200, json.dumps(info).encode(), False
        return 404, b'{"title":"Not found"}', False

    def close(self) -> None:
        """Stop serving and release the socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
