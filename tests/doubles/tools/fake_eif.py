"""The fake nitro-cli's ``build-enclave`` and ``describe-eif`` (imported by its script).

A fake EIF is a small placeholder file: the magic line :data:`MAGIC`, then one JSON line with its
measurements and build details, so ``describe-eif`` and ``run-enclave`` can read them back.

Measurements follow the real tool's shape (``{"Measurements": {"HashAlgorithm": "Sha384 { ... }",
"PCR0", "PCR1", "PCR2"[, "PCR8"]}}``, 96 hex digits each) and depend on what they measure: PCR0
to PCR2 on the Docker image's id (from the fake docker's state when it built the image, so a
changed app gives a new PCR0), PCR8 on the signing certificate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

MAGIC = b".eif fake-nitro-cli placeholder\n"
EIF_VERSION = 4
Fail = Callable[..., NoReturn]


def _pcr(label: str, seed: str) -> str:
    return hashlib.sha384(f"{label}:{seed}".encode()).hexdigest()


def _image_id(uri: str, fail: Fail) -> str:
    """The image's id from the fake docker's state; E50 when that state lacks the image."""
    state_file = os.environ.get("FAKE_DOCKER_STATE")
    if not state_file:
        return "sha256:" + hashlib.sha256(uri.encode()).hexdigest()  # "pulled" from a registry
    images: dict[str, Any] = {}
    if Path(state_file).exists():
        images = json.loads(Path(state_file).read_text()).get("images", {})
    image = images.get(uri)
    if image is None:
        fail(
            "build-enclave",
            "E50",
            detail=f"Failed to pull docker image: docker image {uri} not found locally or in a "
            "registry",
        )
    return str(image["Id"])


def read_fake_eif(path: Path) -> dict[str, Any] | None:
    """The details stored in a fake EIF, or None when ``path`` is not one."""
    try:
        with path.open("rb") as handle:
            if handle.readline() != MAGIC:
                return None
            doc: dict[str, Any] = json.loads(handle.readline())
            return doc
    except (OSError, ValueError):
        return None


def build_enclave(args: argparse.Namespace, fail: Fail) -> None:
    """``build-enclave --docker-uri URI --output-file PATH`` (+ ``--signing-certificate C
    --private-key K``)."""
    command = "build-enclave"
    if bool(args.signing_certificate) != bool(args.private_key):
        missing = "private-key" if args.signing_certificate else "signing-certificate"
        fail(command, "E01", missing)
    sys.stderr.write("Start building the Enclave Image...\n")
    image_id = _image_id(args.docker_uri, fail)
    sys.stderr.write("Using the locally available Docker image...\n")
    measurements = {
        "HashAlgorithm": "Sha384 { ... }",
        **{f"PCR{i}": _pcr(f"PCR{i}", image_id) for i in (0, 1, 2)},
    }
    signing: dict[str, Any] | None = None
    if args.signing_certificate:
        for option, name in ((args.signing_certificate, "Open"), (args.private_key, "Open")):
            if not Path(option).is_file():
                fail(command, "E19", option, name, detail=f"Could not open {option}")
        cert = Path(args.signing_certificate).read_bytes()
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            fail(command, "E48", detail="Failed to create EIF image: invalid signing certificate")
        measurements["PCR8"] = hashlib.sha384(cert).hexdigest()
        signing = {"IssuerName": {"commonName": "fake"}, "Algorithm": "ecdsa-with-SHA384"}
    output = Path(args.output_file)
    try:
        with output.open("wb") as handle:
            details = {"Measurements": measurements, "DockerUri": args.docker_uri}
            if signing:
                details["SigningCertificate"] = signing
            handle.write(MAGIC + json.dumps(details).encode() + b"\n")
    except OSError:
        fail(command, "E19", str(output), "Open", detail="Could not create output file")
    sys.stderr.write("Enclave Image successfully created.\n")
    print(json.dumps({"Measurements": measurements}, indent=2))


def describe_eif(args: argparse.Namespace, fail: Fail) -> None:
    """``describe-eif --eif-path P``: the stored measurements and build details."""
    details = read_fake_eif(Path(args.eif_path))
    if details is None:
        fail("describe-eif", "E35", detail="Failed to initialize EIF reader: not a (fake) EIF")
    signed = "SigningCertificate" in details
    name, _, version = str(details.get("DockerUri", "")).partition(":")
    out: dict[str, Any] = {
        "EifVersion": EIF_VERSION,
        "Measurements": details["Measurements"],
        "IsSigned": signed,
        "CheckCRC": True,
        "ImageName": name,
        "ImageVersion": version or "latest",
        "Metadata": {"DockerInfo": {"RepoTags": [details.get("DockerUri")]}},
    }
    if signed:
        out["SigningCertificate"] = details["SigningCertificate"]
        out["SignatureCheck"] = True
    print(json.dumps(out, indent=2))
