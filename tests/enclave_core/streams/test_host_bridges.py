"""The in-enclave bridges (with TCP standing in for vsock), the egress variables, and a dev stack
whose app reaches the world only through the supervisor's egress policy."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.plugin.backends import plugins_for
from enclave_core.runtime.child import app_environment
from enclave_core.runtime.server import EXIT_LISTEN_FAILED, run_runtime
from enclave_core.runtime.state import RuntimeState
from enclave_core.streams.host_bridges import (
    Bridge,
    in_enclave,
    parent_address,
    proxy_environment,
    start_bridges,
    stop_bridges,
)
from enclave_core.testing import free_port
from tests.e2e.stack import make_stack
from tests.enclave_core.supervisor.egress_helpers import (
    echo_digest,
    send_and_half_close,
    start_tls_server,
    stop_tls_server,
)
from tests.helpers import LoopThread, wait_for


def echo_servers(loop: LoopThread, count: int) -> list[asyncio.Server]:
    async def start() -> list[asyncio.Server]:
        return [await asyncio.start_server(echo_digest, "127.0.0.1", 0) for _ in range(count)]

    return loop.run(start())


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def roundtrip(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and return everything until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(target=send_and_half_close, args=(sock, payload))
        sender.start()
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        sender.join()
    return b"".join(chunks)


def test_bridges_listen_on_the_egress_ports_and_splice_both_ways(
    loop: LoopThread, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    backends = echo_servers(loop, 2)
    targets = {
        config.egress.port: f"tcp://127.0.0.1:{port_of(backends[0])}",
        config.egress.imds_port: f"tcp://127.0.0.1:{port_of(backends[1])}",
    }
    bridges = loop.run(start_bridges(config, target=targets.__getitem__))
    try:
        assert [b.bound for b in bridges] == [
            f"tcp://127.0.0.1:{config.egress.port}",
            f"tcp://127.0.0.1:{config.egress.imds_port}",
        ]
        for port in (config.egress.port, config.egress.imds_port):
            payload = os.urandom(1024 * 1024 + port % 1000)
            digest = hashlib.sha256(payload).hexdigest().encode()
            # the echo, then the digest the target sends after seeing our half-close
            assert roundtrip(port, payload) == payload + b"EOF " + digest
    finally:
        loop.run(stop_bridges(bridges))
        for server in backends:
            server.close()
    for port in (config.egress.port, config.egress.imds_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_by_default_bridges_target_the_parent_instance_over_vsock() -> None:
    assert parent_address(8001) == "vsock://3:8001"


def test_an_unreachable_host_closes_the_connection(loop: LoopThread) -> None:
    bridge = Bridge(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    loop.run(bridge.start())
    try:
        port = int(bridge.bound.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(10) == b""
    finally:
        loop.run(bridge.close())


def test_a_taken_port_fails_naming_it_and_leaves_nothing_listening(
    loop: LoopThread, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config.egress.imds_port))
        taken.listen()
        with pytest.raises(
            EnclaveError, match=f"bridge cannot listen on .*:{config.egress.imds_port}"
        ):
            loop.run(start_bridges(config, target=lambda port: f"tcp://127.0.0.1:{port}"))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", config.egress.port), timeout=5).close()


def test_close_cuts_open_connections(loop: LoopThread) -> None:
    [backend] = echo_servers(loop, 1)
    bridge = Bridge(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{port_of(backend)}")
    loop.run(bridge.start())
    port = int(bridge.bound.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            loop.run(bridge.close())
            assert sock.recv(10) == b""
    finally:
        loop.run(bridge.close())
        backend.close()


def test_in_enclave_means_an_nsm_device_or_nitro_attestation(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    device = tmp_path / "nsm"
    config = make_config()
    assert not in_enclave(config, nsm_device=device)
    device.touch()
    assert in_enclave(config, nsm_device=device)
    nitro = make_config(folder=tmp_path / "nitro", attestation={"backend": "nitro"})
    assert in_enclave(nitro, nsm_device=tmp_path / "absent")


def test_the_runtime_and_the_app_get_the_egress_variables(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(app={"env": {"NO_PROXY": "127.0.0.1,localhost,::1,internal.test"}})
    expected = {
        "HTTPS_PROXY": f"http://127.0.0.1:{config.egress.port}",
        "https_proxy": f"http://127.0.0.1:{config.egress.port}",
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{config.egress.imds_port}",
    }
    assert proxy_environment(config) == expected
    state = RuntimeState(config)
    state.mgmt_token = "t" * 64
    env = app_environment(config, state, {})
    assert env["HTTPS_PROXY"] == env["https_proxy"] == expected["HTTPS_PROXY"]
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == expected["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    assert env["NO_PROXY"] == "127.0.0.1,localhost,::1,internal.test"  # app.env wins
    assert "HTTP_PROXY" not in env or env["HTTP_PROXY"] == os.environ.get("HTTP_PROXY")


def test_run_runtime_sets_the_variables_in_its_own_environment(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config()
    for var in proxy_environment(config):
        monkeypatch.delenv(var, raising=False)  # and restored after the test
    with socket.socket() as taken:  # the runtime stops at once: its public port is taken
        taken.bind(("127.0.0.1", config.runtime.port))
        taken.listen()
        assert run_runtime(config, plugins_for(config)) == EXIT_LISTEN_FAILED
    assert {var: os.environ.get(var) for var in proxy_environment(config)} == proxy_environment(
        config
    )


@pytest.mark.e2e
def test_in_a_dev_stack_the_app_goes_out_only_through_the_egress_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    server, cert = start_tls_server(tmp_path)
    tls_port = server.server_address[1]
    stack = make_stack(tmp_path / "hello", egress={"allow": [f"localhost:{tls_port}"]})
    try:
        stack.start()
        egress, imds = stack.document["egress"]["port"], stack.document["egress"]["imds_port"]
        app_env = stack.app_env()
        assert app_env["HTTPS_PROXY"] == f"http://127.0.0.1:{egress}"
        assert app_env["NO_PROXY"] == "127.0.0.1,localhost,::1"
        assert app_env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == f"http://127.0.0.1:{imds}"

        # What the app's HTTP clients do with that environment: allowed, then refused.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": app_env["HTTPS_PROXY"]}),
            urllib.request.HTTPSHandler(context=_trusting(cert)),
        )
        with opener.open(f"https://localhost:{tls_port}/allowed", timeout=10) as answer:
            assert answer.read() == b"hello over TLS"
        with pytest.raises(urllib.error.URLError, match="403"):
            opener.open(f"https://127.0.0.1:{tls_port}/refused", timeout=10)
        assert server.paths == ["/allowed"]
        # IMDSv2 only, at the endpoint the SDKs are given
        request = urllib.request.Request(
            app_env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
            + "/latest/meta-data/iam/security-credentials/"
        )
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback

        refused = wait_for(
            lambda: (
                '"msg": "egress refused"' in stack.stderr_path.read_text()
                and stack.stderr_path.read_text()
            )
        )
        assert f'"host": "127.0.0.1", "port": {tls_port}' in refused
    finally:
        stack.stop()
        stack.kill_leftovers()
        stop_tls_server(server)


def _trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))
