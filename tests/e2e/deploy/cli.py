"""TEST-ONLY: the ``enclave`` command as a user runs it, from the project folder, in its own shell.

:class:`EnclaveCli` runs ``python -m enclave_core.cli.main ARGS -c enclave.yaml`` as a
subprocess with the user's environment (:func:`user_env`: fake credentials, moto as the AWS
endpoint, the pinned cdk CLI first on PATH). While it runs, the fake hosts' first boots are
watched: a failed one ends the command at once (deploy's step 5 would otherwise wait for the unit
for 20 minutes) and the failure says why, with the hosts' logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.deploy.hosts import failed_boots, logs
from tests.e2e.deploy.project import REGION, Project

POLL_S = 0.5
#: The user's environment variables passed through (network settings for pip and npm).
PASSED = ("HOME", "LANG", "TMPDIR", "http_proxy", "https_proxy", "no_proxy", "SSL_CERT_FILE")
PASSED_PREFIXES = ("PIP_", "NPM_CONFIG_", "npm_config_")


def user_env(*, moto_url: str, cdk_bin: Path) -> dict[str, str]:
    """The environment ``enclave deploy`` runs in: moto is AWS, ``cdk`` is the pinned CLI."""
    env = {k: v for k, v in os.environ.items() if k in PASSED or k.startswith(PASSED_PREFIXES)}
    env.update(
        {
            "PATH": os.pathsep.join([str(cdk_bin), str(Path(sys.executable).parent)])
            + f"{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            # boto3 and the cdk CLI (AWS SDK for JavaScript v3) both honour AWS_ENDPOINT_URL.
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            "CDK_DISABLE_VERSION_CHECK": "1",
            "CDK_DISABLE_CLI_TELEMETRY": "true",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


@dataclass(frozen=True)
class Result:
    """What one ``enclave`` command did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        """For assertion messages."""
        return (
            f"enclave {' '.join(self.args)} -> exit {self.returncode} in {self.seconds:.0f} s\n"
            f"--- stdout\n{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}"
        )


@dataclass
class EnclaveCli:
    """Runs ``enclave`` commands on ``project`` with ``env``; logs under ``work``."""

    project: Project
    env: dict[str, str]
    hosts: Path
    work: Path
    history: list[Result] = field(default_factory=list)

    def __call__(self, *args: str, timeout_s: float = 900.0) -> Result:
        """Run ``enclave ARGS -c enclave.yaml``; return its result (any exit status)."""
        number = len(self.history) + 1
        out_path = self.work / f"cli-{number:02d}.out"
        err_path = self.work / f"cli-{number:02d}.err"
        argv = [
            sys.executable,
            "-m",
            "enclave_core.cli.main",
            *args,
            "-c",
            str(self.project.config),
        ]
        started = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            process = subprocess.Popen(  # noqa: S603 - argument list
                argv,
                cwd=self.project.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            problem = self._wait(process, started + timeout_s)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        result = Result(
            tuple(args),
            process.returncode,
            out_path.read_text(encoding="utf-8", errors="replace"),
            err_path.read_text(encoding="utf-8", errors="replace"),
            time.monotonic() - started,
        )
        self.history.append(result)
        if problem:
            raise AssertionError(f"{problem}\n{result.describe()}\n{logs(self.hosts)}")
        return result

    def _wait(self, process: subprocess.Popen[bytes], deadline: float) -> str | None:
        while process.poll() is None:
            failed = failed_boots(self.hosts)
            if failed:
                return "a fake host's first boot failed: " + "; ".join(failed)
            if time.monotonic() > deadline:
                return "the command did not finish in time"
            time.sleep(POLL_S)
        return None
