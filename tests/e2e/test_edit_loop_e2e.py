"""End to end: editing the app under `enclave dev`, as a developer does all day.

The enclave runs an immutable snapshot of the app's folder (`.enclave/images/`), so an edit never
changes the running enclave; `--watch` migrates to the edited files (the nine real steps), `enclave
dev` started on changed files migrates by itself, `enclave migrate --app-dir .` works on the folder
being edited, restarts relaunch the same image, and a log written into the folder changes
nothing. Every time the secret stays the same and the stored visit count goes on.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import DevStack, http, make_stack
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

OLD = "Hello from Simple Enclave!"
SECRET = "APP_SIGNING_KEY"


def enclave_info(stack: DevStack) -> dict[str, Any]:
    status, _, body = http("GET", stack.ingress_url + "/v1/enclave-info")
    assert status == 200, body
    info: dict[str, Any] = json.loads(body)
    return info


def image(stack: DevStack) -> dict[str, str]:
    record: dict[str, str] = json.loads((stack.folder / ".enclave" / "image.json").read_text())
    return record


def edit(stack: DevStack, greeting: str) -> None:
    source = stack.folder / "app.py"
    text = source.read_text()
    current = next(line for line in text.splitlines() if line.startswith("DEFAULT_GREETING"))
    source.write_text(text.replace(current, f"DEFAULT_GREETING = {greeting!r}"))


def serves(stack: DevStack, greeting: str) -> bool:
    return greeting in stack.greeting()


def test_watch_migrates_each_edit_and_keeps_secrets_and_data(base: Path) -> None:
    stack = make_stack(base / "app")
    stack.start(args=("--watch",))
    try:
        secret, first = stack.app_env()[SECRET], enclave_info(stack)
        visits = stack.app_json()["visits"]
        snapshot = Path(image(stack)["app_dir"])
        assert snapshot.parent == stack.folder / ".enclave" / "images"
        assert (snapshot / "app.py").read_text() == (stack.folder / "app.py").read_text()

        edit(stack, "Hello after one edit!")
        wait_for(lambda: serves(stack, "Hello after one edit!"), timeout=90)
        second = enclave_info(stack)
        assert second["pcr0"] != first["pcr0"]
        assert second["previous_pcr0"] == first["pcr0"]
        assert stack.app_env()[SECRET] == secret
        assert stack.app_json()["visits"] > visits + 1  # it went on: the data came along
        # The old snapshot was not touched by the edit, and the output says what happened.
        assert OLD in (snapshot / "app.py").read_text()
        served = f"new image serving: PCR0 {second['pcr0'][:16]}…"
        wait_for(lambda: served in stack.output(), timeout=30)  # printed once step 9 is done
        assert "[9/9] migration parameters cleaned up; migration complete" in stack.output()

        edit(stack, "Hello after two edits!")  # another edit right away
        wait_for(lambda: serves(stack, "Hello after two edits!"), timeout=90)
        third = enclave_info(stack)
        assert [link["body"]["from_pcr0"] for link in third["migration_chain"]] == [
            first["pcr0"],
            second["pcr0"],
        ]
        assert stack.app_env()[SECRET] == secret
        # The running image and its predecessor stay; older snapshots are pruned (at step 8,
        # once the new image serves).
        wait_for(lambda: f"new image serving: PCR0 {third['pcr0'][:16]}…" in stack.output(), 30)
        images = sorted(p.name for p in (stack.folder / ".enclave" / "images").iterdir())
        assert len(images) == 2 and snapshot.name not in images
    finally:
        stack.stop()


def test_restarts_relaunch_the_image_and_a_changed_folder_is_migrated_at_start(
    base: Path,
) -> None:
    stack = make_stack(base / "app")
    stack.start()
    try:
        secret, first = stack.app_env()[SECRET], enclave_info(stack)
        # Edits without --watch change nothing, even across `enclave stop && enclave start`.
        edit(stack, "Hello after a stop!")
        (stack.folder / "dev.log").write_text("a log the developer keeps beside the app\n")
        assert stack.cli("stop").returncode == 0
        assert stack.cli("start").returncode == 0
        wait_for(lambda: serves(stack, OLD), timeout=60)
        assert enclave_info(stack)["pcr0"] == first["pcr0"]
        # Ctrl-C, then `enclave dev` again: it starts on the old image and migrates by itself.
        assert stack.process is not None
        stack.process.send_signal(signal.SIGINT)
        stack.process.wait(30)
        stack.start()
        wait_for(lambda: serves(stack, "Hello after a stop!"), timeout=90)
        assert "then migrates to the current files" in stack.output()
        assert stack.app_env()[SECRET] == secret
        assert enclave_info(stack)["previous_pcr0"] == first["pcr0"]
        # A log in the folder is not part of the image: starting again migrates nothing.
        current = image(stack)
        (stack.folder / "dev.log").write_text("more log lines\n")
        stack.process.send_signal(signal.SIGINT)
        stack.process.wait(30)
        stack.start()
        assert image(stack) == current
        assert stack.output().count("then migrates to the current files") == 1
    finally:
        stack.stop()


def test_migrate_in_place_works_on_the_folder_being_edited(base: Path) -> None:
    stack = make_stack(base / "app")
    stack.start()
    try:
        secret, first = stack.app_env()[SECRET], enclave_info(stack)
        edit(stack, "Hello, migrated in place!")
        done = stack.cli("migrate", "--app-dir", ".", timeout=300)
        assert done.returncode == 0, done.stderr
        assert "[9/9]" in done.stdout
        wait_for(lambda: serves(stack, "Hello, migrated in place!"), timeout=60)
        assert stack.app_env()[SECRET] == secret
        assert enclave_info(stack)["previous_pcr0"] == first["pcr0"]
    finally:
        stack.stop()


def test_a_broken_edit_is_rolled_back_and_the_old_version_keeps_serving(base: Path) -> None:
    stack = make_stack(base / "app")
    stack.start(args=("--watch",))
    try:
        secret, first = stack.app_env()[SECRET], enclave_info(stack)
        visits = stack.app_json()["visits"]
        source = stack.folder / "app.py"
        good = source.read_text()
        greeting = next(line for line in good.splitlines() if line.startswith("DEFAULT_GREETING"))
        broken = f"{greeting}\nraise SystemExit('a mistake the developer has not seen yet')"
        source.write_text(good.replace(greeting, broken))
        rolled_back = "rolled back: the previous image serves again"

        def failure_line() -> str | None:
            lines = stack.output().splitlines()
            said = [x for x in lines if x.startswith("migration failed:") and rolled_back in x]
            return said[0] if said else None

        failure = wait_for(failure_line, timeout=180)
        assert "[7/9]" in stack.output()  # it got as far as switching the key, then undid it
        assert "migration failed: step 8 failed: the new enclave failed" in failure
        assert "app exited with code 1" in failure  # why: the app kept exiting
        # ... and the app's own words are in the same terminal, just above.
        assert "a mistake the developer has not seen yet" in stack.output()
        # The old version serves again: same image, same secret, the data went on.
        wait_for(lambda: serves(stack, OLD), timeout=60)
        assert enclave_info(stack)["pcr0"] == first["pcr0"]
        assert stack.app_env()[SECRET] == secret
        assert stack.app_json()["visits"] > visits
        # Fixing the file migrates from the old version; the failed image is in no chain.
        source.write_text(good.replace(OLD, "Hello after the fix!"))
        wait_for(lambda: serves(stack, "Hello after the fix!"), timeout=120)
        fixed = enclave_info(stack)
        assert fixed["previous_pcr0"] == first["pcr0"]
        assert [link["body"]["from_pcr0"] for link in fixed["migration_chain"]] == [first["pcr0"]]
        assert stack.app_env()[SECRET] == secret
    finally:
        stack.stop()
