"""Open the data keys, adopting only ciphertexts an attested manifest names.

A ciphertext is decrypted only when its SHA-256 is in ``CiphertextManifest``: a ``manifest`` this
image made, or the ``link`` its predecessor wrote at export naming this image (then stored as
``Chain/<n>`` and replaced by a manifest of its own). Missing data keys are generated under
``GenerationLock``, the manifest written before the ciphertexts; an untraceable ciphertext is a
tampering event (docs/threat-model.md, P2; the record layouts in docs/protocols.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from enclave_core.crypto.attested_record import (
    AttestedRecord,
    make_record,
    read_record,
    store_record,
    stored_kind,
)
from enclave_core.errors import CryptoError, EnclaveError, TamperingDetected
from enclave_core.plugin.parameters import create_parameter
from enclave_core.runtime.datakeys import DATA_KEY_BYTES, DataKey, data_keys
from enclave_core.runtime.manifest import (
    GENESIS,
    LOCK_PARAM,
    MANIFEST_PARAM,
    Manifest,
    blob_digest,
    chain_param,
)
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.trust import root_of

#: A generation lock older than this (seconds) was left by a boot that died; it may be taken.
LOCK_TTL_S = 60.0
#: How long a boot waits, in all, for another enclave's generation to finish.
WAIT_S = 90.0
POLL_S = 0.25


@dataclass
class View:
    """One read of the manifest and the ciphertexts, each data key classified."""

    manifest: Manifest | None
    blobs: dict[str, bytes] = field(default_factory=dict)
    ok: list[DataKey] = field(default_factory=list)  # present, listed, same digest
    missing: list[DataKey] = field(default_factory=list)  # absent (listed or not)
    suspect: list[tuple[DataKey, str]] = field(default_factory=list)  # present, not traceable


def _tamper(reason: str) -> TamperingDetected:
    logger.bind(error=reason).error("tampering detected: a ciphertext cannot be traced")
    return TamperingDetected(reason)


def _decode(value: str, param: str) -> bytes:
    try:
        blob = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        blob = b""
    if not blob:
        raise _tamper(f"parameter {param} is not base64 of a KMS ciphertext")
    return blob


def _check_self_manifest(state: RuntimeState, record: AttestedRecord) -> Manifest:
    body, verdict = record.body, state.key_verdict
    assert verdict is not None
    if record.pcr0 != state.pcr0 or body.get("pcr0") != state.pcr0:
        raise _tamper(f"{MANIFEST_PARAM} was made by another image (PCR0 {record.pcr0[:16]}…)")
    if body.get("app") != state.config.name or not verdict.names(str(body.get("key_id"))):
        raise _tamper(f"{MANIFEST_PARAM} is for another app or another key")
    previous = body.get("previous_pcr0")
    if (previous == GENESIS) == (verdict.kind == "migration"):
        raise _tamper(
            f"{MANIFEST_PARAM} says the predecessor is {previous!r}, but the key was made "
            f"{'by a migration' if verdict.kind == 'migration' else 'for a first boot'}"
        )
    return Manifest(
        record=record,
        entries=_entries(body),
        previous_pcr0=str(previous),
        chain_length=int(body.get("chain_length") or 0),
        last_link=body.get("last_link"),
    )


def check_link_for_me(state: RuntimeState, record: AttestedRecord) -> None:
    """A link must be the predecessor's export to this image, this key and this key's policy."""
    body, verdict = record.body, state.key_verdict
    assert verdict is not None
    if record.pcr0 != body.get("from_pcr0"):
        raise _tamper("the migration link was not made by the image it names as its author")
    if body.get("to_pcr0") != state.pcr0:
        raise _tamper(f"the migration link names another successor ({body.get('to_pcr0')!r})")
    if body.get("app") != state.config.name:
        raise _tamper("the migration link is for another app")
    if verdict.kind != "migration" or not verdict.names(str(body.get("key_id"))):
        raise _tamper("the migration link is for another key than the one in use")
    if body.get("policy_sha256") != verdict.policy_sha256:
        raise _tamper("the migration link names another policy than the key's")


def _entries(body: dict[str, Any]) -> dict[str, str]:
    entries = body.get("entries")
    if not isinstance(entries, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in entries.items()
    ):
        raise _tamper(f"{MANIFEST_PARAM}: its entries are not a map of names to digests")
    return dict(entries)


def read_manifest(state: RuntimeState) -> Manifest | None:
    """The verified ``CiphertextManifest``, or None when there is none."""
    assert state.secrets is not None
    kind = stored_kind(state.secrets, MANIFEST_PARAM)
    if kind is None and state.secrets.get(MANIFEST_PARAM) is None:
        return None
    if kind == "link":
        record = read_record(state.secrets, MANIFEST_PARAM, "link", root=root_of(state))
        assert record is not None
        check_link_for_me(state, record)
        return Manifest(
            record=record,
            entries=_entries(record.body),
            previous_pcr0=str(record.body["from_pcr0"]),
            chain_length=int(record.body.get("index") or 0),
            last_link=record.digest,
        )
    record = read_record(state.secrets, MANIFEST_PARAM, "manifest", root=root_of(state))
    if record is None:
        raise _tamper(f"{MANIFEST_PARAM} vanished while it was read")
    return _check_self_manifest(state, record)


def _view(state: RuntimeState, keys: list[DataKey]) -> View:
    assert state.secrets is not None and state.key_verdict is not None
    manifest = read_manifest(state)
    if manifest is None and state.key_verdict.kind == "migration":
        raise _tamper(
            f"the key {state.key_verdict.key_id} was made by a migration, but {MANIFEST_PARAM} is "
            "missing: the predecessor's link is needed to trace its ciphertexts"
        )
    view = View(manifest=manifest)
    entries = manifest.entries if manifest is not None else {}
    for key in keys:
        value = state.secrets.get(key.param)
        if value is None:
            view.missing.append(key)
            continue
        blob = _decode(value, key.param)
        view.blobs[key.name] = blob
        listed = entries.get(key.name)
        if listed is None:
            view.suspect.append((key, "no attested manifest names it"))
        elif listed != blob_digest(blob):
            view.suspect.append((key, "it is not the ciphertext the attested manifest names"))
        else:
            view.ok.append(key)
    return view


# ---------------------------------------------------------------------- the generation lock


def _lock_holder(state: RuntimeState) -> tuple[str, float] | None:
    """(owner, age in seconds) of the generation lock, or None."""
    assert state.secrets is not None
    raw = state.secrets.get(LOCK_PARAM)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return str(doc["owner"]), time.time() - float(doc["since"])
    except (ValueError, KeyError, TypeError):
        return "unreadable", LOCK_TTL_S + 1  # not ours to trust: treat it as stale


def _take_lock(state: RuntimeState, owner: str) -> bool:
    assert state.secrets is not None
    holder = _lock_holder(state)
    if holder is not None and holder[1] > LOCK_TTL_S:
        logger.bind(owner=holder[0]).warning("generation lock left by a boot that died; taken over")
        state.secrets.delete(LOCK_PARAM)
    value = json.dumps({"owner": owner, "since": time.time()})
    return create_parameter(state.secrets, LOCK_PARAM, value)


def _release_lock(state: RuntimeState, owner: str) -> None:
    assert state.secrets is not None
    holder = _lock_holder(state)
    if holder is not None and holder[0] == owner:
        state.secrets.delete(LOCK_PARAM)


# ---------------------------------------------------------------------- writing


def _own_manifest_body(
    state: RuntimeState, entries: dict[str, str], basis: Manifest | None
) -> dict[str, Any]:
    assert state.key_verdict is not None
    return {
        "app": state.config.name,
        "pcr0": state.pcr0,
        "key_id": state.key_verdict.key_id,
        "entries": dict(sorted(entries.items())),
        "previous_pcr0": basis.previous_pcr0 if basis is not None else GENESIS,
        "chain_length": basis.chain_length if basis is not None else 0,
        "last_link": basis.last_link if basis is not None else None,
    }


def _write_own_manifest(state: RuntimeState, body: dict[str, Any]) -> None:
    assert state.secrets is not None and state.attestation is not None
    store_record(state.secrets, MANIFEST_PARAM, make_record(state.attestation, "manifest", body))


def _keep_link(state: RuntimeState, manifest: Manifest) -> None:
    """Store the predecessor's link as ``Chain/<n>`` before our own manifest replaces it."""
    assert state.secrets is not None
    store_record(state.secrets, chain_param(manifest.chain_length), manifest.record.as_json())


