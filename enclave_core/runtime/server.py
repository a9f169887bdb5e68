"""``run_runtime``: the enclave's entry point, serving every runtime listener on one event loop.

The public listener (TLS, own routes and the proxy to the app), the app API and the control
listener start first, so ``/health`` answers during boot; boot then runs as a task. SIGTERM or
SIGINT stops the app, then the listeners, and returns 0; repeated app failures return 3. Inside a
Nitro Enclave the outside listeners are vsock ports, the host bridges start, and the loop is
asyncio's own (docs/architecture.md, "How they talk").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Coroutine
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.http.listener import AsgiListener, raise_file_limit
from enclave_core.http.proxy import ProxyListener
from enclave_core.plugin.manager import PluginManager
from enclave_core.protocol.signing import listener_error_signer
from enclave_core.runtime.appapi import create_app_api
from enclave_core.runtime.boot import app_env_provider, retire_when_serving, run_boot
from enclave_core.runtime.child import EXIT_APP_FAILED, AppSupervisor
from enclave_core.runtime.own_routes import create_control_app, create_public_app, is_own_path
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.tls import make_tls_identity
from enclave_core.streams.host_bridges import (
    in_enclave,
    proxy_environment,
    start_bridges,
    stop_bridges,
)
from enclave_core.streams.transport import VSOCK_ANY_CID, event_loop_factory

EXIT_LISTEN_FAILED = 1


def run_runtime(config: Config, plugins: PluginManager) -> int:
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
    plugins: PluginManager,
    *,
    stop: asyncio.Event | None = None,
    supervisor_options: dict[str, Any] | None = None,
) -> int:
    """The runtime on the running loop; returns its exit code.

    :param stop: set it to shut down (SIGTERM and SIGINT set it too).
    :param supervisor_options: keyword arguments for :class:`AppSupervisor` (tests shorten delays).
    """
    state = RuntimeState(config)  # its stage is "config" until boot moves on
    try:
        ssl_context = _tls_context(state) if config.runtime.tls else None
    except EnclaveError as exc:
        logger.bind(error=str(exc)).error("runtime cannot serve TLS")
        return EXIT_LISTEN_FAILED
    stop = stop or asyncio.Event()
    app = AppSupervisor(
        config,
        state,
        app_env_provider(state),
        on_first_ready=retire_when_serving(state),
        **(supervisor_options or {}),
    )
    # Teardown runs in reverse: boot, the app, the bridges, the listeners, the signal handlers.
    async with contextlib.AsyncExitStack() as stack:
        _handle_signals(stack, stop)
        try:
            await _start_listeners(stack, state, ssl_context)
            if in_enclave(config):  # before boot: KMS and IMDS are reached through them
                stack.push_async_callback(stop_bridges, await start_bridges(config))
        except (OSError, EnclaveError) as exc:
            logger.bind(error=str(exc)).error("runtime cannot listen")
            stack.push_async_callback(app.stop)
            return EXIT_LISTEN_FAILED
        stack.push_async_callback(app.stop)
        boot = asyncio.create_task(run_boot(state, plugins, app.start), name="boot")
        stack.push_async_callback(_cancel, boot)
        await _first_of(stop.wait(), app.failed.wait())
        code = EXIT_APP_FAILED if app.failed.is_set() else 0
        logger.bind(exit_code=code).info("runtime stopping")
    logger.bind(exit_code=code).info("runtime stopped")
    return code


def _tls_context(state: RuntimeState) -> ssl.SSLContext:
    """Make the TLS identity, before the listener and before boot's first attestation document,
    which binds it."""
    identity = make_tls_identity(state.config.name)
    state.tls_cert_der, state.tls_cert_sha256 = identity.certificate_der, identity.sha256
    logger.bind(tls_cert_sha256=identity.sha256).info("TLS certificate made")
    return identity.context


def _handle_signals(stack: contextlib.AsyncExitStack, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
        stack.callback(loop.remove_signal_handler, sig)


async def _start_listeners(
    stack: contextlib.AsyncExitStack, state: RuntimeState, ssl_context: ssl.SSLContext | None
) -> None:
    """The public listener, the app API and the control listener, each closed by ``stack``."""
    config, rt = state.config, state.config.runtime
    # Inside an enclave the host reaches the public and control listeners over vsock only.
    outside = f"vsock://{VSOCK_ANY_CID}" if in_enclave(config) else "tcp://127.0.0.1"
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
    addresses = {
        "public": f"{outside}:{rt.port}",
        "app_api": f"tcp://127.0.0.1:{rt.app_api_port}",
        "control": f"{outside}:{rt.control_port}",
    }
    for listener, address in zip((public, app_api, control), addresses.values(), strict=True):
        await listener.start(address)
        stack.push_async_callback(listener.close)
    logger.bind(tls=rt.tls, **addresses).info("runtime listening")


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.create_task(wait) for wait in waits]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
