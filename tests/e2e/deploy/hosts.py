"""TEST-ONLY: fake EC2 hosts: one folder per instance standing in for its root file system.

The patched moto server (:mod:`tests.e2e.deploy.moto_launcher`) boots a host when EC2 launches an
instance (:mod:`tests.e2e.deploy.first_boot`), runs Run Command scripts on it
(:mod:`tests.e2e.deploy.run_command`) and powers it off when the instance terminates; the test
reads the same folders and stops whatever is left by pid. Layout of the hosts folder:

- ``hosts.json``: the test's settings (:class:`Settings`), written before anything boots;
- ``<instance id>/``: the host's root: ``opt/simple-enclave/app/enclave.yaml`` (from the user
  data), ``etc/systemd/system/enclave-supervisor.service`` and friends (written by the real
  ``enclave host install --prefix-dir``), ``enclave-image/`` (what the EIF holds: the build
  context's app and enclave.yaml), ``run/<unit>.pid`` (process records), ``var/log/`` (the
  first boot's log, each unit's output, each Run Command's script), ``fake-nitro-cli.json`` (the
  fake nitro-cli's state: its enclaves), ``instance.json`` (the instance role's credentials).

The host's paths are real paths under its folder: nothing is chrooted, so the absolute paths the
user data names (``/opt/simple-enclave/...``) are rebased with :meth:`Host.path`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from tests.doubles.host_tools import FAKES, kill_fake_enclaves
from tests.e2e.deploy.processes import stop_recorded

#: The fake ``systemctl`` and ``aws`` of every host.
HOST_TOOLS = Path(__file__).resolve().parent / "host_tools"
SETTINGS_FILE = "hosts.json"
#: What systemd gives a unit that does not stop on SIGTERM before SIGKILL (TimeoutStopSec=).
STOP_GRACE_S = 10.0
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Settings:
    """What the test tells the fake hosts, in ``hosts.json``.

    :param env: added to every host process's environment (endpoints, region, log port).
    :param python: the interpreter standing in for the host's virtualenv (it has simple-enclave).
    :param image_context: the project's ``artifacts/context`` (what ``enclave build`` put in the
        image): the fake enclave runs its app and enclave.yaml.
    :param pki: the folder of the dev CA every fake enclave chains to (the stand-in for AWS's
        Nitro PKI; the KMS shim trusts its root).
    :param artifact_wait_s: how long a first boot waits for the EIF and wheels, as the user
        data does (shorter: the test fails sooner).
    """

    env: dict[str, str]
    python: str
    image_context: str
    pki: str
    artifact_wait_s: float = 600.0

    def write(self, hosts: Path) -> None:
        """Write ``hosts.json`` into ``hosts``."""
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def read(cls, hosts: Path) -> Settings | None:
        """The settings in ``hosts``, or None before the test wrote them."""
        try:
            return cls(**json.loads((hosts / SETTINGS_FILE).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class Host:
    """One fake EC2 host: its instance id and its root folder."""

    instance_id: str
    root: Path

    @classmethod
    def of(cls, hosts: Path, instance_id: str) -> Host:
        """The host of ``instance_id`` in the hosts folder ``hosts``."""
        return cls(instance_id, hosts / instance_id)

    def path(self, absolute: str | PurePosixPath) -> Path:
        """An absolute host path (``/opt/...``) rebased under the host's root."""
        relative = PurePosixPath(absolute).relative_to("/")
        return self.root.joinpath(*relative.parts)

    @property
    def record(self) -> Path:
        """The supervisor's process record (written by the fake systemctl)."""
        return self.root / "run" / "enclave-supervisor.pid"

    @property
    def image(self) -> Path:
        """The enclave image's files (``/app`` in the EIF)."""
        return self.root / "enclave-image"

    @property
    def init_log(self) -> Path:
        """The first boot's log (``/var/log/simple-enclave-init.log`` on a real host)."""
        return self.root / "var" / "log" / "simple-enclave-init.log"

    @property
    def failed_marker(self) -> Path:
        """Written when the first boot failed (the test stops waiting then)."""
        return self.root / "first-boot.failed"

    @property
    def powered_off(self) -> Path:
        """Written when the instance terminated: a first boot still running gives up."""
        return self.root / "powered-off"

    def credentials(self) -> dict[str, str]:
        """The instance role's credentials (``instance.json``), as environment variables."""
        try:
            doc = json.loads((self.root / "instance.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        creds = doc["credentials"]
        return {
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"],
        }

    def env(self, settings: Settings) -> dict[str, str]:
        """The environment of a process on this host (Run Command scripts, units, first boot).

        A clean environment, not the moto server's: the host's tools first on PATH (fake
        ``systemctl`` and ``aws``, the fake ``nitro-cli``, the host's Python), the test's
        settings, the fake nitro-cli's state and the enclave image for this host, and the
        instance role's credentials (what IMDS gives a real host).
        """
        python_bin = str(Path(settings.python).parent)
        env = {
            "PATH": os.pathsep.join([str(HOST_TOOLS), str(FAKES), python_bin, SYSTEM_PATH]),
            "HOME": str(self.root / "root"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            **settings.env,
            "FAKE_HOST_ROOT": str(self.root),
            "FAKE_NITRO_CLI_STATE": str(self.root / "fake-nitro-cli.json"),
            "FAKE_NITRO_CLI_CONFIG": str(self.image / "enclave.yaml"),
            "NITRO_CLI_LOGS_PATH": str(self.root / "var" / "log" / "nitro_enclaves"),
        }
        env.update(self.credentials())
        return env

    def power_off(self) -> None:
        """What terminating the instance does to its processes: all of them end.

        The supervisor gets SIGTERM (it stops the enclave), then its group SIGKILL; the fake
        enclaves (their own sessions, as nitro-cli's) are killed by the fake's state file.
        """
        self.powered_off.parent.mkdir(parents=True, exist_ok=True)
        self.powered_off.touch()
        stop_recorded(self.record, grace_s=STOP_GRACE_S)
        kill_fake_enclaves(self.root)


def all_hosts(hosts: Path) -> list[Host]:
    """Every host that booted in ``hosts``."""
    if not hosts.is_dir():
        return []
    return [Host(p.name, p) for p in sorted(hosts.iterdir()) if p.is_dir() and p.name[:2] == "i-"]


def power_off_all(hosts: Path) -> None:
    """Stop every process of every host (test teardown)."""
    for host in all_hosts(hosts):
        host.power_off()


def failed_boots(hosts: Path) -> list[str]:
    """The first-boot failures reported so far: ``<instance id>: <reason>``."""
    return [
        f"{host.instance_id}: {host.failed_marker.read_text(encoding='utf-8').strip()}"
        for host in all_hosts(hosts)
        if host.failed_marker.exists()
    ]


def logs(hosts: Path, *, chars: int = 3000) -> str:
    """The tail of every host's logs, for assertion messages."""
    parts = []
    for host in all_hosts(hosts):
        logs_dir = host.root / "var" / "log"
        files = sorted(logs_dir.glob("*.log")) + sorted(logs_dir.glob("ssm/*.log"))
        files += sorted(host.root.glob("fake-nitro-cli-consoles/*"))
        files += sorted(host.image.glob(".enclave/logs/*.log"))
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")[-chars:]
            parts.append(f"--- {host.instance_id}: {path.relative_to(host.root)}\n{text}")
    return "\n".join(parts)
