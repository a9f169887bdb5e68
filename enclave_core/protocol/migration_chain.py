"""The migration chain: attested links from the first image to the one running, checked as one.

Each migration's old enclave writes a ``link`` record naming both images, the new key and the
ciphertexts it exported; :func:`verify_links` is what the runtime and ``enclave verify`` both
check the chain with (docs/protocols.md, "The migration chain").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from enclave_core.crypto.attested_record import AttestedRecord, parse_record
from enclave_core.errors import AttestationError, TamperingDetected

GENESIS = "genesis"
LINK_FIELDS = (
    "app",
    "entries",
    "from_pcr0",
    "from_pcr8",
    "index",
    "key_arn",
    "key_id",
    "migration",
    "policy_sha256",
    "previous_link",
    "to_pcr0",
    "to_pcr8",
)


@dataclass
class ChainReport:
    """The links that verified and connect, oldest first, and whether they reach the genesis."""

    links: list[AttestedRecord] = field(default_factory=list)
    complete: bool = True
    problem: str | None = None

    def as_json(self) -> list[dict[str, Any]]:
        """The links as ``/v1/enclave-info`` shows them (the stored records)."""
        return [link.as_json() for link in self.links]


def parse_link(record: Any, *, root: x509.Certificate) -> AttestedRecord:
    """Verify one link record (``{"kind", "body", "attestation"}``); AttestationError naming
    what is wrong."""
    try:
        link = parse_record(record, "link", root=root)
    except TamperingDetected as exc:
        raise AttestationError(f"chain link: {exc}") from None
    check_link(link)
    return link


def check_link(link: AttestedRecord) -> None:
    """The body of a verified link has every field, and names the image that made it."""
    body = link.body
    missing = [name for name in LINK_FIELDS if name not in body]
    if missing:
        raise AttestationError(f"chain link: the body lacks {', '.join(missing)}")
    if body["from_pcr0"] != link.pcr0:
        raise AttestationError(
            "chain link: its document was made by another image than the one it names "
            f"({link.pcr0[:16]}…, not {str(body['from_pcr0'])[:16]}…)"
        )
    if not isinstance(body["index"], int) or body["index"] < 1:
        raise AttestationError("chain link: its index is not a positive whole number")


def verify_links(
    records: Sequence[Any],
    *,
    root: x509.Certificate,
    pcr0: str,
    key_id: str | None,
    last_link: str | None = None,
    require_start: bool = True,
) -> ChainReport:
    """Check a chain of stored link records, oldest first, ending at the running image.

    Each link must verify against ``root`` at its own timestamp, be made by the image it names,
    follow the one before it (``index``, ``previous_link``, ``from_pcr0`` = the previous
    ``to_pcr0``); the last must name ``pcr0`` as its successor and ``key_id`` as its key (any
    key id or ARN it lists), and have the digest ``last_link`` when given.

    :param require_start: the first record must be link 1 (the whole chain); otherwise it may
        start later (a chain whose oldest links are lost), which is reported as incomplete.
    :raises AttestationError: naming the first link that fails.
    """
    report = ChainReport()
    previous: AttestedRecord | None = None
    for record in records:
        link = parse_link(record, root=root)
        body = link.body
        if previous is None:
            if body["index"] != 1:
                if require_start:
                    raise AttestationError(
                        f"chain link: the oldest link is number {body['index']}, not 1"
                    )
                report.complete = False
                report.problem = f"links 1 to {body['index'] - 1} cannot be shown"
            elif body["previous_link"] is not None:
                raise AttestationError("chain link 1 names a link before it")
        else:
            if body["index"] != previous.body["index"] + 1:
                raise AttestationError(f"chain link {body['index']} does not follow its neighbour")
            if body["previous_link"] != previous.digest:
                raise AttestationError(
                    f"chain link {body['index']} does not name link {previous.body['index']} "
                    "as the one before it"
                )
            if body["from_pcr0"] != previous.body["to_pcr0"]:
                raise AttestationError(
                    f"chain link {body['index']} was made by another image than link "
                    f"{previous.body['index']} handed over to"
                )
        previous = link
        report.links.append(link)
    if previous is not None:
        body = previous.body
        if body["to_pcr0"] != pcr0:
            raise AttestationError(
                f"chain link {body['index']} hands over to PCR0 {str(body['to_pcr0'])[:16]}…, "
                f"not the running image's {pcr0[:16]}…"
            )
        if key_id is not None and key_id not in (body["key_id"], body["key_arn"]):
            raise AttestationError(
                f"chain link {body['index']} is for key {body['key_id']}, not {key_id}"
            )
        if last_link is not None and previous.digest != last_link:
            raise AttestationError(
                f"chain link {body['index']} is not the link this enclave's manifest names"
            )
    return report
