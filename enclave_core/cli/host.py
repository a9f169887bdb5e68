"""`enclave host install`: the systemd unit, its environment file and the enclave allocator config.

On an EC2 host with Nitro Enclaves enabled it writes ``enclave-supervisor.service`` (from
``templates/host/``, each hardening option explained there), ``/etc/simple-enclave/supervisor.env``
(0600, kept when it exists), ``/etc/nitro_enclaves/allocator.yaml`` and the state directory
(0700). ``--dry-run`` prints the files; ``--prefix-dir DIR`` writes under DIR instead of ``/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from enclave_core.cli.common import EnclaveCommand
from enclave_core.config import Config
from enclave_core.errors import EnclaveError

UNIT_PATH = Path("/etc/systemd/system/enclave-supervisor.service")
ENV_PATH = Path("/etc/simple-enclave/supervisor.env")
ALLOCATOR_PATH = Path("/etc/nitro_enclaves/allocator.yaml")
#: nitro-cli writes its error logs and keeps its enclave sockets there.
NITRO_CLI_PATHS = ("/var/log/nitro_enclaves", "/run/nitro_enclaves")
#: What ProtectHome= hides.
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
NEXT_COMMANDS = (
    "systemctl daemon-reload",
    "systemctl enable --now nitro-enclaves-allocator enclave-supervisor",
    "journalctl -u enclave-supervisor -f",
)


@dataclass(frozen=True)
class HostFile:
    """One file to write: where, its text and its mode; ``keep`` leaves an existing one alone."""

    path: Path
    text: str
    mode: int
    keep: bool = False


def _template(name: str) -> Template:
    text = (resources.files("enclave_core") / "templates" / "host" / name).read_text("utf-8")
    return Template(text)


def systemd_quote(word: str) -> str:
    """One ExecStart= or path-list word: ``%`` and ``$`` escaped, quoted when it has spaces."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c.isspace() for c in word) or '"' in word else escaped


def enclave_command() -> list[str]:
    """The absolute argv of the ``enclave`` console script of this installation."""
    # The script beside this interpreter first: a shim found on PATH (pyenv) needs a shell setup
    # that systemd does not provide.
    beside = Path(sys.executable).parent / "enclave"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("enclave")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "enclave_core.cli.main"]


def _under_home(path: Path) -> bool:
    return any(path == root or root in path.parents for root in HOME_ROOTS)


def _under_tmp(path: Path) -> bool:
    return any(root in path.parents for root in (Path("/tmp"), Path("/var/tmp")))


def unit_text(config: Config, command: list[str], *, software: Sequence[Path] | None = None) -> str:
    """The text of ``enclave-supervisor.service`` for ``config``.

    :param command: the ``enclave`` argv (see :func:`enclave_command`).
    :param software: where the Python installation lives (default: the command's executable
        and ``sys.prefix``); ProtectHome is relaxed when any of it is in a home.
    """
    assert config.path is not None
    # The path as given, not its target: a symlinked enclave.yaml's folder is the project's (the
    # state_dir below is in it); the target must be readable too.
    config_path = config.path
    eif_dir = config.resolve(config.enclave.eif).parent
    writable = [str(config.state_dir), *(f"-{p}" for p in (eif_dir, *NITRO_CLI_PATHS))]
    if software is None:
        software = [Path(command[0]).resolve(), Path(sys.prefix).resolve()]
    # Everything the service reads: ProtectHome=yes would hide these if they live in a home.
    needed = [config_path, config_path.resolve(), config.state_dir, eif_dir, config.app_dir]
    needed += software
    in_home = [str(p) for p in needed if _under_home(p)]
    if in_home:
        protect_home = "read-only"
        reason = (
            "Homes are read-only, not hidden: the service reads files there "
            f"({', '.join(sorted(set(in_home)))})."
        )
    else:
        protect_home = "yes"
        reason = "/home, /root and /run/user are hidden: nothing the service needs is there."
    exec_start = [*command, "supervisor", "-c", str(config_path)]
    return _template("enclave-supervisor.service").substitute(
        name=config.name,
        # One-value settings take the rest of the line: only specifiers (%) need escaping.
        config=config_path.as_uri().replace("%", "%%"),
        exec_start=" ".join(systemd_quote(w) for w in exec_start),
        workdir=str(config.base_dir).replace("%", "%%"),
        read_write_paths=" ".join(systemd_quote(p) for p in writable),
        protect_home=protect_home,
        protect_home_reason=reason,
    )


