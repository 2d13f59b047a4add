"""RELIABILITY.md cites tests by ``tests/<file>.py::<name>``: every citation must name a test
that exists, so the catalogue cannot point at a renamed or deleted one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_cited_test_exists():
    text = (REPO / "RELIABILITY.md").read_text()
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text))
    assert len(cited) > 40
    missing = [
        f"{path}::{name}"
        for path, name in sorted(cited)
        if not (REPO / path).is_file()
        or not re.search(rf"^def {name}\(", (REPO / path).read_text(), flags=re.MULTILINE)
    ]
    assert missing == []
