"""Simple Enclave core: hook specs, contracts and the runtime and supervisor.

Plugin authors import one thing from here::

    from enclave_core import hookimpl
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "enclave"

#: Marker for hook implementations in plugins (``@hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["hookimpl", "__version__"]
