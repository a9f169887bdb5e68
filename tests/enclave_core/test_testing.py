"""enclave_core.testing: helpers the project's tests and plugin authors build stacks with."""

from __future__ import annotations

from typing import Any

import pytest

from enclave_core import testing


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
