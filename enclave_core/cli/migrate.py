"""`enclave migrate` (move every secret to a key only the new image can use) and
`enclave key schedule-deletion` (retire the key a migration moved away from).

Both go through the supervisor (``POST /v1/migrate``, ``POST /v1/schedule-key-deletion``), which
runs the nine steps of a migration; `enclave migrate` then follows ``GET /v1/migrate`` and
prints ``[k/9] <msg>`` as each step completes. Re-running it after an interruption resumes the
same migration; re-running a finished one says "migration already complete".
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclave_core.cli.common import EnclaveCommand, EnclaveShowOne, show_mapping
from enclave_core.config import Config
from enclave_core.errors import EnclaveError, ValidationError
from enclave_core.pcrs import normalise_pcr

POLL_S = 0.25
#: How long `enclave migrate` follows a migration before giving up (the migration continues).
FOLLOW_TIMEOUT_S = 900.0


def _client(config: Config) -> Any:
    # Imported lazily: the client belongs to the supervisor package.
    from enclave_core.cli.supervisor_client import SupervisorClient

    return SupervisorClient(config)


class Migrate(EnclaveCommand):
    """Migrate the enclave's secrets and storage key to a new image (a new PCR0).

    Production: --eif NEW.eif (measured with nitro-cli describe-eif, or give --pcr0). Development:
    --app-dir DIR, the new app files, measured as the simulated NSM measures them. Prints each of
    the nine steps as it completes; run it again to resume after an interruption.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--eif`` | ``--app-dir``, ``--pcr0``, ``-f text|json``."""
        parser = super().get_parser(prog_name)
        image = parser.add_mutually_exclusive_group(required=True)
        image.add_argument("--eif", metavar="<NEW.eif>", help="the new enclave image (production)")
        image.add_argument(
            "--app-dir", metavar="<dir>", help="the new app files (development: the new image)"
        )
        parser.add_argument(
            "--pcr0",
            metavar="<hex>",
            help="the PCR0 the new image must have (refused if its measurement differs, or if "
            "it is the all-zero PCR0 of a debug-mode enclave)",
        )
        parser.add_argument(
            "-f",
            "--format",
            choices=("text", "json"),
            default="text",
            help="text: numbered progress lines; json: the final progress object",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """POST /v1/migrate, then follow GET /v1/migrate until done or failed."""
        config = self.load(parsed_args, allow_missing=True)
        # refused before the supervisor is asked: a malformed target, or the all-zero PCR0 of
        # a debug-mode enclave (a key locked to it would open for any image)
        pcr0 = None if parsed_args.pcr0 is None else normalise_pcr(parsed_args.pcr0, "--pcr0")
        client = _client(config)
        as_json = parsed_args.format == "json"
        first = client.migrate(
            app_dir=_absolute(parsed_args.app_dir),
            eif=_absolute(parsed_args.eif),
            pcr0=pcr0,
        )
        if first.get("status") == "done":
            self.write(json.dumps(first, indent=2) if as_json else str(first.get("msg")))
            return 0
        if not as_json:
            self.write(str(first.get("msg")))
        final = follow_migration(client, str(first.get("id")), None if as_json else self.write)
        if as_json:
            self.write(json.dumps(final, indent=2))
        if final.get("status") != "done":
            raise EnclaveError(f"migration failed: {final.get('msg')}")
        return 0


def follow_migration(
    client: Any, ident: str, write: Callable[[str], None] | None
) -> dict[str, Any]:
    """Follow GET /v1/migrate until migration ``ident`` stops; print each step once as
    ``[k/9] msg`` with ``write`` (None: silently). Returns the final progress."""
    printed: set[int] = set()
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while True:
        progress: dict[str, Any] = client.migration_progress()
        if progress.get("id") not in (None, ident):
            raise EnclaveError(f"another migration ({progress.get('id')}) replaced {ident}")
        total = progress.get("total", 9)
        for entry in progress.get("steps") or []:
            step = entry.get("step")
            if isinstance(step, int) and step not in printed:
                printed.add(step)
                if write is not None:
                    write(f"[{step}/{total}] {entry.get('msg')}")
        if progress.get("status") in ("done", "failed", "rolled_back", "interrupted"):
            return progress
        if time.monotonic() >= deadline:
            raise EnclaveError(
                f"gave up following migration {ident} after {FOLLOW_TIMEOUT_S:g} s; it "
                "continues: see `enclave migrate` again or the supervisor's log"
            )
        time.sleep(POLL_S)


def _absolute(path: str | None) -> str | None:
    """Paths go to the supervisor absolute (it does not share our working directory)."""
    return str(Path(path).resolve()) if path else None


class ScheduleKeyDeletion(EnclaveShowOne):
    """Schedule deletion of the KMS key the last migration moved away from.

    The key is the one named in MigrationOldKMSKeyID; the key in use is refused. After a
    migration the new enclave normally schedules it (7 days) itself.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--days 7..30`` (default 7)."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--days",
            type=int,
            default=7,
            metavar="<7..30>",
            help="the waiting period before KMS deletes the key (default: 7)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """POST /v1/schedule-key-deletion; show the key, its state and deletion date."""
        if not 7 <= parsed_args.days <= 30:
            raise ValidationError(f"--days must be from 7 to 30, not {parsed_args.days}")
        config = self.load(parsed_args, allow_missing=True)
        return show_mapping(_client(config).schedule_key_deletion(parsed_args.days))
