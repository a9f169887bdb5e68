"""The project's copies of public test vectors are the files SOURCES.md names, byte for byte."""

from __future__ import annotations

import hashlib
import re
import zipfile

from tests.vectors import NITRO

#: A table row of SOURCES.md: the file in backticks, then its SHA-256 in backticks.
ROW = re.compile(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|", re.MULTILINE)


def listed() -> dict[str, str]:
    return dict(ROW.findall((NITRO / "SOURCES.md").read_text(encoding="utf-8")))


def test_every_vector_is_listed_with_its_hash_and_matches_it() -> None:
    rows = listed()
    on_disk = {
        str(p.relative_to(NITRO))
        for p in NITRO.rglob("*")
        if p.is_file() and p.name != "SOURCES.md"
    }
    assert set(rows) == on_disk
    for name, digest in rows.items():
        assert hashlib.sha256((NITRO / name).read_bytes()).hexdigest() == digest, name


def test_the_root_pem_is_the_one_in_the_published_zip() -> None:
    with zipfile.ZipFile(NITRO / "AWS_NitroEnclaves_Root-G1.zip") as archive:
        assert archive.read("root.pem") == (NITRO / "root-G1.pem").read_bytes()
