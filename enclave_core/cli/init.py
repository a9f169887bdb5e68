"""`enclave init [DIR]`: write a commented enclave.yaml and the example app."""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path

from enclave_core.cli.common import EnclaveCommand
from enclave_core.config import CONFIG_FILENAME, default_name
from enclave_core.errors import EnclaveError

APP_FILENAME = "app.py"
TEMPLATE_NAME_LINE = re.compile(r"^name: hello\b", re.MULTILINE)


def template_text(filename: str) -> str:
    """The text of a file `enclave init` writes (package data in enclave_core/templates)."""
    return (resources.files("enclave_core") / "templates" / filename).read_text(encoding="utf-8")


def config_text(name: str) -> str:
    """The commented enclave.yaml for an app called ``name``."""
    text, count = TEMPLATE_NAME_LINE.subn(f"name: {name}", template_text(CONFIG_FILENAME), count=1)
    if count != 1:  # the template and this code must agree; fail loudly if they drift
        raise EnclaveError("the enclave.yaml template has no 'name: hello' line")
    return text


class Init(EnclaveCommand):
    """Write a commented enclave.yaml and the example app into DIR (default: here).

    The app's name is derived from the folder's name. Existing files are left alone unless
    `--force` is given. `-c FILE` writes the config to FILE instead (the app goes beside it).
    """

    config_default = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add DIR and ``--force``."""
        parser = super().get_parser(prog_name)
        parser.add_argument("dir", nargs="?", metavar="DIR", help="where to write (default: .)")
        parser.add_argument("--force", action="store_true", help="overwrite existing files")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Write both files, refusing to overwrite without ``--force``."""
        if parsed_args.dir is not None and parsed_args.config is not None:
            raise EnclaveError("give DIR or -c FILE to `enclave init`, not both")
        if parsed_args.config is not None:
            config_file = Path(parsed_args.config).resolve()
            folder = config_file.parent
        else:
            folder = Path(parsed_args.dir or ".").resolve()
            config_file = folder / CONFIG_FILENAME
        if folder.exists() and not folder.is_dir():
            raise EnclaveError(f"cannot initialise {folder}: it is not a directory")
        files = {
            config_file: config_text(default_name(folder)),
            folder / APP_FILENAME: template_text(APP_FILENAME),
        }
        if not parsed_args.force:
            for path in files:
                if path.exists():
                    raise EnclaveError(f"{path} already exists (use --force to overwrite it)")
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
            self.write(f"wrote {path}")
        self.write(f"Next: cd {folder} && enclave dev")
        return 0
