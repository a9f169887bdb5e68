"""enclave_core.testing: helpers the project's tests and plugin authors build stacks with.

The helpers live in :mod:`enclave_core.testing.helpers` (patched here, where their globals are) and
are re-exported by the package.
"""

from __future__ import annotations

from typing import Any

import pytest

import enclave_core.testing
from enclave_core.testing import helpers as testing


class RepeatingSocket:
    """A socket whose bind(port 0) gets the ports of ``script`` in turn, repeats included."""

    script: list[int] = []

    def __init__(self, *args: Any) -> None:
        self.port = 0

    def __enter__(self) -> RepeatingSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self.port = self.script.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_port_never_hands_out_one_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel can give the same free port to two binds in a row; a stack's ports are all
    # chosen before any is bound, so two of its listeners would collide.
    monkeypatch.setattr(testing, "_RECENT_PORTS", type(testing._RECENT_PORTS)(maxlen=512))
    monkeypatch.setattr(testing.socket, "socket", RepeatingSocket)
    RepeatingSocket.script = [40001, 40001, 40001, 40002, 40001, 40003]
    assert [testing.free_port() for _ in range(3)] == [40001, 40002, 40003]


def test_the_package_re_exports_the_helpers() -> None:
    for name in ("free_port", "dev_config_document", "write_config", "deep_merge"):
        assert getattr(enclave_core.testing, name) is getattr(testing, name)
