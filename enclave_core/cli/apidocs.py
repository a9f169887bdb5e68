"""The committed OpenAPI documents of the four HTTP APIs, under ``docs/api/``.

``python -m enclave_core.cli.apidocs docs/api`` regenerates them; with ``--check`` it writes
nothing and exits 1 when a committed copy is stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclave_core.http.openapi import dumps
from enclave_core.runtime.apidoc import app_document, control_document, public_document
from enclave_core.supervisor.apidoc import supervisor_document

REGENERATE = "python -m enclave_core.cli.apidocs docs/api"


def documents() -> dict[str, Callable[[], dict[str, Any]]]:
    """The committed file name of each document and the function that builds it."""
    return {
        "runtime-public.json": public_document,
        "runtime-control.json": control_document,
        "runtime-app.json": app_document,
        "supervisor.json": supervisor_document,
    }


def stale_documents(folder: Path) -> list[str]:
    """The names of the documents whose copy in ``folder`` is missing or differs."""
    stale = []
    for name, build in documents().items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != dumps(build()):
            stale.append(name)
    return stale


def write_documents(folder: Path) -> list[Path]:
    """Write every document into ``folder``; return the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in documents().items():
        path = folder / name
        path.write_text(dumps(build()), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m enclave_core.cli.apidocs [--check] FOLDER``."""
    parser = argparse.ArgumentParser(
        prog="python -m enclave_core.cli.apidocs",
        description="Write (or check) the OpenAPI documents of the runtime and the supervisor.",
    )
    parser.add_argument("folder", type=Path, help="where the documents go, e.g. docs/api")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a document is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_documents(args.folder)
        for name in stale:
            print(f"{args.folder / name} is stale; regenerate with: {REGENERATE}")
        return 1 if stale else 0
    for path in write_documents(args.folder):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