def _generate(state: RuntimeState, view: View, cache: dict[str, bytes], owner: str) -> None:
    """Under the lock: make the missing data keys, list them, then store them."""
    assert state.secrets is not None and state.kms is not None and state.recipient is not None
    assert state.key_verdict is not None
    key_id = state.key_verdict.key_id
    entries = {k.name: blob_digest(view.blobs[k.name]) for k in view.ok}
    fresh: list[tuple[DataKey, bytes]] = []
    for key in view.missing:
        blob, plaintext = state.recipient.generate_data_key(
            state.kms, key_id, key.context, DATA_KEY_BYTES
        )
        digest = blob_digest(blob)
        entries[key.name], cache[digest] = digest, plaintext
        fresh.append((key, blob))
    if view.manifest is not None and view.manifest.is_link:
        _keep_link(state, view.manifest)
    # The manifest first: a ciphertext is never stored before the record that names it.
    _write_own_manifest(state, _own_manifest_body(state, entries, view.manifest))
    for key, blob in fresh:
        state.secrets.put(key.param, base64.b64encode(blob).decode("ascii"))
    logger.bind(key_id=key_id, generated=[k.name for k, _ in fresh]).info("data keys generated")


def open_data_keys(state: RuntimeState, *, wait_s: float = WAIT_S) -> dict[str, bytes]:
    """Every data key in plaintext (name -> 32 bytes), generating the missing ones.

    Sets ``state.manifest`` to the manifest in force afterwards (always this image's own).

    :raises TamperingDetected: a ciphertext no attested manifest traces (logged at ERROR).
    :raises EnclaveError: another enclave held the generation lock for longer than ``wait_s``.
    """
    assert state.secrets is not None and state.kms is not None and state.recipient is not None
    keys = data_keys(state.config)
    owner = uuid.uuid4().hex
    cache: dict[str, bytes] = {}
    deadline = time.monotonic() + wait_s
    while True:
        view = _view(state, keys)
        owner_of_lock, age = _lock_holder(state) or (owner, 0.0)
        if view.suspect or view.missing:
            if owner_of_lock != owner and age <= LOCK_TTL_S:
                # Another boot is between writing its manifest and its ciphertexts.
                if time.monotonic() > deadline:
                    raise EnclaveError(f"another enclave has held {LOCK_PARAM} for {age:.0f} s")
                time.sleep(POLL_S)
                continue
            if view.suspect:
                key, why = view.suspect[0]
                raise _tamper(f"parameter {key.param} ({key.what}) cannot be trusted: {why}")
            if not _take_lock(state, owner):
                continue  # somebody else took it; look again
            try:
                view = _view(state, keys)  # what is there now that we hold the lock
                if view.suspect:
                    continue
                if view.missing:
                    _generate(state, view, cache, owner)
            finally:
                _release_lock(state, owner)
            continue
        plaintexts = _open(state, view, keys, cache)
        assert view.manifest is not None  # every key is listed, so there is one
        if view.manifest.is_link:
            _keep_link(state, view.manifest)
            body = _own_manifest_body(state, view.manifest.entries, view.manifest)
            body["entries"] = {k.name: view.manifest.entries[k.name] for k in keys}
            _write_own_manifest(state, body)
            logger.bind(
                previous_pcr0=view.manifest.previous_pcr0, link=view.manifest.chain_length
            ).info("migrated ciphertexts adopted; this image's manifest written")
            view.manifest = read_manifest(state)
        state.manifest = view.manifest
        return plaintexts


def _open(
    state: RuntimeState, view: View, keys: list[DataKey], cache: dict[str, bytes]
) -> dict[str, bytes]:
    assert state.kms is not None and state.recipient is not None
    assert state.key_verdict is not None
    plaintexts: dict[str, bytes] = {}
    for key in keys:
        blob = view.blobs[key.name]
        plaintext = cache.get(blob_digest(blob))
        if plaintext is None:
            plaintext = state.recipient.decrypt(
                state.kms, state.key_verdict.key_id, blob, key.context
            )
        if len(plaintext) != DATA_KEY_BYTES:
            raise CryptoError(
                f"{key.what}: expected a {DATA_KEY_BYTES}-byte key, got {len(plaintext)}"
            )
        plaintexts[key.name] = plaintext
    return plaintexts
