"""The base image's digest from its registry (Docker Registry HTTP API v2), for ``enclave lock``.

``python:3.11-slim-bookworm`` names whatever Docker Hub serves today; ``name@sha256:…`` names one
image for ever. :func:`resolve_digest` asks the registry for the manifest (the multi-platform
index when there is one: its digest covers every architecture) and returns the digest the
registry reports, after an anonymous bearer token when the registry asks for one.
``ENCLAVE_REGISTRY_URL`` points it at a mirror (tests use a local one).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from enclave_core.errors import EnclaveError, ValidationError

DOCKER_HUB = "registry-1.docker.io"
REGISTRY_ENV = "ENCLAVE_REGISTRY_URL"
TIMEOUT_S = 30.0
#: Manifest types asked for, the multi-platform ones first.
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REFERENCE = re.compile(
    r"^(?:(?P<host>[a-z0-9.-]+(?::\d+)?)/)?(?P<repo>[a-z0-9._/-]+):(?P<tag>[\w][\w.-]{0,127})$"
)


@dataclass(frozen=True)
class ImageReference:
    """``[host/]repository:tag``, with Docker Hub's defaults filled in."""

    registry: str
    repository: str
    tag: str


def parse_reference(reference: str) -> ImageReference:
    """Split ``python:3.11-slim`` (Docker Hub's ``library/python``) or ``host/repo:tag``.

    :raises ValidationError: not ``name:tag`` (a digest is already pinned: nothing to resolve).
    """
    match = _REFERENCE.match(reference)
    if match is None:
        raise ValidationError(f"base image {reference!r} is not NAME:TAG")
    host, repository = match["host"], match["repo"]
    if host is None or "." not in host and ":" not in host and host != "localhost":
        repository = f"{host}/{repository}" if host else repository
        host = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    return ImageReference(host, repository, match["tag"])


def resolve_digest(reference: str, *, registry_url: str | None = None) -> str:
    """The ``sha256:…`` digest the registry serves for ``reference`` now.

    :param registry_url: ``http(s)://host[:port]`` to ask instead (default:
        ``$ENCLAVE_REGISTRY_URL``, or the reference's registry over HTTPS).
    :raises EnclaveError: the registry cannot be reached, refuses, or reports no valid digest.
    """
    ref = parse_reference(reference)
    base = (registry_url or os.environ.get(REGISTRY_ENV) or f"https://{ref.registry}").rstrip("/")
    url = f"{base}/v2/{ref.repository}/manifests/{ref.tag}"
    headers = {"Accept": ACCEPT}
    try:
        digest = _head(url, headers)
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise _failed(reference, url, f"HTTP {exc.code}") from None
        token = _token(reference, exc.headers.get("WWW-Authenticate", ""))
        try:
            digest = _head(url, {**headers, "Authorization": f"Bearer {token}"})
        except urllib.error.HTTPError as again:
            raise _failed(reference, url, f"HTTP {again.code}") from None
    except OSError as exc:
        raise _failed(reference, url, str(exc)) from None
    if not DIGEST.match(digest):
        raise _failed(reference, url, f"no sha256 digest in its answer ({digest[:80]!r})")
    return digest


def _web(url: str) -> str:
    """``url`` if it is http(s): a registry's answers never send us to a file or other scheme."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise OSError(f"not an http(s) URL: {url[:80]!r}")
    return url


def _head(url: str, headers: dict[str, str]) -> str:
    request = urllib.request.Request(_web(url), headers=headers, method="HEAD")  # noqa: S310
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
        return str(response.headers.get("Docker-Content-Digest", ""))


def _token(reference: str, challenge: str) -> str:
    """An anonymous pull token from the realm a ``Bearer`` challenge names."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = fields.pop("realm", "")
    if not challenge.lower().startswith("bearer") or not realm:
        raise EnclaveError(f"the registry of {reference} asks for credentials enclave lock has not")
    url = realm + "?" + urllib.parse.urlencode(fields)
    try:
        with urllib.request.urlopen(_web(url), timeout=TIMEOUT_S) as response:  # noqa: S310
            doc = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise EnclaveError(f"getting a pull token for {reference} failed: {exc}") from None
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise EnclaveError(f"the token service of {reference} answered no token")
    return token


def _failed(reference: str, url: str, why: str) -> EnclaveError:
    return EnclaveError(
        f"resolving the digest of {reference} at {url} failed: {why} (without the network, "
        "give it: enclave lock --base-digest sha256:…)"
    )
