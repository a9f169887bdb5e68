"""`enclave init [DIR] [--template NAME]`: write a commented enclave.yaml and an example app.

The templates are package data in enclave_core/templates (``hello`` at its top, the others in a
folder of their name); ``examples/<name>`` in the repository links to the same files.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from enclave_core.cli.common import EnclaveCommand
from enclave_core.config import CONFIG_FILENAME, default_name
from enclave_core.errors import EnclaveError

APP_FILENAME = "app.py"
TEMPLATE_NAME_LINE = re.compile(r"^name: [a-z][a-z0-9-]*\b", re.MULTILINE)


@dataclass(frozen=True)
class Template:
    """An app `enclave init` can write: its enclave.yaml and ``files`` from ``folder``."""

    name: str
    description: str
    folder: str
    files: tuple[str, ...]

    def path(self, filename: str) -> Traversable:
        """Where ``filename`` of this template is, in the package."""
        base = resources.files("enclave_core") / "templates"
        return base / self.folder / filename if self.folder else base / filename

    def text(self, filename: str) -> str:
        """The text of one of its files (or of its enclave.yaml)."""
        return self.path(filename).read_text(encoding="utf-8")


TEMPLATES = {
    t.name: t
    for t in (
        Template(
            "hello",
            "a standard-library HTTP app: greeting, visit counter in encrypted storage",
            "",
            (APP_FILENAME,),
        ),
        Template(
            "falcon",
            "a Falcon app served by gunicorn: notes in encrypted storage with ETags, "
            "JSON access logs",
            "falcon",
            (APP_FILENAME, "gunicorn.conf.py", "requirements.txt"),
        ),
    )
}
DEFAULT_TEMPLATE = "hello"


def template_text(filename: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The text of a file `enclave init` writes (package data in enclave_core/templates)."""
    return TEMPLATES[template].text(filename)


def config_text(name: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The commented enclave.yaml of ``template`` for an app called ``name``."""
    source = template_text(CONFIG_FILENAME, template)
    text, count = TEMPLATE_NAME_LINE.subn(f"name: {name}", source, count=1)
    if count != 1:  # the template and this code must agree; fail loudly if they drift
        raise EnclaveError(f"the {template} enclave.yaml template has no 'name:' line")
    return text


def template_list() -> list[str]:
    """One line per template: its name and what it is (the default marked)."""
    width = max(len(name) for name in TEMPLATES)
    return [
        f"{t.name:<{width}}  {t.description}" + (" (default)" if t.name == DEFAULT_TEMPLATE else "")
        for t in TEMPLATES.values()
    ]


class Init(EnclaveCommand):
    """Write a commented enclave.yaml and an example app into DIR (default: here).

    The app's name is derived from the folder's name. Existing files are left alone unless
    `--force` is given. `-c FILE` writes the config to FILE instead (the app goes beside it).
    `--template NAME` picks the app (`--list` shows them).
    """

    config_default = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add DIR, ``--template``, ``--list`` and ``--force``."""
        parser = super().get_parser(prog_name)
        parser.add_argument("dir", nargs="?", metavar="DIR", help="where to write (default: .)")
        parser.add_argument(
            "--template",
            "-t",
            choices=sorted(TEMPLATES),
            default=DEFAULT_TEMPLATE,
            help=f"the example app to write (default: {DEFAULT_TEMPLATE}; see --list)",
        )
        parser.add_argument(
            "--list", action="store_true", help="list the templates and write nothing"
        )
        parser.add_argument("--force", action="store_true", help="overwrite existing files")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Write the template's files, refusing to overwrite without ``--force``."""
        if parsed_args.list:
            for line in template_list():
                self.write(line)
            return 0
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
        template = TEMPLATES[parsed_args.template]
        files = {config_file: config_text(default_name(folder), template.name)}
        files.update({folder / filename: template.text(filename) for filename in template.files})
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
