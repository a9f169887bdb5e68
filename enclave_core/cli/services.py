"""`enclave runtime` (the enclave's entry point) and `enclave supervisor` (the host service)."""

from __future__ import annotations

import argparse
import os

from enclave_core.cli.common import EnclaveCommand
from enclave_core.image.current import apply_image_override


class Runtime(EnclaveCommand):
    """Run the enclave runtime in the foreground: boot, serve, start the app as a child.

    This is what the launcher starts inside the enclave (or as a local process in development).
    SIGTERM or SIGINT stops the app, then the listeners.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Load the config and run the runtime until it is told to stop."""
        # Imported here: the runtime pulls in the HTTP stack, which other commands do not need.
        from enclave_core.runtime.allocator import tune_allocator
        from enclave_core.runtime.server import run_runtime
        from enclave_core.supervisor.service import DEFAULTS_ENV

        tune_allocator()  # before any large buffer: see enclave_core.runtime.allocator

        config = self.load(parsed_args, allow_missing=os.environ.get(DEFAULTS_ENV) == "1")
        config = apply_image_override(config)  # a migrated development image's app folder
        return run_runtime(config, self.plugins(config))


class Supervisor(EnclaveCommand):
    """Run the host supervisor in the foreground: management API, watchdog, forwarders.

    It starts the enclave through the configured launcher and keeps it alive. SIGTERM or SIGINT
    stops the enclave and everything else within 10 seconds.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Load the config and run the supervisor until it is told to stop."""
        from enclave_core.supervisor.service import run_supervisor

        config = apply_image_override(self.load(parsed_args))
        return run_supervisor(config, self.plugins(config))
