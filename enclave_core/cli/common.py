"""What every `enclave` command shares: the ``-c/--config`` option, config loading, output helpers.

Commands derive from :class:`EnclaveCommand`, :class:`EnclaveLister` or
:class:`EnclaveShowOne`, so ``-c FILE`` is defined once. Listing and showing commands get cliff's
``-f table|json|yaml|value``; cliff's own ``-c COLUMN`` shortcut gives way to ``-c FILE``
(``--column`` still works).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from cliff.columns import FormattableColumn
from cliff.command import Command
from cliff.lister import Lister
from cliff.show import ShowOne

from enclave_core.config import CONFIG_FILENAME, Config, load_config
from enclave_core.errors import ConfigError, EnclaveError
from enclave_core.log import LOG_FORMATS
from enclave_core.plugin.manager import PluginManager


class ConfigOption(Command):
    """Adds ``-c/--config FILE`` to a command and loads enclave.yaml from it."""

    # "resolve" lets our -c replace the -c of cliff's --column instead of being dropped.
    conflict_handler = "resolve"
    #: The default of ``-c``; None means "not given" (the command decides).
    config_default: str | None = CONFIG_FILENAME

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Return the command's parser with ``-c/--config`` added."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            default=self.config_default,
            help=f"the enclave.yaml to use (default: ./{CONFIG_FILENAME})",
        )
        return parser

    def get_epilog(self) -> str:
        """The epilog, without cliff's "provided by the X plugin" line for our own commands.

        cliff finds that line's package with ``importlib.metadata.packages_distributions()``,
        which reads every installed distribution's file list: ~0.2 s on each start of every
        command, the runtime's and the supervisor's included. Third-party commands keep it.
        """
        if type(self).__module__.partition(".")[0] == "enclave_core":
            return self._epilog or ""
        return super().get_epilog()

    def config_path(self, parsed_args: argparse.Namespace) -> Path:
        """The config file named by ``-c``, as an absolute path (a symlink is not followed:
        its folder is the project's)."""
        return Path(os.path.abspath(parsed_args.config or CONFIG_FILENAME))

    def load(self, parsed_args: argparse.Namespace, *, allow_missing: bool = False) -> Config:
        """Load and validate the config named by ``-c``."""
        return load_config(self.config_path(parsed_args), allow_missing=allow_missing)

    def plugins(self, config: Config) -> PluginManager:
        """The plugin manager for ``config`` (honours ``plugins.disable``)."""
        from enclave_core.plugin.backends import plugins_for

        return plugins_for(config)

    def write(self, text: str) -> None:
        """Print ``text`` plus a newline on the app's stdout and flush it."""
        self.app.stdout.write(text + "\n")
        self.app.stdout.flush()


class EnclaveCommand(ConfigOption):
    """Base of commands with side effects (no tabular output)."""


class LogFormatOption(Command):
    """Adds ``--log-format auto|text|json`` (how log lines look on stderr) and applies it.

    Mix it in before the command's base class. The app installs its log sinks before the
    arguments are parsed, so the choice is applied when the command runs.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Return the command's parser with ``--log-format`` added."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            default="auto",
            help="log lines on stderr: readable text on a terminal and JSON lines otherwise "
            "(auto, the default), or always text, or always json",
        )
        return parser

    def run(self, parsed_args: argparse.Namespace) -> int:
        """Install the chosen log format, then run the command."""
        # Only the `enclave` app can re-install its sinks (another cliff app keeps its own).
        use_log_format = getattr(self.app, "use_log_format", None)
        if callable(use_log_format):
            use_log_format(parsed_args.log_format)
        result: int = super().run(parsed_args)
        return result


class EnclaveLister(ConfigOption, Lister):
    """Base of listing commands (``-f table|json|yaml|csv|value``)."""


class EnclaveShowOne(ConfigOption, ShowOne):
    """Base of showing commands (``-f table|json|yaml|value``)."""


class Structured(FormattableColumn[Any]):
    """A nested value: block YAML in tables, the structure itself in JSON and YAML output."""

    def human_readable(self) -> str:
        """Render the value as YAML lines (``{}``/``[]`` when empty), one item per line."""
        if not self._value:
            return json.dumps(self._value)
        text: str = yaml.safe_dump(
            self._value, default_flow_style=False, sort_keys=False, width=1_000_000
        )
        return text.rstrip("\n")


def show_mapping(data: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """Turn a dict into ShowOne's ``(columns, values)``, keeping key order."""
    columns = tuple(data)
    values = tuple(
        Structured(value) if isinstance(value, (dict, list)) else value for value in data.values()
    )
    return columns, values


def error_lines(err: BaseException) -> list[str]:
    """The lines the CLI prints for an error that ended a command.

    An :class:`EnclaveError` is one ``ERROR:`` line (its message's first line), followed by its
    ``details`` attribute's lines, indented, when it has one (a failed tool's last output). A
    :class:`ConfigError` with several problems prints its header line and then one problem per
    line; with a single problem it stays on one line. Anything else is unexpected: its type is
    named and ``--debug`` shows the traceback.
    """
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(err, ConfigError) and len(lines) > 1:
        if len(lines) == 2:
            return [f"ERROR: {lines[0]} {lines[1]}"]
        return [f"ERROR: {lines[0]}"] + [f"  {line}" for line in lines[1:]]
    if isinstance(err, EnclaveError):
        # An error may carry ``details`` (a failed tool's last output lines), shown indented.
        details = [f"  {line}" for line in getattr(err, "details", None) or ()]
        return [f"ERROR: {lines[0] if lines else type(err).__name__}", *details]
    first = lines[0] if lines else ""
    detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return [f"ERROR: {detail} (run with --debug for the traceback)"]


def config_error(path: Path, problems: list[str]) -> ConfigError:
    """A ConfigError for ``path`` listing ``problems``, one per line."""
    return ConfigError(f"{path} is invalid:\n" + "\n".join(problems), problems)
