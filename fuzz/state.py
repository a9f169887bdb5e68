"""What the enclave keeps, as a comparable snapshot, and which changes a request may make.

A snapshot maps names to digests (or small descriptions), never to secret values:

- ``object:<key>`` / ``secret:<name>``: the encrypted bytes of a stored object / dynamic secret
  record, read from the ``local`` storage directory (the ground truth: any change of a stored
  plaintext changes its ciphertext); ``leftover:<path>`` for a temporary file left behind;
- ``listed:<key>``: the keys the app API lists; ``secret-meta:<name>``: the app API's description of
  a dynamic secret (env var, created and updated times);
- ``param:<name>``: the parameters of the ``local`` secrets backend (the KMS key id, the encrypted
  static secrets and storage key, migration state); ``kms:<file>``: the ``local`` KMS's key files;
- ``static:<ENV_VAR>``: the static secret as the app sees it, hashed; ``info:<field>``: the KMS key
  id and PCR0 the runtime reports.

A request that was not a successful write must leave every name identical. A 2xx ``PUT`` or
``DELETE`` of the app API may change only the object or dynamic secret it named, and must actually
have written it (present after a PUT, absent after a DELETE). A 200 ``POST /v1/migration-key`` of
the control listener (the old enclave making a migration's key) may add one KMS key file and the
record's attestation document (``Attestations/<id>``) and must write ``Migration/KeyRecord``,
nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

#: The local storage backend's folder suffix and reserved prefix (plugins/local_storage.py).
DIR_SUFFIX = "%2F"
RESERVED = "#"
LOCK_NAME = "#lock"
SECRETS_PREFIX = "secrets/"

STORAGE_ITEM = "/v1/storage/{key}"
MIGRATION_KEY = "/v1/migration-key"
#: Parameter names carry the deployment's path (``param:/dev/hello/...``): matched by their end.
KEY_RECORD = "/Migration/KeyRecord"
SECRET_ITEM = "/v1/secrets/{name}"  # noqa: S105 - a route


def digest(data: bytes) -> str:
    """A short SHA-256 of ``data`` (enough to tell contents apart, never the content)."""
    return hashlib.sha256(data).hexdigest()[:32]


def storage_items(root: Path) -> dict[str, str]:
    """The objects under a ``local`` storage folder, named by key, with their ciphertext digest."""
    items: dict[str, str] = {}
    if not root.is_dir():
        return items
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).parts
        base = "".join(unquote(part.removesuffix(DIR_SUFFIX)) + "/" for part in rel)
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if name == LOCK_NAME and folder == str(root):
                continue
            data = path.read_bytes()
            if name.startswith(RESERVED):
                # A temporary file that outlived its request is a change too.
                items[f"leftover:{path.relative_to(root)}"] = digest(data)
                continue
            key = base + unquote(name)
            if key.startswith(SECRETS_PREFIX):
                items[f"secret:{key.removeprefix(SECRETS_PREFIX)}"] = digest(data)
            else:
                items[f"object:{key}"] = digest(data)
    return items


def parameter_items(path: Path) -> dict[str, str]:
    """The parameters of a ``local`` secrets file, named, with a digest of each value."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_bytes())
    return {f"param:{name}": digest(str(value).encode()) for name, value in doc.items()}


def file_items(folder: Path, prefix: str) -> dict[str, str]:
    """Every file under ``folder`` except lock files, with a digest of its bytes."""
    items: dict[str, str] = {}
    if not folder.is_dir():
        return items
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (".lock", LOCK_NAME):
            items[f"{prefix}:{path.relative_to(folder)}"] = digest(path.read_bytes())
    return items


@dataclass(frozen=True)
class Write:
    """What one request was allowed to change, and what it must have done if it changed anything."""

    allowed: frozenset[str] = frozenset()
    present: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()
    #: Names containing these markers may appear, at most so many of each (a key KMS named).
    new: tuple[tuple[str, int], ...] = ()
    #: Parameter names ending so may change (the deployment's path is not known here), and must
    #: be present afterwards.
    params_changed: frozenset[str] = frozenset()


NO_WRITE = Write()


def allowed_write(
    method: str, path_template: str, path_params: Mapping[str, object], status: int
) -> Write:
    """The change a response allows: a 2xx PUT/DELETE of one object or dynamic secret, or the
    key a 200 migration-key made."""
    if status == 200 and (method.upper(), path_template) == ("POST", MIGRATION_KEY):
        return Write(
            new=(("kms:", 1), ("/Attestations/", 1)), params_changed=frozenset({KEY_RECORD})
        )
    if not 200 <= status < 300 or method.upper() not in ("PUT", "DELETE"):
        return NO_WRITE
    if path_template == STORAGE_ITEM:
        name = str(path_params.get("key"))
        stored, listed = f"object:{name}", f"listed:{name}"
        names = frozenset({stored, listed})
    elif path_template == SECRET_ITEM:
        name = str(path_params.get("name"))
        stored, listed = f"secret:{name}", f"secret-meta:{name}"
        names = frozenset({stored, listed})
    else:
        return NO_WRITE
    if method.upper() == "PUT":
        return Write(allowed=names, present=names)
    return Write(allowed=names, absent=names)


def changes(before: dict[str, str], after: dict[str, str]) -> dict[str, str]:
    """Each name whose entry differs: ``added``, ``removed`` or ``modified``."""
    out: dict[str, str] = {}
    for name in sorted(set(before) | set(after)):
        if name not in before:
            out[name] = "added"
        elif name not in after:
            out[name] = "removed"
        elif before[name] != after[name]:
            out[name] = "modified"
    return out


def violations(before: dict[str, str], after: dict[str, str], write: Write) -> list[str]:
    """What is wrong about the difference between two snapshots, given the allowed write."""
    changed = changes(before, after)
    new: list[str] = []
    for marker, at_most in write.new:
        added = [n for n, how in changed.items() if how == "added" and marker in n]
        if len(added) > at_most:
            return [f"{len(added)} new {marker} entries, at most {at_most} allowed"]
        new += added

    def param_may_change(name: str) -> bool:
        return name.startswith("param:") and name.endswith(tuple(write.params_changed))

    problems = [
        f"{name} {how}"
        for name, how in changed.items()
        if name not in write.allowed and name not in new and not param_may_change(name)
    ]
    for suffix in sorted(write.params_changed):
        if not any(n.startswith("param:") and n.endswith(suffix) for n in after):
            problems.append(f"param:…{suffix} missing after a successful write")
    problems += [f"{name} missing after a successful PUT" for name in write.present - set(after)]
    problems += [
        f"{name} still there after a successful DELETE" for name in write.absent & set(after)
    ]
    return sorted(problems)
