"""The ``enclave`` pytest plugin (``pytest11`` entry point): fixtures for the contract suite.

It declares the ``enclave_contract`` marker, provides ``enclave_context_factory`` (a
:class:`~enclave_core.plugin.interfaces.BackendContext` for app ``hello`` in the test's
``tmp_path``; keyword arguments replace fields) and ``enclave_context``, and rewrites the
contracts' assertions so a failed check shows the values compared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from enclave_core.plugin.interfaces import BackendContext

CONTRACT_MODULES = (
    "enclave_core.testing.contracts",
    "enclave_core.testing.contract_base",
    "enclave_core.testing.storage_contract",
    "enclave_core.testing.secrets_contract",
    "enclave_core.testing.kms_contract",
)
MARKER = "enclave_contract"

pytest.register_assert_rewrite(*CONTRACT_MODULES)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``enclave_contract`` marker (projects running ``--strict-markers`` need it)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}: a check of the backend contract suite (enclave_core.testing.contracts)",
    )


def make_context(base_dir: Path, **fields: Any) -> BackendContext:
    """A development BackendContext for app ``hello`` in ``base_dir``; ``fields`` replace any."""
    from enclave_core.plugin.interfaces import BackendContext

    defaults: dict[str, Any] = {
        "name": "hello",
        "prefix": "dev",
        "region": "us-east-1",
        "mode": "development",
        "base_dir": base_dir,
        "state_dir": base_dir / ".enclave",
        "app_dir": base_dir,
    }
    return BackendContext(**{**defaults, **fields})


@pytest.fixture
def enclave_context_factory(tmp_path: Path) -> Callable[..., BackendContext]:
    """Build BackendContexts rooted in this test's ``tmp_path``: ``factory(**fields)``."""

    def factory(**fields: Any) -> BackendContext:
        return make_context(tmp_path, **fields)

    return factory


@pytest.fixture
def enclave_context(enclave_context_factory: Callable[..., BackendContext]) -> BackendContext:
    """The default BackendContext of this test (app ``hello``, prefix ``dev``, in ``tmp_path``)."""
    return enclave_context_factory()
