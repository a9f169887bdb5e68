"""``run_runtime``: the enclave's entry point, serving every runtime listener on one event loop.

The public listener (own routes + streaming proxy to the app), the app API and the control listener
start first, so ``/health`` answers during boot; boot then runs as a task. With ``runtime.tls``
(the default) the public listener serves HTTPS with a certificate made in memory just before it
starts (:mod:`enclave_core.runtime.tls`), so every attestation document binds it; the control
listener and the app API stay plain HTTP (loopback or vsock, never forwarded by ingress).
SIGTERM or SIGINT stops the app, then the listeners, and returns 0; repeated app failures
return 3.

All three listeners are the runtime's own HTTP/1.1 server (:mod:`enclave_core.http.proxy`; the
app API and the control listener as :class:`~enclave_core.http.proxy.AsgiListener`), each with
the limits of ``runtime.limits``.

Inside a Nitro Enclave (:func:`~enclave_core.streams.host_bridges.in_enclave`) the public and
control listeners are vsock ports, the runtime starts the loopback bridges to the host's egress
proxy and IMDS forwarder, and runs on the standard asyncio loop (uvloop cannot carry vsock). In
every mode it sets ``HTTPS_PROXY``, ``NO_PROXY`` and ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` for
itself (and the app gets them too), so its AWS clients go through the host's egress policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.http.proxy import AsgiListener, ProxyListener, raise_file_limit
from enclave_core.plugin.manager import Plugins
from enclave_core.protocol.signing import listener_error_signer
from enclave_core.runtime.appapi import create_app_api
from enclave_core.runtime.boot import app_env_provider, retire_when_serving, run_boot
from enclave_core.runtime.child import EXIT_APP_FAILED, AppSupervisor
from enclave_core.runtime.own_routes import create_control_app, create_public_app, is_own_path
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.tls import make_tls_identity
from enclave_core.streams.host_bridges import (
    Bridge,
    in_enclave,
    proxy_environment,
    start_bridges,
    stop_bridges,
)
from enclave_core.streams.transport import VSOCK_ANY_CID, event_loop_factory

EXIT_LISTEN_FAILED = 1


def run_runtime(config: Config, plugins: Plugins) -> int:
    """Run the runtime until SIGTERM/SIGINT (0) or repeated app failures (3); blocks.

    Logging is configured by the caller (the CLI). Sets the egress variables of
    :func:`~enclave_core.streams.host_bridges.proxy_environment` in this process's environment.
    """
    from enclave_core.streams.logchannel import start_runtime_channel

    raise_file_limit()  # room for max_connections on each listener
    os.environ.update(proxy_environment(config))
    # In a Nitro enclave the log lines also go to the host over vsock
    # (enclave_core.streams.logchannel).
    channel = start_runtime_channel(config)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(vsock=in_enclave(config))) as runner:
            return runner.run(serve_runtime(config, plugins))
    finally:
        if channel is not None:
            channel.close()  # sends the last lines ("runtime stopped") within 2 s


async def serve_runtime(
    config: Config,
    plugins: Plugins,
    *,
    stop: asyncio.Event | None = None,
    supervisor_options: dict[str, Any] | None = None,
) -> int:
    """The runtime on the running loop; returns its exit code.

    :param stop: set it to shut down (SIGTERM and SIGINT set it too).
    :param supervisor_options: keyword arguments for :class:`AppSupervisor` (tests shorten delays).
    """
    state = RuntimeState(config)  # its stage is "config" until boot moves on
    rt = config.runtime
    enclave = in_enclave(config)
    # Inside an enclave the host reaches the public and control listeners over vsock only.
    outside = f"vsock://{VSOCK_ANY_CID}" if enclave else "tcp://127.0.0.1"
    ssl_context = None
    if rt.tls:
        # Before the listener and before boot's first attestation document, which binds it.
        try:
            identity = make_tls_identity(config.name)
        except EnclaveError as exc:
            logger.bind(error=str(exc)).error("runtime cannot serve TLS")
            return EXIT_LISTEN_FAILED
        state.tls_cert_der, state.tls_cert_sha256 = identity.certificate_der, identity.sha256
        ssl_context = identity.context
        logger.bind(tls_cert_sha256=identity.sha256).info("TLS certificate made")
    app_api_address = f"tcp://127.0.0.1:{rt.app_api_port}"
    control_address = f"{outside}:{rt.control_port}"
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = AppSupervisor(
        config,
        state,
        app_env_provider(state),
        on_first_ready=retire_when_serving(state),
        **(supervisor_options or {}),
    )
    public = ProxyListener(
        own_app=create_public_app(state),
        is_own_path=is_own_path,
        upstream_host="127.0.0.1",
        upstream_port=config.app.port,
        metrics=state.metrics,
        app_unavailable=state.app_unavailable,
        ssl_context=ssl_context,
        limits=rt.limits,
        error_signer=listener_error_signer(state),
    )
    app_api = AsgiListener(create_app_api(state), name="app API", limits=rt.limits)
    control = AsgiListener(create_control_app(state), name="control listener", limits=rt.limits)
    listeners = [(app_api, app_api_address), (control, control_address)]
    bridges: list[Bridge] = []
    code = 0
    boot: asyncio.Task[bool] | None = None
    public_started = False
    try:
        try:
            await public.start(f"{outside}:{rt.port}")
            public_started = True
            for listener, address in listeners:
                await listener.start(address)
            if enclave:  # before boot: KMS and IMDS are reached through them
                bridges = await start_bridges(config)
        except (OSError, EnclaveError) as exc:
            logger.bind(error=str(exc)).error("runtime cannot listen")
            return EXIT_LISTEN_FAILED
        logger.bind(
            public=f"{outside}:{rt.port}",
            tls=rt.tls,
            app_api=app_api_address,
            control=control_address,
        ).info("runtime listening")
        boot = asyncio.create_task(run_boot(state, plugins, app.start), name="boot")
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(app.failed.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        code = EXIT_APP_FAILED if app.failed.is_set() else 0
        logger.bind(exit_code=code).info("runtime stopping")
    finally:
        if boot is not None and not boot.done():
            boot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await boot
        await app.stop()
        for listener, _ in listeners:
            await listener.close()
        await stop_bridges(bridges)
        if public_started:
            await public.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    logger.bind(exit_code=code).info("runtime stopped")
    return code
