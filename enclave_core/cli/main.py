"""The `enclave` command line: a cliff App with its commands in the ``enclave.cli`` entry points.

Errors end a command with one ``ERROR:`` line on stderr and exit status 1 (a config error lists
its problems one per line); tracebacks appear only with ``--debug``. Logs are JSON lines on stderr,
or readable lines when stderr is a terminal; a command with ``--log-format`` (`enclave dev`) may
force either. ``--log-file`` appends the JSON lines to a file as well, whatever stderr shows.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any, TextIO

from cliff.app import App
from cliff.command import Command
from cliff.commandmanager import CommandManager
from loguru import logger

import enclave_core
from enclave_core.cli.common import error_lines
from enclave_core.log import configure_logging, format_record, human_for

COMMAND_NAMESPACE = "enclave.cli"


class LazyCommandManager(CommandManager):
    """cliff's CommandManager without importing every command module up front.

    cliff reads the commands through stevedore, which imports each entry point's module while
    listing them; commands such as `enclave deploy` pull in boto3 that way, and every
    `enclave` process (the runtime and the supervisor included) paid ~0.4 s at start for it.
    The names are read from the entry-point metadata instead, and cliff's ``find_command``
    imports only the command that runs (``EntryPoint.load``).
    """

    def load_commands(self, namespace: str) -> None:
        """Register the commands of ``namespace`` by name, without loading them."""
        from importlib.metadata import entry_points

        self.group_list.append(namespace)
        for ep in entry_points(group=namespace):
            if self._is_module_ignored(ep.module, self.ignored_modules):
                continue
            name = ep.name.replace("_", " ") if self.convert_underscores else ep.name
            if name in self.commands and self.commands[name].value != ep.value:
                logger.warning(
                    f"two packages define the command {name!r}: "
                    f"{self.commands[name].value} and {ep.value}; the second is used"
                )
            self.commands[name] = ep


_SIGPIPE_EXIT = 141  # what cliff returns when stdout's reader has gone
DESCRIPTION = (
    "Simple Enclave: run an HTTP app inside an AWS Nitro Enclave, or on this machine with "
    "`enclave dev`."
)

# cliff logs a failed command through this logger. We print the error ourselves in clean_up, so
# it goes nowhere: otherwise the message would appear twice (once as a JSON log line).
_CLIFF_ERRORS = logging.getLogger("enclave.cli.errors")
_CLIFF_ERRORS.addHandler(logging.NullHandler())
_CLIFF_ERRORS.propagate = False


class _LiveStderr:
    """Writes to whatever ``sys.stderr`` is at the time, so a replaced stream is never kept."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class EnclaveApp(App):
    """The `enclave` application."""

    NAME = "enclave"
    LOG = _CLIFF_ERRORS

    def __init__(self) -> None:
        self._log_file: TextIO | None = None
        self._log_level = "WARNING"
        self._log_sink = 0
        super().__init__(
            description=DESCRIPTION,
            version=enclave_core.__version__,
            command_manager=LazyCommandManager(COMMAND_NAMESPACE),
            deferred_help=True,
        )

    def build_option_parser(
        self,
        description: str | None,
        version: str | None,
        argparse_kwargs: dict[str, Any] | None = None,
    ) -> argparse.ArgumentParser:
        """cliff's global options, named `enclave` however the program was started."""
        parser = super().build_option_parser(
            description, version, {"prog": self.NAME, **(argparse_kwargs or {})}
        )
        for action in parser._actions:
            if isinstance(action, argparse._VersionAction):
                action.version = f"{self.NAME} {version}"
        return parser

    def configure_logging(self) -> None:
        """Leave logging alone here: it is set up per command in prepare_to_run_command."""

    def prepare_to_run_command(self, cmd: Command) -> None:
        """Install the log sinks: JSON on stderr, readable lines when stderr is a terminal."""
        if self.options.debug:
            self._log_level = "DEBUG"
        else:
            self._log_level = {0: "WARNING", 1: "INFO"}.get(self.options.verbose_level, "DEBUG")
        self.use_log_format("auto")

    def use_log_format(self, log_format: str) -> None:
        """(Re)install the log sinks with stderr in ``log_format`` (``auto``, ``text``, ``json``).

        Commands with a ``--log-format`` option call it once their arguments are parsed, which
        happens after :meth:`prepare_to_run_command`.
        """
        configure_logging(
            self._log_level,
            human=human_for(log_format),
            stream=_LiveStderr(),  # type: ignore[arg-type]
        )
        if self.options.log_file:
            # cliff's --log-file: the same JSON lines, appended to a file as well. Installing
            # the stderr sink removed every sink, this one included: it is added again.
            if self._log_file is None:
                self._log_file = open(self.options.log_file, "a", encoding="utf-8")
            handle = self._log_file

            def to_file(message: Any) -> None:
                handle.write(format_record(message.record) + "\n")
                handle.flush()

            self._log_sink = logger.add(to_file, level=self._log_level)

    def clean_up(self, cmd: Command, result: int, err: BaseException | None) -> None:
        """Print a failed command's error: one ``ERROR:`` line, the traceback only with --debug."""
        if self._log_file is not None:
            logger.remove(self._log_sink)
            self._log_file.close()
            self._log_file = None
        # Ctrl-C and a closed pipe (`enclave logs | head`) are normal ways to end, not errors.
        if err is None or isinstance(err, (KeyboardInterrupt, BrokenPipeError)):
            return
        if self.options.debug:
            self.stderr.write("".join(traceback.format_exception(err)))
        for line in error_lines(err):
            self.stderr.write(line + "\n")
        self.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the `enclave` command line and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["help"]
    app = EnclaveApp()
    try:
        code = int(app.run(args) or 0)
    except SystemExit as exc:  # argparse usage errors and --help/--version
        return _exit_code(exc)
    if code == _SIGPIPE_EXIT:
        # The reader went away: point stdout at /dev/null so the final flush cannot fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout is not a real file (embedded, tests)
            pass
    return code


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