def host_files(config: Config, command: list[str] | None = None) -> list[HostFile]:
    """The files ``enclave host install`` writes, with their final (not prefixed) paths."""
    command = command or enclave_command()
    values = {
        "name": config.name,
        "region": config.region,
        "memory_mib": config.enclave.memory_mib,
        "cpu_count": config.enclave.cpu_count,
    }
    return [
        HostFile(UNIT_PATH, unit_text(config, command), 0o644),
        HostFile(ENV_PATH, _template("supervisor.env").substitute(values), 0o600, keep=True),
        HostFile(ALLOCATOR_PATH, _template("allocator.yaml").substitute(values), 0o644),
    ]


def _under(prefix: Path, path: Path) -> Path:
    return prefix / path.relative_to(path.anchor)


def write_file(target: Path, text: str, mode: int) -> None:
    """Write ``text`` atomically with ``mode`` from the start (never briefly world-readable)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


class HostInstall(EnclaveCommand):
    """Install the supervisor as a systemd service, with the enclave allocator's config."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add ``--dry-run`` and ``--prefix-dir``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--dry-run", action="store_true", help="print every file instead of writing it"
        )
        parser.add_argument(
            "--prefix-dir",
            metavar="<dir>",
            default="/",
            help="write under this folder instead of / (to inspect or package the files)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Write (or print) the unit, the env file, the allocator config and the state dir."""
        config = self.load(parsed_args)
        prefix = Path(parsed_args.prefix_dir).resolve()
        if not parsed_args.dry_run and prefix == Path("/") and os.geteuid() != 0:
            raise EnclaveError(
                "enclave host install writes to /etc and the state directory: run it as root "
                "(sudo), or add --dry-run to print the files"
            )
        self._warn(config)
        files = host_files(config)
        if parsed_args.dry_run:
            for item in files:
                self.write(f"# ==> {item.path} (mode {item.mode:04o}) <==")
                self.write(item.text.rstrip("\n") + "\n")
            self.write(f"# ==> {config.state_dir}/ (directory, mode 0700) <==\n")
            self.write("# dry run: nothing was written")
        else:
            self._install(files, prefix, config.state_dir)
        self.write("\nNext:")
        for command in NEXT_COMMANDS:
            self.write(f"  {command}")
        self.write("(the allocator reads its config when it starts: if it already runs,")
        self.write(" systemctl restart nitro-enclaves-allocator enclave-supervisor)")
        return 0

    def _install(self, files: list[HostFile], prefix: Path, state_dir: Path) -> None:
        for item in files:
            target = _under(prefix, item.path)
            if item.keep and target.exists():
                self.write(f"kept    {target} (exists; edit it by hand)")
                continue
            write_file(target, item.text, item.mode)
            self.write(f"wrote   {target} (mode {item.mode:04o})")
        state = _under(prefix, state_dir)
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        self.write(f"created {state}/ (directory, mode 0700)")

    def _warn(self, config: Config) -> None:
        notes = []
        if config.launcher.backend != "nitro-cli":
            notes.append(
                f"launcher.backend is {config.launcher.backend!r}: the service will not run "
                "an enclave (use nitro-cli on a Nitro host)"
            )
        if config.mode != "production":
            notes.append(f"mode is {config.mode!r}: a host normally runs mode: production")
        if config.enclave.cpu_count % 2:
            notes.append(
                "enclave.cpu_count is odd: with hyper-threading (most instance types) nitro-cli "
                "needs whole cores, an even number of vCPUs"
            )
        assert config.path is not None
        if any(_under_tmp(p) for p in (config.path.resolve(), config.state_dir)):
            notes.append(
                f"{config.path} is under /tmp: the service's PrivateTmp=yes hides it; "
                "keep enclave.yaml and its folder elsewhere (/opt, /srv, a home)"
            )
        for note in notes:
            self.app.stderr.write(f"warning: {note}\n")
