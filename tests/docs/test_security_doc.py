"""The role table of docs/security.md is checked against the server's permission table: each
role's row names exactly the permissions the role has."""

from __future__ import annotations

import re
from pathlib import Path

from lakehouse.server.permissions import ROLE_ORDER, ROLE_PERMISSIONS, Permission

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "security.md"
#: ``| `role` | may | RPCs |``
ROW = re.compile(r"^\| `(viewer|developer|admin)` \| ([^|]+) \|")


def _rows() -> dict[str, str]:
    lines = DOC.read_text().splitlines()
    return {m.group(1): m.group(2) for line in lines if (m := ROW.match(line))}


def test_each_role_row_names_exactly_its_permissions() -> None:
    rows = _rows()
    assert list(rows) == list(ROLE_ORDER)
    known = {p.value for p in Permission}
    below: set[str] = set()
    for role in ROLE_ORDER:
        may = rows[role]
        named = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", may))
        assert named <= known, f"{role}: no such permission {sorted(named - known)}"
        granted = {p.value for p in ROLE_PERMISSIONS[role]}
        if may.startswith("everything"):
            assert granted == known, f"{role}: the doc says everything"
            assert named == known - below, f"{role}: the doc should list {sorted(known - below)}"
        else:
            inherited = below if re.match(r"(viewer|developer) \+", may) else set()
            assert inherited | named == granted, f"{role}: the doc says {sorted(inherited | named)}"
        below = granted
