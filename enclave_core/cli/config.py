"""`enclave config validate` and `enclave config show`."""

from __future__ import annotations

import argparse
from typing import Any

from enclave_core.cli.common import EnclaveCommand, EnclaveShowOne, config_error, show_mapping
from enclave_core.config import effective_config
from enclave_core.deploy import sizing
from enclave_core.plugin.backends import validate_backends


class ValidateConfig(EnclaveCommand):
    """Check enclave.yaml: its shape, its values and every backend's options.

    Prints `OK: <file>`, or the problems one per line and exits 1. Sizing problems
    (:mod:`enclave_core.deploy.sizing`) are errors with `mode: production` or an `account` set, and
    `warning:` lines on stderr otherwise.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Load the config, validate the backends it names, report."""
        path = self.config_path(parsed_args)
        config = self.load(parsed_args)
        problems = validate_backends(config, self.plugins(config))
        if sizing.enforced(config):
            problems += sizing.check(config)
        else:
            for problem in sizing.check(config):
                self.app.stderr.write(f"warning: {problem}\n")
        if problems:
            raise config_error(path, problems)
        self.write(f"OK: {path}")
        return 0


class ShowConfig(EnclaveShowOne):
    """Show the effective configuration: every default filled in.

    Values written as `{"$env": "VAR"}` are shown as that reference, never as their value.
    `-f json` prints one JSON object of the whole configuration.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """Return one column per top-level key of the effective config."""
        config = self.load(parsed_args)
        return show_mapping(effective_config(config))
