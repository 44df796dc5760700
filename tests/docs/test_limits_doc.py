"""docs/operations/limits.md is checked against the code: every bound it names exists with the
default it states, every setting that bounds a caller is listed, and every reason it quotes is
one the service raises."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lakehouse.config import Settings

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "operations" / "limits.md"
# A table row whose first cell is a backticked name and whose second starts with a backticked value.
ROW = re.compile(r"^\| `([^`]+)` \| `([^`]*)`")


def _settings(model: type[BaseModel], prefix: str = "LAKEHOUSE_") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found.update(_settings(kind, f"{prefix}{name.upper()}__"))
        else:
            found[f"{prefix}{name.upper()}"] = field.default
    return found


def _rows() -> list[tuple[str, str]]:
    return [m.groups() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def _constant(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_named_setting_and_constant_has_the_stated_default() -> None:
    settings = _settings(Settings)
    rows = _rows()
    assert len(rows) > 30
    for name, stated in rows:
        actual = settings[name] if name.startswith("LAKEHOUSE_") else _constant(name)
        assert str(actual) == stated, f"{name}: the doc says {stated}, the code has {actual}"


_CALL_TIMEOUTS = {
    "LAKEHOUSE_REQUEST_TIMEOUT_SECONDS",
    "LAKEHOUSE_STREAM_TIMEOUT_SECONDS",
    "LAKEHOUSE_JOBS__TIMEOUT_SECONDS",
}


_CALL_TIMEOUTS = {
    "LAKEHOUSE_REQUEST_TIMEOUT_SECONDS",
    "LAKEHOUSE_STREAM_TIMEOUT_SECONDS",
    "LAKEHOUSE_JOBS__TIMEOUT_SECONDS",
}


def _bounds_a_caller(name: str) -> bool:
    return (
        "QUOTAS__" in name
        or "BUFFER" in name
        or re.search(r"(^LAKEHOUSE_|__)MAX_", name) is not None
        or "_LIMIT_" in name
        or name in _CALL_TIMEOUTS
    )


def test_every_setting_that_bounds_a_caller_is_listed() -> None:
    listed = {name for name, _ in _rows()}
    missing = sorted(n for n in _settings(Settings) if _bounds_a_caller(n) and n not in listed)
    assert not missing, f"docs/operations/limits.md does not list {missing}"


def test_every_quoted_reason_is_raised_by_the_service() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "lakehouse").rglob("*.py"))
    reasons = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", DOC.read_text()))
    reasons -= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"}
    reasons = {r for r in reasons if not r.startswith("LAKEHOUSE_")}
    assert reasons
    # A reason is a string the service raises; a row error code is a member of an enum.
    unknown = sorted(r for r in reasons if f'"{r}"' not in source and f"{r} = " not in source)
    assert not unknown, f"{DOC.name} quotes reasons the service never raises: {unknown}"


def test_the_metrics_it_names_exist() -> None:
    source = (ROOT / "lakehouse" / "metrics.py").read_text()
    for metric in re.findall(r"`(lakehouse_[a-z_]+)", DOC.read_text()):
        assert f'"{metric}"' in source, metric
