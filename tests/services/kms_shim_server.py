"""TEST-ONLY: the KMS Recipient shim as an HTTP server in front of moto, for runtimes in their own
process.

:class:`~tests.services.kms_recipient_shim.KmsRecipientShim` gives moto's KMS the Recipient flow,
key policies and key states of AWS KMS through botocore hooks, which only works inside the test's
own process. A runtime started as a separate process talks HTTP, so :class:`KmsShimServer` applies
the same rules (:meth:`KmsRecipientShim.check`) on the wire. It is a threaded HTTP server on a free
loopback port that forwards every request to the moto server, except KMS JSON requests
(``X-Amz-Target: TrentService.<op>``) of the operations the shim checks:

- the parameters are decoded (base64 blobs to bytes) and checked as the in-process shim does:
  attestation document against the trusted root, key policy for ``principal`` with the document's
  PCRs and the encryption context, lockout safety check, key state; a refusal is answered here,
  as KMS would (``{"__type": code, "message": ...}``, HTTP 400);
- ``Recipient`` is stripped before forwarding, and in the answer ``Plaintext`` is replaced by
  ``CiphertextForRecipient`` (base64 of the CMS envelope for the document's key);
- CreateKey and DescribeKey answers get the key metadata KMS would report
  (:meth:`KmsRecipientShim.correct_metadata`).

S3, SSM, STS and every other request pass through untouched, so the shim can be the one
``endpoint_url`` of every backend (moto routes by the request's signing scope).

The trusted root is read lazily from a file (:class:`RootFile`), again whenever it changes:
the dev root of a stack under test (``<state_dir>/dev-root.pem``) exists only once its simulated
NSM has run. Fixture: ``kms_shim_endpoint`` (a factory; servers stop by their handle at teardown).
Never use this outside ``tests/``.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from enclave_core.crypto.recipient_checks import VerifiedRecipient
from enclave_core.errors import AttestationError
from tests.services.kms_recipient_shim import (
    ACTIONS,
    METADATA_OPS,
    MOTO_PRINCIPAL,
    KmsRecipientShim,
)

KMS_TARGET = "TrentService."
UPSTREAM_TIMEOUT_S = 60.0
JSON_TYPE = "application/x-amz-json-1.1"
#: Headers that belong to one connection, not to the request or answer being relayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)


class RootFile:
    """The certificate in a PEM file, read on every use and parsed again whenever it changes.

    Callable as :class:`KmsRecipientShim`'s ``root``; AttestationError while the file is missing
    (the shim then refuses Recipient requests as KMS refuses an unverifiable document). Contents
    are compared, not timestamps, so a rewrite within one clock tick is still seen.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pem: bytes | None = None
        self._certificate: x509.Certificate | None = None
        self._lock = threading.Lock()

    def __call__(self) -> x509.Certificate:
        try:
            pem = self.path.read_bytes()
        except FileNotFoundError:
            raise AttestationError(
                f"the shim's trusted root {self.path} does not exist (has the NSM run yet?)"
            ) from None
        with self._lock:
            if self._certificate is None or pem != self._pem:
                try:
                    self._certificate = x509.load_pem_x509_certificate(pem)
                except ValueError:
                    raise AttestationError(
                        f"the shim's trusted root {self.path} is not a PEM certificate"
                    ) from None
                self._pem = pem
            return self._certificate


def _b64(value: Any) -> Any:
    """A base64 string as bytes (what the in-process shim sees); anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value


def _params(request: dict[str, Any]) -> dict[str, Any]:
    """The KMS JSON request as botocore-level parameters: blobs decoded to bytes."""
    params = dict(request)
    if "CiphertextBlob" in params:
        params["CiphertextBlob"] = _b64(params["CiphertextBlob"])
    recipient = params.get("Recipient")
    if isinstance(recipient, dict):
        document = _b64(recipient.get("AttestationDocument"))
        params["Recipient"] = {
            **recipient,
            "AttestationDocument": document if isinstance(document, bytes) else b"",
        }
    return params


class KmsShimServer(ThreadingHTTPServer):
    """The shim on ``127.0.0.1:<free port>``, forwarding to ``upstream`` (the moto server).

    :param root: the trusted root: a PEM file path (read lazily, see :class:`RootFile`), a
        certificate, or a callable returning one.
    :param principal: the IAM ARN key policies are evaluated for (moto's caller by default).
    Use :meth:`start` and :meth:`stop` (or ``with``); ``url`` is the endpoint to give backends.
    """

    daemon_threads = True

    def __init__(
        self,
        *,
        upstream: str,
        root: Path | x509.Certificate | Callable[[], x509.Certificate],
        region: str = "us-east-1",
        principal: str = MOTO_PRINCIPAL,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ShimHandler)
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        trusted = RootFile(root) if isinstance(root, Path) else root
        self.shim = KmsRecipientShim(
            root=trusted, endpoint_url=upstream, region=region, principal=principal
        )
        self.kms_calls: list[str] = []  # KMS operations seen, in order, for assertions
        self.refused: list[tuple[str, str]] = []  # (operation, error code) answered here
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def verified(self) -> list[VerifiedRecipient]:
        """Every Recipient the shim accepted."""
        return self.shim.verified

    def start(self) -> KmsShimServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()

    def __enter__(self) -> KmsShimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def relay(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request to the upstream server; return its status, headers and body."""
        connection = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT_S)
        try:
            sent: dict[str, str] = {}
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    sent[name] = value
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


