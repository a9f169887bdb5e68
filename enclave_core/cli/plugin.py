"""`enclave plugin list`: every installed backend, with the plugin and distribution providing it."""

from __future__ import annotations

import argparse
from typing import Any

from enclave_core.cli.common import EnclaveLister
from enclave_core.config import load_config
from enclave_core.plugin.manager import get_plugin_manager

COLUMNS = ("capability", "name", "plugin", "distribution", "version")


class ListPlugin(EnclaveLister):
    """List the installed backends: capability, name, plugin, distribution, version.

    With an enclave.yaml (`-c`), plugins named in its `plugins.disable` are left out.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """Build the plugin manager and list its registries."""
        path = self.config_path(parsed_args)
        if path.exists():
            plugins = self.plugins(load_config(path))
        else:
            plugins = get_plugin_manager()
        rows = [tuple(row[column] for column in COLUMNS) for row in plugins.backends()]
        return COLUMNS, rows
