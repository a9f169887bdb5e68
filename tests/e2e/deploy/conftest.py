"""Fixtures of the deploy end-to-end test: the patched moto server, the KMS shim, the fake hosts'
settings, the bootstrapped account, the pinned cdk CLI and the built project.

Every process started here or by what runs here (the moto server; the supervisors and fake
enclaves of the fake hosts) is stopped by pid at the end of the session: the moto server with
SIGTERM then SIGKILL, each host as its instance's termination would
(:meth:`tests.e2e.deploy.hosts.Host.power_off`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_core.crypto.devca import DevCa
from enclave_core.testing import free_port
from tests.e2e.deploy import cdk_cli
from tests.e2e.deploy.bootstrap import bootstrap
from tests.e2e.deploy.caller_shim import CallerKmsShim
from tests.e2e.deploy.cli import EnclaveCli, user_env
from tests.e2e.deploy.hosts import Settings, power_off_all
from tests.e2e.deploy.moto_server import Moto, start_moto
from tests.e2e.deploy.project import REGION, Project, make_project
from tests.services.moto_server import stop_process


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's folder: the project, the hosts, the CLI's logs."""
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="session")
def moto(work: Path) -> Iterator[Moto]:
    """The moto server of :mod:`tests.e2e.deploy.moto_launcher` on a free loopback port."""
    process, moto = start_moto(work)
    try:
        yield moto
    finally:
        stop_process(process)
        power_off_all(moto.hosts)


@pytest.fixture(scope="session")
def pki(work: Path) -> Path:
    """The dev CA every fake enclave chains to (the stand-in for AWS's Nitro PKI)."""
    folder = work / "pki"
    DevCa(folder).root_certificate()
    return folder


@pytest.fixture(scope="session")
def kms_shim(moto: Moto, pki: Path) -> Iterator[CallerKmsShim]:
    """The KMS Recipient shim in front of moto, trusting the PKI's root."""
    shim = CallerKmsShim(upstream=moto.url, root=pki / "dev-root.pem", region=REGION)
    shim.start()
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture(scope="session")
def cdk_bin() -> Path:
    """The folder of the pinned ``cdk`` executable."""
    return cdk_cli.install()


@pytest.fixture(scope="session")
def project(work: Path) -> Project:
    """The built example project (wheel, EIF, pcr.json, build context)."""
    return make_project(work)


@pytest.fixture(scope="session")
def enclave(
    work: Path,
    moto: Moto,
    kms_shim: CallerKmsShim,
    pki: Path,
    project: Project,
    cdk_bin: Path,
) -> EnclaveCli:
    """The ``enclave`` command on the project, against a bootstrapped moto with fake hosts."""
    Settings(
        env={
            "AWS_ENDPOINT_URL": moto.url,
            # The enclave's KMS and STS calls go through the shim (Recipient, key policies).
            "AWS_ENDPOINT_URL_KMS": kms_shim.url,
            "AWS_ENDPOINT_URL_STS": kms_shim.url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            # The log channel's port, free here (8003 may be taken on a shared machine).
            "ENCLAVE_LOG_PORT": str(free_port()),
        },
        python=sys.executable,
        image_context=str(project.folder / "artifacts" / "context"),
        pki=str(pki),
    ).write(moto.hosts)
    env = user_env(moto_url=moto.url, cdk_bin=cdk_bin)
    bootstrap(env, work)
    return EnclaveCli(project, env, moto.hosts, work)
