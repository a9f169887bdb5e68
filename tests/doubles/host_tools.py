"""Test-only stand-ins for host tools: the fake ``cdk``, ``docker`` and ``nitro-cli`` executables in
``tools/`` (:data:`FAKES`, put first on PATH) and helpers to drive the fake nitro-cli."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

#: The folder of the fake executables (``cdk``, ``docker``, ``nitro-cli``).
FAKES = Path(__file__).resolve().parent / "tools"
NITRO_CLI = FAKES / "nitro-cli"


def fake_nitro_env(folder: Path, path: str | None = None) -> dict[str, str]:
    """The variables that put the fake nitro-cli first on PATH, its state and logs in ``folder``."""
    return {
        "PATH": f"{FAKES}{os.pathsep}{path if path is not None else os.environ.get('PATH', '')}",
        "FAKE_NITRO_CLI_STATE": str(folder / "fake-nitro-cli.json"),
        "NITRO_CLI_LOGS_PATH": str(folder / "nitro-logs"),
    }


def fake_state(folder: Path) -> dict[str, Any]:
    """The fake's state file: ``enclaves`` (by id) and ``calls`` (each invocation's arguments)."""
    path = folder / "fake-nitro-cli.json"
    if not path.exists():
        return {"enclaves": {}, "calls": []}
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def describe_enclaves(env: dict[str, str]) -> list[dict[str, Any]]:
    """Run the fake's ``describe-enclaves`` with ``env`` added to the environment."""
    done = subprocess.run(
        [str(NITRO_CLI), "describe-enclaves"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        check=True,
    )
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def kill_fake_enclaves(folder: Path) -> None:
    """Safety net for test teardown: SIGKILL the process group of every enclave the fake knows."""
    for enclave in fake_state(folder)["enclaves"].values():
        try:
            stat = Path(f"/proc/{enclave['ProcessID']}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[19] != enclave["StartTicks"]:
                continue  # that pid is another process now
            os.killpg(int(enclave["ProcessID"]), signal.SIGKILL)
        except (OSError, IndexError):
            pass


def cdk_calls(state: Path) -> list[list[str]]:
    """The argument lists the fake cdk was called with, read from its state file (none yet: [])."""
    if not state.exists():
        return []
    return [call["argv"] for call in json.loads(state.read_text())["calls"]]
