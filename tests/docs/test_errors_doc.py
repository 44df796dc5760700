"""docs/errors.md is checked against the code: every reason the service raises is in its table,
under a status code gRPC has, and the table names no reason the service never raises."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "errors.md"
#: A table row: the code, then the reasons, each backticked.
ROW = re.compile(r"^\| `([A-Z_]+)` \| ((?:`[A-Z0-9_]+`(?:, )?)+) \|")
#: Where the code sets a reason: ``reason="X"``, ``reason = "X"`` (a class's default), or a
#: module constant whose name ends in ``_REASON``. (A reason set some other way is still
#: checked the other way round: the table may name only strings the code holds.)
RAISED = re.compile(
    r'\breason(?:: str)?\s*=\s*"([A-Z][A-Z0-9_]+)"|_REASON\b[^=\n]*=\s*"([A-Z][A-Z0-9_]+)"'
)
#: A reason spelt like a status code is that code's generic reason (an error class's default,
#: for errors with no more specific one): the page says so once instead of per row.
GENERIC = {c.name for c in grpc.StatusCode}
#: The default of the quota error class, which every raise overrides (namespaces, tables).
NEVER_SENT = {"QUOTA_EXCEEDED"}


def _table() -> dict[str, str]:
    """Reason -> the status code of its row."""
    found: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        if match := ROW.match(line):
            for reason in re.findall(r"`([A-Z0-9_]+)`", match.group(2)):
                found[reason] = match.group(1)
    return found


def _source() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "lakehouse").rglob("*.py")))


def test_every_code_in_the_table_is_a_grpc_status_code() -> None:
    codes = set(_table().values())
    assert len(codes) >= 12
    assert codes <= {c.name for c in grpc.StatusCode}


def test_every_reason_the_service_sets_is_in_the_table() -> None:
    raised = {a or b for a, b in RAISED.findall(_source())}
    assert len(raised) > 40
    missing = sorted(raised - set(_table()) - GENERIC - NEVER_SENT)
    assert not missing, f"{DOC.name} does not list the reasons {missing}"


def test_every_reason_in_the_table_is_raised_by_the_service() -> None:
    source = _source()
    unknown = sorted(r for r in _table() if f'"{r}"' not in source)
    assert not unknown, f"{DOC.name} lists reasons the service never raises: {unknown}"
