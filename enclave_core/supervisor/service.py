"""``enclave supervisor``: management API, one watchdog and the ingress forwarders in one loop.

:func:`run_supervisor` binds every listener first (a taken address fails fast, naming it), ends a
runtime a dead supervisor left behind (:mod:`.orphans`), starts the enclave, serves until SIGINT
or SIGTERM, then stops the watchdog, the forwarders, the enclave and the API within 10 seconds.
The egress proxy and the IMDS forwarder listen on vsock on a Nitro host, else on loopback TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from loguru import logger

from enclave_core.config import CONFIG_FILENAME, Config
from enclave_core.errors import EnclaveError
from enclave_core.http.listener import AsgiListener, raise_file_limit
from enclave_core.plugin.backends import build_backend
from enclave_core.plugin.interfaces import Kms, Launcher, LaunchSpec, Secrets
from enclave_core.plugin.manager import PluginManager
from enclave_core.streams import transport
from enclave_core.supervisor.api import create_app
from enclave_core.supervisor.egress import (
    host_uses_vsock,
    start_host_services,
    stop_host_services,
)
from enclave_core.supervisor.forwarders import IngressForwarder
from enclave_core.supervisor.logreceiver import start_supervisor_channel
from enclave_core.supervisor.migration.service import MigrationService, SupervisorEnclave
from enclave_core.supervisor.orphans import PidRecordingLauncher, stop_stale_runtime
from enclave_core.supervisor.prometheus import SupervisorMetrics
from enclave_core.supervisor.runtime_client import RuntimeClient, public_tls_context
from enclave_core.supervisor.token import ensure_token
from enclave_core.supervisor.watchdog import Watchdog

Announce = Callable[[dict[str, str]], None]

#: The launcher gets this long for a graceful stop before SIGKILL; the rest of the 10 s budget
#: covers the API's and forwarders' shutdown.
STOP_TIMEOUT_S = 6.0
API_SHUTDOWN_S = 2.0


#: Set in the runtime's environment when the stack runs on defaults, without an enclave.yaml.
DEFAULTS_ENV = "ENCLAVE_CONFIG_DEFAULTS"


def launch_spec(config: Config) -> LaunchSpec:
    """What the launcher starts for this config."""
    return LaunchSpec(
        config_path=config.path or config.base_dir / CONFIG_FILENAME,
        cpu_count=config.enclave.cpu_count,
        memory_mib=config.enclave.memory_mib,
        cid=config.enclave.cid,
        eif=config.resolve(config.enclave.eif),
        debug_mode=config.enclave.debug_mode,
        name=config.name,
        # Without an enclave.yaml the runtime must run on the same defaults as the supervisor.
        env={DEFAULTS_ENV: "1"} if config.path is None else {},
    )


def run_supervisor(
    config: Config, plugins: PluginManager, *, announce: Announce | None = None
) -> int:
    """Run the supervisor until SIGINT/SIGTERM; return the exit code (0 on a clean stop).

    :param announce: called once everything listens, with the URLs of the supervisor, the
        ingress, the runtime and the app.
    :raises EnclaveError: a listen address is taken, or the launcher cannot be built.
    """
    stop_stale_runtime(config.state_dir)
    raise_file_limit()  # room for max_connections on the API and each ingress listener
    launcher: Launcher = PidRecordingLauncher(
        build_backend(config, plugins, "launcher"), config.state_dir
    )
    token = ensure_token(config.state_dir)
    if not _is_loopback(config.supervisor.listen):
        logger.warning(
            "the management API listens on a non-loopback address",
            listen=config.supervisor.listen,
        )
    return _run(_serve(config, plugins, launcher, token, announce), vsock=host_uses_vsock(launcher))


def _run(coro: Coroutine[Any, Any, int], *, vsock: bool = False) -> int:
    # uvloop cannot carry vsock streams: a Nitro host runs on the standard loop (see transport).
    factory = transport.event_loop_factory(vsock=vsock)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


async def _serve(
    config: Config,
    plugins: PluginManager,
    launcher: Launcher,
    token: str,
    announce: Announce | None,
) -> int:
    # Teardown runs in reverse: the running phase's shutdown, the API, the egress services, the
    # forwarders, the log channel (after the enclave stopped: its last lines are kept), the socket.
    async with contextlib.AsyncExitStack() as stack:
        api_socket = _bind(config.supervisor.listen)
        stack.callback(api_socket.close)
        # The enclave's log lines over vsock (nitro-cli only; never fails the supervisor).
        log_channel = await start_supervisor_channel(config, launcher)
        if log_channel is not None:
            stack.push_async_callback(log_channel.close)
        forwarders = await _start_forwarders(config, launcher, stack)
        # vsock on a Nitro host; loopback TCP in development, so the policy applies there too.
        egress = await start_host_services(config, vsock=host_uses_vsock(launcher))
        stack.push_async_callback(stop_host_services, egress)
        stop = asyncio.Event()
        _handle_signals(stop)  # only once every listener is bound: a bind failure leaves none

        # The runtime's public listener speaks TLS when runtime.tls; read unverified (see
        # runtime_client: the supervisor is on the untrusted host and reads only public data).
        tls = public_tls_context() if config.runtime.tls else None
        runtime = RuntimeClient(launcher, config, ssl_context=tls)
        watchdog = Watchdog(
            launcher,
            launch_spec(config),
            runtime.health,
            config.supervisor.watchdog,
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        migration = _migration_service(config, plugins, launcher, watchdog, runtime)
        app = create_app(
            watchdog=watchdog,
            runtime_info=runtime.enclave_info,
            config=config,
            token=token,
            metrics=SupervisorMetrics(),
            migration=migration,
        )
        server = AsgiListener(app, name="management API", limits=config.supervisor.limits)
        await server.start(api_socket)
        stack.push_async_callback(_close_api, server)
        stack.push_async_callback(_stop_running, migration, watchdog, forwarders)
        await watchdog.boot()
        watchdog_task = asyncio.create_task(watchdog.run())  # exactly one watchdog
        stack.push_async_callback(_cancel, watchdog_task)
        urls = _urls(config, launcher, runtime, forwarders)
        logger.bind(**urls).info("supervisor ready")
        if announce is not None:
            announce(urls)
        await stop.wait()
        logger.info("supervisor stopping")
    logger.info("supervisor stopped")
    return 0


async def _start_forwarders(
    config: Config, launcher: Launcher, stack: contextlib.AsyncExitStack
) -> list[IngressForwarder]:
    """One ingress forwarder per ``supervisor.ingress`` entry, each closed by ``stack``."""
    limits = config.supervisor.limits
    forwarders = []
    for entry in config.supervisor.ingress:
        forwarder = IngressForwarder(
            entry.listen,
            partial(launcher.enclave_address, entry.port),
            max_connections=limits.max_connections,
            send_timeout_s=limits.send_timeout_s,
            half_closed_idle_s=limits.idle_timeout_s,
        )
        await forwarder.start()
        stack.push_async_callback(forwarder.close)
        forwarders.append(forwarder)
    return forwarders


def _migration_service(
    config: Config,
    plugins: PluginManager,
    launcher: Launcher,
    watchdog: Watchdog,
    runtime: RuntimeClient,
) -> MigrationService:
    loop = asyncio.get_running_loop()
    migration = MigrationService(
        config,
        backends=_lazy_backends(config, plugins),
        enclave_factory=lambda: SupervisorEnclave(
            config, launcher, watchdog, runtime.health, loop, stopping=migration.stopping
        ),
    )
    return migration


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _stop_running(
    migration: MigrationService, watchdog: Watchdog, forwarders: list[IngressForwarder]
) -> None:
    """Stop the migration, the forwarders, then the enclave (the watchdog task is gone)."""
    await migration.close()
    for forwarder in forwarders:
        await forwarder.close()
    try:
        await watchdog.shutdown()
    except EnclaveError as exc:
        logger.bind(error=str(exc)).error("stopping the enclave failed")


async def _close_api(server: AsgiListener) -> None:
    try:
        await server.close(grace_s=API_SHUTDOWN_S)
    except Exception as exc:  # noqa: BLE001 - shutting down regardless
        logger.bind(error=type(exc).__name__).warning("management API did not stop cleanly")


def _handle_signals(stop: asyncio.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread; an embedding caller stops us otherwise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def _bind(listen: str) -> Any:
    try:
        return transport.listen_socket(f"tcp://{listen}")
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EnclaveError(f"supervisor management API cannot listen on {listen}: {why}") from None


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url(address: str, scheme: str) -> str:
    """``tcp://H:P`` -> ``scheme://H:P`` (wildcards shown as loopback); others unchanged."""
    if not address.startswith("tcp://"):
        return address
    host, _, port = address[len("tcp://") :].rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    return f"{scheme}://{host}:{port}"


def _urls(
    config: Config, launcher: Launcher, runtime: RuntimeClient, forwarders: list[IngressForwarder]
) -> dict[str, str]:
    scheme = runtime.public_scheme
    return {
        "supervisor": _http_url(f"tcp://{config.supervisor.listen}", "http"),
        "ingress": ", ".join(_http_url(f"tcp://{f.bound}", scheme) for f in forwarders),
        "runtime": _http_url(runtime.public_address(), scheme),
        "app": f"http://127.0.0.1:{config.app.port}",
    }


def _lazy_backends(config: Config, plugins: PluginManager) -> Callable[[], tuple[Kms, Secrets]]:
    """The migration's KMS and Secrets backends, built once, on first use (the host principal)."""
    built: list[tuple[Kms, Secrets]] = []
    lock = threading.Lock()

    def get() -> tuple[Kms, Secrets]:
        with lock:
            if not built:
                kms = build_backend(config, plugins, "kms")
                built.append((kms, build_backend(config, plugins, "secrets")))
            return built[0]

    return get
