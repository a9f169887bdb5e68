"""HTTP: the listener, the reverse proxy, the upstream pool, the ASGI adapter, errors, OpenAPI."""
