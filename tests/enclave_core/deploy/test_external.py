"""Running external tools: streaming, tails, timeouts that kill the whole group, clear errors."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from enclave_core.deploy.external import failure, require_tool, run, stream
from enclave_core.errors import EnclaveError


def test_stream_passes_every_line_and_keeps_the_last_ones() -> None:
    seen: list[str] = []
    script = "import sys\nfor i in range(30): print(i)\nprint('oops', file=sys.stderr)\nsys.exit(3)"
    result = stream([sys.executable, "-u", "-c", script], timeout_s=30, echo=seen.append, tail=5)
    assert seen == [str(i) for i in range(30)] + ["oops"]
    assert (result.returncode, result.tail) == (3, ["26", "27", "28", "29", "oops"])
    error = failure("the tool", result)
    assert str(error) == "the tool failed with exit status 3; its last lines:"
    assert error.details == ["26", "27", "28", "29", "oops"]


def test_a_timeout_kills_the_tool_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(EnclaveError, match=r"timed out after 1 s"):
        stream([sys.executable, "-c", script], timeout_s=1, echo=lambda _: None)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        stat = Path(f"/proc/{child}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break  # killed, waiting for its (init) parent to reap it
        time.sleep(0.05)
    else:
        pytest.fail(f"the tool's child {child} outlived the timeout")


def test_run_captures_stdout_and_the_stderr_tail() -> None:
    script = "import sys\nprint('{\"a\": 1}')\nprint('warn', file=sys.stderr)"
    result = run([sys.executable, "-c", script], timeout_s=30)
    assert (result.returncode, result.stdout, result.tail) == (0, '{"a": 1}\n', ["warn"])
    with pytest.raises(EnclaveError, match="could not start"):
        run(["/nonexistent/tool"], timeout_s=5)


def test_a_missing_tool_is_one_line_naming_it() -> None:
    with pytest.raises(EnclaveError) as caught:
        require_tool("docker", needed_by="enclave build", hint="install it", which=lambda _: None)
    assert str(caught.value) == "enclave build needs docker: not found on PATH (install it)"
    assert require_tool("sh", needed_by="x", hint="y", which=lambda n: f"/bin/{n}") == "/bin/sh"
