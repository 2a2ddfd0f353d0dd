"""The UI's scripts and styles stay small: under 250 KB gzipped in total, vendored ones included
(every page loads from the same few files, so this is an upper bound of what a page ships)."""

from __future__ import annotations

import gzip
from pathlib import Path

import bastion.ui

BUDGET_BYTES = 250 * 1024
STATIC = Path(bastion.ui.__file__).parent / "static"


def _gzipped(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9))


def test_scripts_and_styles_are_under_250_kb_gzipped() -> None:
    shipped = sorted(p for p in STATIC.rglob("*") if p.suffix in (".js", ".css"))
    names = {p.name for p in shipped}
    assert {"app.js", "app.css", "htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css"} <= names
    sizes = {p.relative_to(STATIC).as_posix(): _gzipped(p) for p in shipped}
    total = sum(sizes.values())
    assert total < BUDGET_BYTES, f"{total:,} bytes gzipped: {sizes}"
