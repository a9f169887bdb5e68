"""The build context is the same bytes from the same source: two clones, two days, two umasks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from enclave_core.config import Config, load_config
from enclave_core.deploy.context import canonical_tar
from enclave_core.deploy.lock import read_lock, wheel_cache
from enclave_core.image.snapshot import content_digest
from enclave_core.testing import dev_config_document, write_config
from tests.doubles.locked import EPOCH, fake_lock, framework_wheel
from tests.helpers import cli

GIT = shutil.which("git") or "git"


def git(folder: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2024-05-01T12:00:00Z",
           "GIT_COMMITTER_DATE": "2024-05-01T12:00:00Z"}  # fmt: skip
    done = subprocess.run(
        [GIT, "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )  # fmt: skip
    return done.stdout


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """An app in git: enclave.yaml, app.py, a package, requirements.txt and its enclave.lock."""
    origin = tmp_path / "origin"
    config = write_config(origin, dev_config_document(app={"command": ["python3", "app.py"]}))
    (origin / "app.py").write_text("print('hello')\n")
    (origin / "lib").mkdir()
    (origin / "lib" / "util.py").write_text("X = 1\n")
    (origin / "run.sh").write_text("#!/bin/sh\nexec python3 app.py\n")
    (origin / "run.sh").chmod(0o755)
    (origin / "requirements.txt").write_text("six==1.16.0\n")
    (origin / ".gitignore").write_text(".enclave/\nartifacts/\n")
    fake_lock(config)
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "the app")
    return origin


def clone(repository: Path, into: Path, *, umask: int, mtime: float) -> Config:
    """A fresh clone made under ``umask``, its files touched at ``mtime``, with the wheel cache
    an earlier ``enclave lock`` left on that machine."""
    old = os.umask(umask)
    try:
        subprocess.run([GIT, "clone", "-q", str(repository), str(into)], check=True, timeout=60)
    finally:
        os.umask(old)
    for path in into.rglob("*"):
        if ".git" not in path.parts:
            os.utime(path, (mtime, mtime))
    config = load_config(into / "enclave.yaml")
    source = load_config(repository / "enclave.yaml")
    shutil.copytree(wheel_cache(source), wheel_cache(config))
    return config


def context_only(capsys: pytest.CaptureFixture[str], config: Config, out: Path) -> dict:
    code, stdout, err = cli(
        capsys, "build", "--context-only", str(out), "-f", "json", "-c", str(config.path)
    )
    assert code == 0, err
    return json.loads(stdout)


def test_two_clones_at_different_times_and_umasks_give_the_same_context(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = clone(repository, tmp_path / "a", umask=0o022, mtime=time.time() - 86400 * 30)
    second = clone(repository, tmp_path / "b", umask=0o077, mtime=time.time())
    one = context_only(capsys, first, tmp_path / "ctx-a")
    time.sleep(1.1)  # another second: nothing may depend on when the build runs
    two = context_only(capsys, second, tmp_path / "ctx-b")
    assert one["digest"] == two["digest"]
    assert (
        one["files"]
        == two["files"]
        == [
            "Dockerfile",
            "app/.gitignore",
            "app/app.py",
            "app/lib/util.py",
            "app/requirements.txt",
            "app/run.sh",
            "enclave.lock",
            "enclave.yaml",
            "requirements.lock.txt",
            "wheels/httptools-0.6.4-cp311-cp311-manylinux_2_5_x86_64.manylinux1_x86_64.whl",
            f"wheels/{framework_wheel()}",
        ]
    )
    assert canonical_tar(tmp_path / "ctx-a") == canonical_tar(tmp_path / "ctx-b")
    for name in one["files"]:  # byte for byte, mode for mode, time for time
        a, b = tmp_path / "ctx-a" / name, tmp_path / "ctx-b" / name
        assert a.read_bytes() == b.read_bytes(), name
        assert (a.stat().st_mode, a.stat().st_mtime) == (b.stat().st_mode, b.stat().st_mtime)
        assert a.stat().st_mtime == EPOCH
    assert oct((tmp_path / "ctx-a" / "app" / "run.sh").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "ctx-b" / "app" / "app.py").stat().st_mode & 0o777) == "0o644"


def test_a_changed_file_or_dependency_changes_the_digest(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = clone(repository, tmp_path / "a", umask=0o022, mtime=time.time())
    before = context_only(capsys, config, tmp_path / "ctx")["digest"]
    (config.base_dir / "lib" / "util.py").write_text("X = 2\n")
    edited = context_only(capsys, config, tmp_path / "ctx")["digest"]
    assert edited != before
    (config.base_dir / "lib" / "util.py").write_text("X = 1\n")
    assert context_only(capsys, config, tmp_path / "ctx")["digest"] == before
    # Another version of a dependency, pinned by enclave lock: another context.
    fake_lock(
        config,
        wheels=[
            next(w.filename for w in read_lock(config).wheels if w.name == "simple-enclave"),
            "httptools-0.6.5-cp311-cp311-manylinux_2_5_x86_64.manylinux1_x86_64.whl",
        ],
    )
    relocked = context_only(capsys, config, tmp_path / "ctx")["digest"]
    assert relocked not in (before, edited)
    assert "httptools==0.6.5" in (tmp_path / "ctx" / "requirements.lock.txt").read_text()
    # Only the locked wheels enter the context: a stray one in the cache does not.
    (wheel_cache(config) / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    assert context_only(capsys, config, tmp_path / "ctx")["digest"] == relocked


def test_a_stale_or_tampered_lock_is_refused(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = clone(repository, tmp_path / "a", umask=0o022, mtime=time.time())
    (config.base_dir / "requirements.txt").write_text("six==1.17.0\n")
    code, _, err = cli(capsys, "build", "--context-only", str(tmp_path / "c"), "-c",
                       str(config.path))  # fmt: skip
    assert code == 1
    assert (
        "ERROR: enclave.lock does not match what this build would install: enclave.lock was "
        "made for another requirements.txt (its hash differs). Run enclave lock"
    ) in err
    (config.base_dir / "requirements.txt").write_text("six==1.16.0\n")
    doc = json.loads((config.base_dir / "enclave.lock").read_text())
    doc["framework"] = "0.0.1"
    (config.base_dir / "enclave.lock").write_text(json.dumps(doc))
    code, _, err = cli(capsys, "build", "--context-only", str(tmp_path / "c"), "-c",
                       str(config.path))  # fmt: skip
    assert code == 1 and "enclave.lock pins simple-enclave 0.0.1, and this is" in err
    # A cached wheel whose bytes are not the locked ones is never used.
    fake = clone(repository, tmp_path / "b", umask=0o022, mtime=time.time())
    cached = next(wheel_cache(fake).glob("httptools-*.whl"))
    cached.write_bytes(b"PK tampered")
    code, _, err = cli(capsys, "build", "--context-only", str(tmp_path / "d"), "-c",
                       str(fake.path))  # fmt: skip
    assert code == 1 and not (tmp_path / "d").exists()
    assert "pip download of the locked wheels failed" in err  # not on the index: refused


def test_what_never_enters_the_image_never_changes_the_development_pcr0(
    repository: Path, tmp_path: Path
) -> None:
    config = load_config(repository / "enclave.yaml")
    before = content_digest(config, config.app_dir)
    (repository / "artifacts").mkdir(exist_ok=True)
    (repository / "artifacts" / "pcr.json").write_text("{}")
    (repository / "cdk.out").mkdir()
    (repository / "cdk.out" / "manifest.json").write_text("{}")
    (repository / "enclave.lock").write_text((repository / "enclave.lock").read_text() + "\n")
    assert content_digest(config, config.app_dir) == before
    (repository / "app.py").write_text("print('changed')\n")
    assert content_digest(config, config.app_dir) != before
