"""`enclave dev`: the supervisor, the runtime and the app on this machine, in the foreground."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from enclave_core.backends import validate_backends
from enclave_core.cli.common import EnclaveCommand, config_error
from enclave_core.image import apply_image_override

READY_LINE = "Ready. Press Ctrl-C to stop."


def announcer(write: Callable[[str], None]) -> Callable[[dict[str, str]], None]:
    """Return the callback that prints where each part listens, then the ready line.

    It receives the supervisor's ``{"supervisor": url, "ingress": ..., "runtime": ..., "app": ...}``
    once everything is up.
    """

    def announce(addresses: dict[str, str]) -> None:
        labels = {key: key.replace("_", " ") for key in addresses}
        width = max((len(label) for label in labels.values()), default=0) + 2
        for key, where in addresses.items():
            write(f"{labels[key]:<{width}}{where}")
        write(READY_LINE)

    return announce


class Dev(EnclaveCommand):
    """Run supervisor, runtime and app on this machine, in the foreground.

    Works without an enclave.yaml (the defaults apply) and keeps its state in `.enclave/`.
    Ctrl-C or SIGTERM stops everything within 10 seconds.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Load (or default) the config, check its backends, run the supervisor until stopped."""
        from enclave_core.supervisor.service import run_supervisor

        path = self.config_path(parsed_args)
        config = apply_image_override(self.load(parsed_args, allow_missing=True))
        plugins = self.plugins(config)
        # Fail here, with every problem listed, rather than inside a child process.
        problems = validate_backends(config, plugins)
        if problems:
            raise config_error(path, problems)
        os.makedirs(config.state_dir, exist_ok=True)
        return run_supervisor(config, plugins, announce=announcer(self.write))
