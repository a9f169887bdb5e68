"""An ``enclave.lock`` for build tests, whose wheels are small fake files already in the cache:
``enclave build`` then runs offline (no registry, no pip), through the real lock and context code.
"""

from __future__ import annotations

from collections.abc import Sequence

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.deploy.layout import BASE_IMAGE
from enclave_core.deploy.lock import (
    Lock,
    locked_wheel,
    requirements_sha256,
    wheel_cache,
    write_lock,
)
from enclave_core.deploy.wheelhouse import host_arch

BASE_DIGEST = "sha256:" + "ab" * 32
EPOCH = 1_700_000_000  # 2023-11-14


def framework_wheel() -> str:
    """The file name of this version's simple-enclave wheel."""
    return f"simple_enclave-{__version__}-py3-none-any.whl"


def fake_lock(
    config: Config,
    *,
    wheels: Sequence[str] = (),
    epoch: int = EPOCH,
    base_digest: str = BASE_DIGEST,
) -> Lock:
    """Write ``enclave.lock`` for ``config`` pinning fake wheel files placed in its wheel cache
    (default: simple-enclave and httptools)."""
    names = list(wheels) or [
        framework_wheel(),
        "httptools-0.6.4-cp311-cp311-manylinux_2_5_x86_64.manylinux1_x86_64.whl",
    ]
    cache = wheel_cache(config)
    cache.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in names:
        path = cache / name
        path.write_bytes(b"PK\x03\x04 a fake wheel: " + name.encode())
        entries.append(locked_wheel(path))
    lock = Lock(
        framework=__version__,
        base_image=BASE_IMAGE,
        base_digest=base_digest,
        arch=host_arch(config),
        source_date_epoch=epoch,
        requirements_sha256=requirements_sha256(config),
        wheels=tuple(entries),
    )
    write_lock(config, lock)
    return lock
