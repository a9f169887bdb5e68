"""TEST-ONLY: the deploy test's moto server process (:mod:`tests.e2e.deploy.moto_launcher`).

:func:`start_moto` starts it on a free loopback port and waits until it answers; the caller
stops it by its process (:func:`tests.services.moto_server.stop_process`). :class:`Moto` is what
the test needs of it: its URL, the fake hosts' folder, its log, and boto3 clients on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from enclave_core.testing import free_port
from tests.e2e.deploy.project import REGION
from tests.helpers import REPO_ROOT
from tests.services.moto_server import moto_answers, stop_process

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Moto:
    """The patched moto server and the fake hosts it boots."""

    url: str
    hosts: Path
    log: Path

    def client(self, service: str) -> Any:
        """A boto3 client of ``service`` on the moto server (fake credentials)."""
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        return session.client(service, endpoint_url=self.url)


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], Moto]:
    """Start the launcher (hosts in ``work/hosts``, log ``work/moto-server.log``); return the
    process and the server once it answers.

    :raises RuntimeError: it did not start; its log's tail attached.
    """
    port = free_port()
    moto = Moto(f"http://127.0.0.1:{port}", work / "hosts", work / "moto-server.log")
    moto.hosts.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with moto.log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - argument list
            [sys.executable, "-m", "tests.e2e.deploy.moto_launcher"]
            + ["--port", str(port), "--hosts", str(moto.hosts)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not moto_answers(moto.url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            tail = moto.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"moto did not start on {moto.url}:\n{tail}")
        time.sleep(0.2)
    return process, moto
