"""`enclave dev`: the supervisor, the runtime and the app on this machine, in the foreground."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from enclave_core.cli.common import EnclaveCommand, LogFormatOption, config_error
from enclave_core.cli.devwatch import DevWatcher, prepare_image
from enclave_core.image.current import apply_image_override
from enclave_core.plugin.backends import validate_backends

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


class Dev(LogFormatOption, EnclaveCommand):
    """Run supervisor, runtime and app on this machine, in the foreground.

    Works without an enclave.yaml (the defaults apply) and keeps its state in `.enclave/`. The
    enclave runs an immutable snapshot of `app.dir` (`.enclave/images/`), like an EIF: editing
    the files changes nothing until a migration. Started on changed files, it migrates to them
    once the enclave is up (unless --no-migrate); with --watch it migrates on every change.
    Ctrl-C or SIGTERM stops everything within 10 seconds.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--watch`` and ``--no-migrate``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--watch",
            action="store_true",
            help="migrate to the app's files each time they change (the nine real steps)",
        )
        parser.add_argument(
            "--no-migrate",
            action="store_true",
            help="started on changed files, run them without migrating (the key refuses them "
            "until `enclave migrate`)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Load (or default) the config, check its backends, run the supervisor until stopped."""
        from enclave_core.supervisor.service import run_supervisor

        path = self.config_path(parsed_args)
        loaded = self.load(parsed_args, allow_missing=True)
        plugins = self.plugins(loaded)
        # Fail here, with every problem listed, rather than inside a child process.
        problems = validate_backends(loaded, plugins)
        if problems:
            raise config_error(path, problems)
        os.makedirs(loaded.state_dir, exist_ok=True)
        source = loaded.app_dir.resolve()  # the folder as edited; the enclave runs a snapshot
        plan = prepare_image(
            loaded, source, self.write, migrate=not parsed_args.no_migrate, plugins=plugins
        )
        config = apply_image_override(loaded)
        watcher = DevWatcher(
            config, source, self.write, migrate_now=plan.changed, watch=parsed_args.watch
        )
        announce = announcer(self.write)

        def ready(addresses: dict[str, str]) -> None:
            announce(addresses)
            if plan.changed or parsed_args.watch:
                watcher.start()

        try:
            return run_supervisor(config, plugins, announce=ready)
        finally:
            watcher.stopping.set()
