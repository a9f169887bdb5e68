"""The only place backends are chosen: enclave.yaml + registries -> backend instances.

``validate_backends`` checks every capability's ``backend`` and ``options`` against the installed
registries; ``build_backend`` builds one capability's backend with its :class:`BackendContext`.
"""

from __future__ import annotations

from typing import Any

import marshmallow

from enclave_core.config import Config, flatten_errors
from enclave_core.errors import BackendNotFound, ConfigError
from enclave_core.plugin.capabilities import CAPABILITIES
from enclave_core.plugin.interfaces import BackendContext
from enclave_core.plugin.manager import PluginManager, get_plugin_manager


def backend_context(config: Config, session: Any = None) -> BackendContext:
    """The context every backend of this deployment is built with."""
    return BackendContext(
        name=config.name,
        prefix=config.prefix,
        region=config.region,
        mode=config.mode,
        base_dir=config.base_dir,
        state_dir=config.state_dir,
        app_dir=config.app_dir,
        session=session,
    )


def plugins_for(config: Config) -> PluginManager:
    """Build the plugin manager honouring ``plugins.disable``."""
    return get_plugin_manager(disable=config.plugins.disable)


def validate_backends(config: Config, plugins: PluginManager) -> list[str]:
    """Check every capability names an installed backend with valid options; return error lines."""
    lines: list[str] = []
    for capability in CAPABILITIES:
        settings = config.backend(capability)
        try:
            cls = plugins.registry(capability).get(settings.backend)
        except BackendNotFound as exc:
            lines.append(f"{capability}.backend: {exc}")
            continue
        try:
            cls.Options().load(settings.options)
        except marshmallow.ValidationError as exc:
            lines.extend(flatten_errors(exc.messages, f"{capability}.options"))
    return lines


def load_options(
    config: Config, plugins: PluginManager, capability: str
) -> tuple[type[Any], dict[str, Any]]:
    """Return the backend class of a capability and its validated options."""
    settings = config.backend(capability)
    cls = plugins.registry(capability).get(settings.backend)
    try:
        options = cls.Options().load(settings.options)
    except marshmallow.ValidationError as exc:
        lines = flatten_errors(exc.messages, f"{capability}.options")
        raise ConfigError("\n".join(lines), lines) from None
    return cls, options


def build_backend(
    config: Config, plugins: PluginManager, capability: str, *, session: Any = None
) -> Any:
    """Build the configured backend of one capability."""
    cls, options = load_options(config, plugins, capability)
    return cls.from_options(options, backend_context(config, session))
