"""TEST-ONLY: the fake ``systemctl`` and ``aws`` of a fake EC2 host (``host_tools/`` runs these).

Both work under the host's folder, ``$FAKE_HOST_ROOT`` (see :mod:`tests.e2e.deploy.hosts`).

``systemctl`` reads the unit files ``enclave host install --prefix-dir`` wrote under
``$FAKE_HOST_ROOT/etc/systemd/system/`` and does what deploy's scripts and the first boot ask:

- ``show -p PROP --value UNIT``: the property from the unit file (``WorkingDirectory``); an
  empty line for a unit that is not installed, as systemd prints;
- ``is-active [--quiet] UNIT``: ``active`` (0) while the unit's process lives, else
  ``inactive`` (3);
- ``start|restart UNIT``: runs ``ExecStart`` in ``WorkingDirectory`` with ``EnvironmentFile``'s
  variables added to the host's environment, its output into ``var/log/UNIT.log`` (the
  journal), in its own session, its pid recorded in ``run/UNIT.pid`` (the test stops it by
  pid); ``Unit UNIT.service not found.`` (5) when not installed;
- ``stop UNIT``: SIGTERM, then SIGKILL to its group after ``TimeoutStopSec``;
- ``enable [--now] UNIT...``, ``daemon-reload``. ``nitro-enclaves-allocator`` is a unit of the
  (absent) Nitro Enclaves package: enabling it does nothing.

``aws s3 cp [--only-show-errors] [--region R] s3://BUCKET/KEY DEST`` downloads one object with
boto3 (the endpoint and the instance role's credentials come from the host's environment), with
the CLI's ``fatal error: ...`` and exit status 1 on failure. Anything else is refused with exit
status 252 (the CLI's usage error), so a deploy script that starts using more of the CLI fails
loudly here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

from tests.e2e.deploy.processes import alive, read_record, stop, write_record

SYSTEM_UNITS = frozenset({"nitro-enclaves-allocator"})
DEFAULT_STOP_S = 90.0
#: A unit whose process exits within this long after start counts as failed to start.
START_CHECK_S = 0.5


def _root() -> Path:
    root = os.environ.get("FAKE_HOST_ROOT")
    if not root:
        sys.stderr.write("fake host tool: FAKE_HOST_ROOT is not set\n")
        raise SystemExit(1)
    return Path(root)


def _rebase(root: Path, absolute: str) -> Path:
    return root.joinpath(*PurePosixPath(absolute).relative_to("/").parts)


class Unit:
    """One installed unit file, read the simple way (``Key=Value`` lines)."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name.removesuffix(".service")
        self.path = root / "etc" / "systemd" / "system" / f"{self.name}.service"
        self.record = root / "run" / f"{self.name}.pid"
        self.log = root / "var" / "log" / f"{self.name}.log"

    @property
    def installed(self) -> bool:
        return self.path.is_file()

    def settings(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")) and "=" in line:
                key, _, value = line.partition("=")
                found[key.strip()] = value.strip()
        return found

    def environment(self) -> dict[str, str]:
        """``EnvironmentFile=`` (a leading ``-``: optional), rebased under the host root."""
        name = self.settings().get("EnvironmentFile", "")
        optional = name.startswith("-")
        path = _rebase(self.root, name.lstrip("-")) if name else None
        if path is None or (optional and not path.is_file()):
            return {}
        env = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
        return env

    def active(self) -> bool:
        return alive(read_record(self.record))

    def start(self) -> int:
        if self.name in SYSTEM_UNITS:
            return 0
        if not self.installed:
            sys.stderr.write(f"Failed to start {self.name}.service: Unit not found.\n")
            return 5
        if self.active():
            return 0
        settings = self.settings()
        # systemd's own quoting ("%%", "$$") is not used by the unit enclave writes for plain
        # paths; shlex reads its quoted words.
        argv = shlex.split(settings["ExecStart"])
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - the unit's argument list
                argv,
                cwd=settings.get("WorkingDirectory") or "/",
                env={**os.environ, **self.environment()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        write_record(self.record, process.pid)
        try:
            code = process.wait(START_CHECK_S)
        except subprocess.TimeoutExpired:
            process.returncode = 0  # it runs on: this tool does not wait for it
            return 0
        sys.stderr.write(
            f"{self.name}.service: main process exited, code=exited, status={code}/FAILURE\n"
        )
        return 1

    def stop(self) -> int:
        if self.name in SYSTEM_UNITS:
            return 0
        seconds = self.settings().get("TimeoutStopSec", "") if self.installed else ""
        stop(read_record(self.record), grace_s=float(seconds or DEFAULT_STOP_S))
        return 0


def systemctl_main(argv: list[str]) -> int:
    """The fake ``systemctl`` (see the module docstring)."""
    root = _root()
    args = [a for a in argv if a not in ("--quiet", "-q", "--no-pager")]
    quiet = len(args) != len(argv)
    if not args:
        sys.stderr.write("fake systemctl: no command\n")
        return 1
    command, rest = args[0], args[1:]
    if command == "daemon-reload":
        return 0
    if command == "show":
        return _show(root, rest)
    if command == "is-active" and len(rest) == 1:
        active = Unit(root, rest[0]).active()
        if not quiet:
            print("active" if active else "inactive")
        return 0 if active else 3
    if command in ("start", "restart", "stop", "enable"):
        now = "--now" in rest
        units = [Unit(root, name) for name in rest if not name.startswith("-")]
        for unit in units:
            if command in ("restart", "stop"):
                unit.stop()
            if command in ("start", "restart") or (command == "enable" and now):
                code = unit.start()
                if code:
                    return code
        return 0
    sys.stderr.write(f"fake systemctl: unsupported command line: {shlex.join(argv)}\n")
    return 1


def _show(root: Path, rest: list[str]) -> int:
    """``show -p PROP --value UNIT`` only."""
    try:
        prop = rest[rest.index("-p") + 1]
    except (ValueError, IndexError):
        sys.stderr.write("fake systemctl: show needs -p PROPERTY\n")
        return 1
    names = [a for a in rest if not a.startswith("-") and a != prop]
    if "--value" not in rest or len(names) != 1:
        sys.stderr.write("fake systemctl: only show -p PROPERTY --value UNIT\n")
        return 1
    unit = Unit(root, names[0])
    print(unit.settings().get(prop, "") if unit.installed else "")
    return 0


def aws_main(argv: list[str]) -> int:
    """The fake ``aws`` (see the module docstring): ``s3 cp s3://BUCKET/KEY DEST`` only."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    args = list(argv)
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    quiet = False
    rest: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "--region" and args:
            region = args.pop(0)
        elif arg == "--only-show-errors":
            quiet = True
        else:
            rest.append(arg)
    if len(rest) != 4 or rest[:2] != ["s3", "cp"] or not rest[2].startswith("s3://"):
        sys.stderr.write(f"fake aws: unsupported command line: {shlex.join(argv)}\n")
        return 252
    bucket, _, key = rest[2][len("s3://") :].partition("/")
    dest = Path(rest[3])
    started = time.monotonic()
    try:
        boto3.session.Session(region_name=region).client("s3").download_file(bucket, key, str(dest))
    except (ClientError, BotoCoreError) as exc:
        sys.stderr.write(f"fatal error: {exc}\n")
        return 1
    if not quiet:
        took = time.monotonic() - started
        print(f"download: {rest[2]} to {dest} ({took:.1f} s)")
    return 0
