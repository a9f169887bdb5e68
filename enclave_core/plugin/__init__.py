"""The plugin machinery: markers, hook specs, the capability table and Protocols, registries,
the plugin manager and backend choice. Plugin authors import from ``enclave_core`` itself."""
