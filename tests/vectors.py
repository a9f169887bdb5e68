"""Where the project's own test vectors live (see tests/data/nitro/SOURCES.md for their origin)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
NITRO = DATA / "nitro"