class _ShimHandler(BaseHTTPRequestHandler):
    server: KmsShimServer
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects; 100-continue

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        target = self.headers.get("X-Amz-Target", "")
        operation = target[len(KMS_TARGET) :] if target.startswith(KMS_TARGET) else ""
        try:
            if operation in ACTIONS:
                self.server.kms_calls.append(operation)
                return self._kms(operation, body)
            self._forward(body)
        except Exception as exc:  # the test must see a failure, not a hung client
            self._json(500, {"__type": "KMSInternalException", "message": f"shim: {exc!r}"})

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

    def _forward(self, body: bytes) -> None:
        status, headers, answer = self.server.relay(
            self.command, self.path, list(self.headers.items()), body or None
        )
        self._answer(status, headers, answer)

    def _kms(self, operation: str, body: bytes) -> None:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return self._forward(body)  # moto answers malformed requests itself
        if not isinstance(request, dict):
            return self._forward(body)
        outcome = self.server.shim.check(operation, _params(request))
        if isinstance(outcome, tuple):
            self.server.refused.append((operation, outcome[0]))
            return self._json(400, {"__type": outcome[0], "message": outcome[1]})
        if outcome is not None:
            self.server.shim.verified.append(outcome)
        request.pop("Recipient", None)
        stripped = json.dumps(request).encode()
        status, headers, answer = self.server.relay(
            self.command, self.path, list(self.headers.items()), stripped
        )
        if outcome is not None and status == 200:
            data = json.loads(answer)
            if "Plaintext" in data:
                plaintext = base64.b64decode(data.pop("Plaintext"))
                data["CiphertextForRecipient"] = base64.b64encode(
                    outcome.envelope(plaintext)
                ).decode()
                answer = json.dumps(data).encode()
        if operation in METADATA_OPS and status == 200:
            answer = self._metadata(operation, request, answer)
        self._answer(status, headers, answer)

    def _metadata(self, operation: str, request: dict[str, Any], answer: bytes) -> bytes:
        """A CreateKey or DescribeKey answer with the key metadata KMS would report."""
        data = json.loads(answer)
        meta = data.get("KeyMetadata")
        if not isinstance(meta, dict):
            return answer
        shim = self.server.shim
        if operation == "CreateKey" and request.get("CustomKeyStoreId"):
            shim.remember_key_store(str(meta.get("KeyId")), str(request["CustomKeyStoreId"]))
        shim.correct_metadata(meta)
        return json.dumps(data).encode()

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        length = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = value
            elif lowered not in HOP_BY_HOP and lowered not in ("date", "server"):
                self.send_header(name, value)
        # HEAD answers describe the body they do not carry (S3 HeadObject's length)
        head = self.command == "HEAD" and length is not None
        self.send_header("Content-Length", length if head and length else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, document: dict[str, Any]) -> None:
        self._answer(status, [("Content-Type", JSON_TYPE)], json.dumps(document).encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def kms_shim_endpoint(
    moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., KmsShimServer]]:
    """A factory of running shims in front of this session's moto server.

    ``kms_shim_endpoint(root=None, *, principal=MOTO_PRINCIPAL) -> KmsShimServer``: ``root`` is
    the trusted dev root (a PEM path such as ``<state_dir>/dev-root.pem``, read lazily and
    re-read when it changes; or a certificate); None trusts ``dev-root.pem`` in a fresh
    temporary folder (``server.shim.root`` raises until someone writes it). Give backends
    ``server.url`` as their ``endpoint_url``. Every server is stopped by its handle at teardown.
    """
    servers: list[KmsShimServer] = []

    def start(
        root: Path | x509.Certificate | None = None, *, principal: str = MOTO_PRINCIPAL
    ) -> KmsShimServer:
        if root is None:
            root = tmp_path_factory.mktemp("kms-shim") / "dev-root.pem"
        server = KmsShimServer(upstream=moto_endpoint, root=root, principal=principal)
        servers.append(server.start())
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
