"""Helpers for tests, the project's own and plugin authors': free ports and throwaway configs."""

from __future__ import annotations

import socket
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from enclave_core.config import Config, load_config

#: Ports handed out lately. The kernel may give the same free port to two binds in a row, and a
#: stack's ports are all chosen before any is bound: without this, two of its listeners (seen: the
#: app and the egress proxy) could be handed one port.
_RECENT_PORTS: deque[int] = deque(maxlen=512)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now and was not handed out lately."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _RECENT_PORTS:
            _RECENT_PORTS.append(port)
            return port
    raise RuntimeError(f"no free TCP port on {host} that was not handed out lately")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``, recursing into dicts."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def dev_config_document(**overrides: Any) -> dict[str, Any]:
    """An enclave.yaml document for a development stack on free loopback ports."""
    doc: dict[str, Any] = {
        "name": "hello",
        "runtime": {
            "port": free_port(),
            "app_api_port": free_port(),
            "control_port": free_port(),
            "tls": False,
        },
        "app": {"port": free_port()},
        "supervisor": {
            "listen": f"127.0.0.1:{free_port()}",
            "ingress": [],
            "watchdog": {"interval_s": 0.2, "backoff_initial_s": 0.5, "backoff_max_s": 4},
        },
        "egress": {"port": free_port(), "imds_port": free_port()},
    }
    doc["supervisor"]["ingress"] = [
        {"listen": f"127.0.0.1:{free_port()}", "port": doc["runtime"]["port"]}
    ]
    return deep_merge(doc, overrides)


def write_config(folder: Path, document: dict[str, Any]) -> Config:
    """Write ``document`` as ``folder/enclave.yaml`` and load it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "enclave.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return load_config(path)
