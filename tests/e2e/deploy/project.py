"""TEST-ONLY: the user's project the deploy test ships: the example app, production enclave.yaml.

:func:`make_project` writes ``app.py`` (``examples/hello``), an enclave.yaml for ``mode:
production`` (``ssm`` secrets, ``s3`` storage, ``aws`` KMS, ``nitro`` attestation, ``nitro-cli``
launcher reaching the fake enclave over loopback TCP) on free ports, builds this checkout's wheel
(``pip wheel --no-deps``) into ``artifacts/wheels/``, runs ``enclave lock`` (the base image's
digest given: there is no registry here) and ``enclave build`` with the fake ``docker`` and
``nitro-cli``: ``enclave.lock``, ``artifacts/image.eif``, ``artifacts/pcr.json`` and the build
context, as a user has them before ``enclave deploy``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from enclave_core.testing import deep_merge, dev_config_document
from tests.doubles.host_tools import FAKES
from tests.helpers import REPO_ROOT

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
PREFIX = "e2e"
NAME = "hello"
STACK = f"{PREFIX}Nitro{NAME}"
STORAGE_BUCKET = f"{PREFIX}-{NAME}-storage-{ACCOUNT}-{REGION}"
STORAGE_PREFIX = "hello"
EXAMPLE_APP = REPO_ROOT / "examples" / "hello" / "app.py"
BUILD_TIMEOUT_S = 300.0
#: The digest ``enclave lock`` pins the base image to (the fake docker pulls nothing).
BASE_DIGEST = "sha256:" + "5e" * 32
SOURCE_DATE_EPOCH = "1700000000"
#: What the wheel needs of the checkout; copied so that building writes nothing into it.
WHEEL_SOURCES = ("setup.py", "setup.cfg", "README.md", "enclave_core", "plugins", "infra")


@dataclass(frozen=True)
class Project:
    """The app folder and what the test reads of it."""

    folder: Path
    document: dict[str, Any]

    @property
    def config(self) -> Path:
        return self.folder / "enclave.yaml"

    @property
    def pcr_file(self) -> Path:
        return self.folder / "artifacts" / "pcr.json"

    @property
    def pcr0(self) -> str:
        return str(json.loads(self.pcr_file.read_text(encoding="utf-8"))["PCR0"])

    @property
    def ingress_url(self) -> str:
        """The first ingress listener, as reached on the (fake) host itself."""
        scheme = "https" if self.document["runtime"].get("tls", True) else "http"
        return f"{scheme}://{self.document['supervisor']['ingress'][0]['listen']}"


def production_document() -> dict[str, Any]:
    """enclave.yaml of the deployed app (free loopback ports; see the module docstring)."""
    base = dev_config_document(
        app={"command": ["python3", "app.py"], "health_path": "/health"},
        runtime={"tls": True},
        supervisor={"watchdog": {"interval_s": 0.5, "backoff_initial_s": 0.5}},
    )
    return deep_merge(
        base,
        {
            "prefix": PREFIX,
            "mode": "production",
            "region": REGION,
            "account": ACCOUNT,
            "instance_type": "m6i.xlarge",
            "instances": 1,
            "enclave": {"cpu_count": 2, "memory_mib": 4096, "cid": 16},
            "secrets": {
                "backend": "ssm",
                "static": [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}],
            },
            "storage": {
                "backend": "s3",
                "options": {"bucket": STORAGE_BUCKET, "prefix": STORAGE_PREFIX},
            },
            "kms": {"backend": "aws"},
            "attestation": {"backend": "nitro"},
            # No vsock here: the fake enclave's listeners are loopback TCP ports.
            "launcher": {
                "backend": "nitro-cli",
                "options": {"address_override": "tcp://127.0.0.1"},
            },
        },
    )


def build_wheel(work: Path, dest: Path) -> Path:
    """This checkout's simple-enclave wheel, built from a copy of its sources into ``dest``."""
    source = work / "source"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for name in WHEEL_SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--disable-pip-version-check", "-q", str(source), "-w", str(dest)],
        cwd=work,
        env=dict(os.environ),
    )
    [wheel] = sorted(dest.glob("simple_enclave-*.whl"))
    return wheel


def make_project(work: Path) -> Project:
    """Write and build the project in ``work/hello`` (see the module docstring)."""
    folder = work / NAME
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(EXAMPLE_APP, folder / "app.py")
    document = production_document()
    (folder / "enclave.yaml").write_text(yaml.safe_dump(document, sort_keys=False), "utf-8")
    build_wheel(work, folder / "artifacts" / "wheels")
    env = {
        **os.environ,
        "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_DOCKER_STATE": str(work / "fake-docker.json"),
        "FAKE_NITRO_CLI_STATE": str(work / "fake-nitro-cli-build.json"),
    }
    enclave = [sys.executable, "-m", "enclave_core.cli.main"]
    config = ["-c", str(folder / "enclave.yaml")]
    lock = ["lock", "--base-digest", BASE_DIGEST, "--source-date-epoch", SOURCE_DATE_EPOCH]
    _run([*enclave, *lock, *config], cwd=folder, env=env)
    _run([*enclave, "build", *config], cwd=folder, env=env)
    return Project(folder, document)


def _run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(  # noqa: S603 - argument list
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv[:6])}... failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
