"""Helpers for tests, the project's own and plugin authors'.

``free_port``, ``dev_config_document``, ``write_config`` and ``deep_merge`` (from
:mod:`.helpers`); the backend contract suite in :mod:`.contracts`, with its fixtures in the
``enclave`` pytest plugin (:mod:`.pytest_plugin`). See docs/architecture.md, "The backend
contract suite".
"""

from __future__ import annotations

from enclave_core.testing.helpers import deep_merge, dev_config_document, free_port, write_config

__all__ = ["deep_merge", "dev_config_document", "free_port", "write_config"]
