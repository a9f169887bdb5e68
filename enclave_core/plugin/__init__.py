"""The plugin machinery: hook specs, capability Protocols, registries, manager, backend choice."""
