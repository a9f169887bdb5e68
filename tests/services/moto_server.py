"""One moto server per test session, reached over real HTTP through boto3.

Registered for every test by ``pytest_plugins = ["tests.services.moto_server", ...]`` in
``tests/conftest.py``.
The server starts on first use only (tests that never ask for ``moto_endpoint`` cost nothing):

- ``moto_endpoint`` (session): starts ``python -m moto.server -H 127.0.0.1 -p PORT`` (moto 5 keeps
  that module runnable; the ``moto_server`` console script is the same ``main``) on a free
  loopback port, waits until it answers HTTP, yields ``http://127.0.0.1:PORT`` and stops the
  process by its id at the end (terminate, wait, kill).
- ``moto_reset`` (function): ``POST /moto-api/reset`` before the test, so no test sees another's
  buckets, parameters or keys; yields the same URL.
- ``boto3_session`` (function): a boto3 session with fake credentials in us-east-1.

Backends under test get the URL as their ``endpoint_url`` option (or through
``AWS_ENDPOINT_URL_<SERVICE>``); nothing here uses moto's in-process ``mock_aws``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from enclave_core.testing import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REGION = "us-east-1"


def moto_answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status counts)."""
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2) as response:
            response.read()
        return True
    except urllib.error.HTTPError as exc:
        exc.close()
        return True
    except OSError:
        return False


def reset_moto(url: str) -> None:
    """Forget every resource of every service on the moto server at ``url``."""
    request = urllib.request.Request(f"{url}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop ``process`` by its id: SIGTERM, wait, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def start_moto_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto server on a free loopback port; return the process and its URL once it
    answers. Its output goes to ``log_path``, quoted if it fails to start."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not moto_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"moto server did not start on {url}:\n{tail}")
        time.sleep(0.1)
    return process, url


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of this session's moto server (started on first use, stopped by pid at the end)."""
    process, url = start_moto_server(tmp_path_factory.mktemp("moto") / "moto-server.log")
    try:
        yield url
    finally:
        stop_process(process)


@pytest.fixture
def moto_reset(moto_endpoint: str) -> str:
    """The moto URL, with every service's state reset for this test."""
    reset_moto(moto_endpoint)
    return moto_endpoint


@pytest.fixture
def boto3_session() -> boto3.session.Session:
    """A boto3 session with fake credentials in us-east-1 (moto accepts any)."""
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
