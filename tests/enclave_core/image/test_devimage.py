"""Development images: content-addressed snapshots, one file rule, pruning, and `prepare_image`."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.cli.devwatch import prepare_image
from enclave_core.config import Config
from enclave_core.deploy.build import app_image_files
from enclave_core.image.current import (
    apply_image_override,
    read_image_override,
    write_image_override,
)
from enclave_core.image.files import excluded, image_files, measure
from enclave_core.image.snapshot import content_digest, images_dir, prune, take_snapshot


@pytest.fixture
def excluding_config(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    (tmp_path / "app.py").write_text("print('v1')\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper.py").write_text("X = 1\n")
    return make_config(app={"exclude": ["*.tmp", "data/cache"]})


def pcr0_of(config: Config, folder: Path) -> str:
    nsm = SimulatedNsm(state_dir=config.state_dir, app_dir=folder)
    return nsm.describe_pcr(0).data.hex()


def test_a_snapshot_is_a_read_only_copy_named_by_its_content(excluding_config: Config) -> None:
    snapshot = take_snapshot(excluding_config, excluding_config.app_dir)
    assert snapshot.path.parent == images_dir(excluding_config)
    assert snapshot.path.name == snapshot.digest[:32]
    copied = sorted(p.relative_to(snapshot.path).as_posix() for p in snapshot.path.rglob("*"))
    assert copied == ["app.py", "enclave.yaml", "lib", "lib/helper.py"]
    mode = stat.S_IMODE(os.stat(snapshot.path / "app.py").st_mode)
    assert mode & 0o222 == 0  # nobody may write an image
    # The simulated NSM measures the snapshot to the same PCR0 as the folder it was taken of.
    assert (
        pcr0_of(excluding_config, snapshot.path)
        == pcr0_of(excluding_config, excluding_config.app_dir)
        == snapshot.digest
    )
    # Taking it again changes nothing; editing the folder never touches the snapshot.
    assert take_snapshot(excluding_config, excluding_config.app_dir) == snapshot
    (excluding_config.app_dir / "app.py").write_text("print('v2')\n")
    assert (snapshot.path / "app.py").read_text() == "print('v1')\n"
    assert content_digest(excluding_config, snapshot.path) == snapshot.digest
    second = take_snapshot(excluding_config, excluding_config.app_dir)
    assert second.path != snapshot.path and second.digest != snapshot.digest


def test_logs_caches_and_the_configured_patterns_never_enter_an_image(
    excluding_config: Config,
) -> None:
    before = content_digest(excluding_config, excluding_config.app_dir)
    folder = excluding_config.app_dir
    for junk in ("dev.log", "scratch.tmp", "lib/x.pyc", "__pycache__/y.pyc", ".git/HEAD"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("noise")
    (folder / "data" / "cache").mkdir(parents=True)
    (folder / "data" / "cache" / "blob").write_text("cached")
    assert (
        content_digest(excluding_config, folder) == before
    )  # `enclave dev > dev.log` changes nothing
    (folder / "data" / "kept.txt").write_text("data that ships")
    assert content_digest(excluding_config, folder) != before
    # enclave build's context follows the same rule.
    shipped = [relative for relative, _ in app_image_files(excluding_config)]
    assert shipped == ["app.py", "data/kept.txt", "lib/helper.py"]  # enclave.yaml goes apart


def test_the_rule_and_the_digest() -> None:
    assert excluded("a/b/run.log", ["*.log"]) and not excluded("a/log.txt", ["*.log"])
    assert excluded("data/cache", ["data/cache"]) and not excluded("x/data/cache", ["data/cache"])
    assert measure([]) == bytes.fromhex(
        "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da"
        "274edebfe76f65fbd51ad2f14898b95b"
    )  # SHA-384 of nothing


def test_the_simulated_pcr0_is_the_image_digest(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "b.log").write_text("log")
    files = image_files(tmp_path)
    assert [name for name, _ in files] == ["a.py"]
    nsm = SimulatedNsm(state_dir=tmp_path / ".enclave", app_dir=tmp_path)
    assert nsm.describe_pcr(0).data == measure(files)


def test_prune_keeps_what_it_is_told(excluding_config: Config) -> None:
    first = take_snapshot(excluding_config, excluding_config.app_dir)
    (excluding_config.app_dir / "app.py").write_text("print('v2')\n")
    second = take_snapshot(excluding_config, excluding_config.app_dir)
    (excluding_config.app_dir / "app.py").write_text("print('v3')\n")
    third = take_snapshot(excluding_config, excluding_config.app_dir)
    assert prune(excluding_config, {second.path, third.path}) == [first.path.name]
    assert not first.path.exists() and second.path.is_dir() and third.path.is_dir()


def test_prepare_image_makes_the_first_snapshot_then_sees_changes(excluding_config: Config) -> None:
    lines: list[str] = []
    first = prepare_image(excluding_config, excluding_config.app_dir, lines.append, migrate=True)
    record = read_image_override(excluding_config)
    assert record is not None and not first.changed and lines == []
    assert Path(record["app_dir"]).parent == images_dir(excluding_config)
    assert record["pcr0"] == first.pcr0 == pcr0_of(excluding_config, excluding_config.app_dir)
    # The runtime runs the snapshot, not the folder.
    assert apply_image_override(excluding_config).app_dir == Path(record["app_dir"])
    # Nothing changed: same image.
    again = prepare_image(excluding_config, excluding_config.app_dir, lines.append, migrate=True)
    assert (again.changed, again.pcr0, lines) == (False, first.pcr0, [])
    # The files changed while the enclave was stopped: start on the old image, then migrate.
    (excluding_config.app_dir / "app.py").write_text("print('v2')\n")
    changed = prepare_image(excluding_config, excluding_config.app_dir, lines.append, migrate=True)
    assert changed.changed and changed.pcr0 == first.pcr0
    assert read_image_override(excluding_config) == record
    assert "then migrates to the current files" in lines[-1]
    # --no-migrate: the new files run as they are (their key will refuse them).
    unmigrated = prepare_image(
        excluding_config, excluding_config.app_dir, lines.append, migrate=False
    )
    assert not unmigrated.changed and unmigrated.pcr0 == pcr0_of(
        excluding_config, excluding_config.app_dir
    )
    assert "--no-migrate" in lines[-1]


def test_a_vanished_image_is_replaced_by_a_snapshot_of_the_folder(excluding_config: Config) -> None:
    lines: list[str] = []
    prepare_image(excluding_config, excluding_config.app_dir, lines.append, migrate=True)
    record = read_image_override(excluding_config)
    assert record is not None
    prune(excluding_config, set())
    plan = prepare_image(excluding_config, excluding_config.app_dir, lines.append, migrate=True)
    assert not plan.changed and "is gone" in lines[-1]
    assert Path(read_image_override(excluding_config)["app_dir"]).is_dir()  # type: ignore[index]


def test_an_image_chosen_from_another_folder_is_kept_at_start(
    excluding_config: Config, tmp_path: Path
) -> None:
    """After `enclave migrate --app-dir elsewhere`, restarting `enclave dev` runs that image."""
    lines: list[str] = []
    prepare_image(excluding_config, excluding_config.app_dir, lines.append, migrate=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "app.py").write_text("print('another app')\n")
    snapshot = take_snapshot(excluding_config, elsewhere)
    write_image_override(
        excluding_config, snapshot.path, "ab" * 48, digest=snapshot.digest, source=snapshot.source
    )
    plan = prepare_image(excluding_config, excluding_config.app_dir, lines.append, migrate=True)
    assert not plan.changed and plan.pcr0 == "ab" * 48
    assert lines[-1].startswith(f"running the image made of {elsewhere}")
    assert read_image_override(excluding_config)["source"] == str(elsewhere)  # type: ignore[index]
