"""enclave.lock: resolved for the enclave's platform with hashes, read strictly, refused stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_core import __version__
from enclave_core.deploy.lock import (
    Lock,
    lock_problems,
    make_lock,
    pip_platform_args,
    read_lock,
    sha256_of,
    wheel_cache,
    write_lock,
)
from enclave_core.errors import ValidationError
from enclave_core.testing import dev_config_document, write_config
from tests.doubles.locked import BASE_DIGEST, fake_lock
from tests.helpers import build_project_wheel


def test_the_image_platform_is_cpython_3_11_on_bookworms_glibc() -> None:
    args = pip_platform_args("aarch64")
    platforms = [args[i + 1] for i, arg in enumerate(args) if arg == "--platform"]
    assert platforms[0] == "manylinux_2_36_aarch64" and "manylinux2014_aarch64" in platforms
    assert args[-6:] == ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    assert args[0] == "--only-binary=:all:"


@pytest.mark.parametrize("instance_type", ["m6i.xlarge", "c7g.2xlarge"])
def test_the_lock_resolves_the_real_dependencies_with_hashes(
    instance_type: str, tmp_path: Path
) -> None:
    """pip download from the package index for the image: the framework (an unreleased build
    in artifacts/wheels/) and the app's requirements.txt, for x86_64 and aarch64."""
    app = tmp_path / "app"
    config = write_config(app, dev_config_document(instance_type=instance_type))
    (app / "requirements.txt").write_text("six==1.16.0\n")
    build_project_wheel(app / "artifacts" / "wheels")
    lock = make_lock(config, base_digest=BASE_DIGEST, echo=lambda line: None, epoch=123)
    arch = "aarch64" if instance_type.startswith("c7g") else "x86_64"
    names = {w.name for w in lock.wheels}
    assert {"simple-enclave", "six", "httptools", "uvloop", "cryptography", "cffi"} <= names
    native = [w.filename for w in lock.wheels if not w.filename.endswith("-none-any.whl")]
    assert native and all(arch in name for name in native), native
    assert (lock.arch, lock.source_date_epoch, lock.framework) == (arch, 123, __version__)
    for wheel in lock.wheels:  # each pinned by the hash of the file kept for the builds
        assert sha256_of(wheel_cache(config) / wheel.filename) == wheel.sha256
    assert lock_problems(config, lock) == []
    write_lock(config, lock)
    assert read_lock(config) == lock
    assert "six==1.16.0 --hash=sha256:" in lock.requirements_text()


def test_the_lock_file_is_stable_and_read_strictly(tmp_path: Path) -> None:
    config = write_config(tmp_path / "app", dev_config_document())
    lock = fake_lock(config)
    text = (config.base_dir / "enclave.lock").read_text()
    assert text == lock.to_json() and Lock.from_json(text) == lock
    assert json.loads(text)["base_digest"] == BASE_DIGEST
    doc = json.loads(text)
    doc["wheels"][0]["sha256"] = "not-a-hash"
    with pytest.raises(ValidationError, match="is malformed"):
        Lock.from_json(json.dumps(doc))
    with pytest.raises(ValidationError, match="run enclave lock again"):
        Lock.from_json('{"version": 7}')


def test_a_lock_for_another_architecture_or_framework_is_stale(tmp_path: Path) -> None:
    config = write_config(tmp_path / "app", dev_config_document())
    lock = fake_lock(config)
    graviton = write_config(tmp_path / "arm", dev_config_document(instance_type="c7g.2xlarge"))
    assert lock_problems(graviton, lock) == [
        "enclave.lock is for x86_64, and instance_type c7g.2xlarge is aarch64"
    ]
    (config.base_dir / "requirements.txt").write_text("six\n")
    assert lock_problems(config, lock) == [
        "enclave.lock was made for another requirements.txt (its hash differs)"
    ]
