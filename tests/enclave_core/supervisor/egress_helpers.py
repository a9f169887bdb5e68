"""Test helpers: a loop in a thread (for blocking clients), captured logs, echo and TLS servers."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loguru import logger

T = TypeVar("T")


class LogRecords(list[dict[str, Any]]):
    """Collects every log record while active: ``{"msg", "level", **extra}`` each."""

    def __enter__(self) -> LogRecords:
        self._handler = logger.add(self._sink, level="DEBUG")
        return self

    def __exit__(self, *exc: object) -> None:
        logger.remove(self._handler)

    def _sink(self, message: Any) -> None:
        record = message.record
        self.append({"msg": record["message"], "level": record["level"].name, **record["extra"]})

    def named(self, msg: str) -> list[dict[str, Any]]:
        """The records whose message is ``msg``."""
        return [entry for entry in self if entry["msg"] == msg]


def send_and_half_close(sock: socket.socket, payload: bytes) -> None:
    """Send everything, then shut down the sending side (for a thread)."""
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)


async def echo_digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every chunk; after the client's EOF, send ``EOF <sha256 of what came>`` and close."""
    digest = hashlib.sha256()
    while chunk := await reader.read(65536):
        digest.update(chunk)
        writer.write(chunk)
        await writer.drain()
    writer.write(b"EOF " + digest.hexdigest().encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


class _Hello(BaseHTTPRequestHandler):
    server: TlsServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.paths.append(self.path)
        body = b"hello over TLS"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsServer(ThreadingHTTPServer):
    """TEST-ONLY HTTPS server answering ``hello over TLS`` and recording the paths asked."""

    daemon_threads = True

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Hello)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.paths: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)


def start_tls_server(folder: Path) -> tuple[TlsServer, Path]:
    """Start a :class:`TlsServer` for localhost; returns it and its certificate (a CA file)."""
    cert, key = make_certificate(folder)
    server = TlsServer(cert, key)
    server.thread.start()
    return server, cert


def stop_tls_server(server: TlsServer) -> None:
    server.shutdown()
    server.server_close()
    server.thread.join()
