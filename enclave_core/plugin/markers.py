"""The project name and pluggy's markers: the leaf every other plugin module imports.

``hookimpl`` marks a plugin's hook implementations (re-exported as ``enclave_core.hookimpl``);
``hookspec`` marks the specifications in :mod:`enclave_core.plugin.hookspecs`. This module imports
nothing of the project, so the package root can re-export it without an import cycle.
"""

from __future__ import annotations

import pluggy

#: The pluggy project name, which is also the entry-point group plugins register in.
PROJECT_NAME = "enclave"

#: Marker for hook implementations in plugins (``@hookimpl``, ``@hookimpl(tryfirst=True)``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: Marker for hook specifications (used only by :mod:`enclave_core.plugin.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
