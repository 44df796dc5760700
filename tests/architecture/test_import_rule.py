"""The layers of ``lakehouse/`` import downwards only (docs/development/architecture.md).

transport (``server/``) -> servicers (``services/``) -> core -> domain; adapters -> domain;
``config``, ``metrics``, ``logs``, ``memory``, ``blocking`` (the thread pool for blocking
calls) and ``deadlines`` (the current call's deadline) are shared by every layer and import
only the domain. Only the wiring (``server/app.py``, ``server/worker_app.py``,
``server/job_runtime.py``, ``server/sql_engines.py``) names concrete adapters. The test
reads every import of every module (function-level and ``TYPE_CHECKING`` ones too: a
reader must follow them all).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lakehouse"

SHARED = {
    "lakehouse.blocking",
    "lakehouse.config",
    "lakehouse.deadlines",
    "lakehouse.logs",
    "lakehouse.memory",
    "lakehouse.metrics",
}
WIRING = {
    "lakehouse.server.app",
    "lakehouse.server.worker_app",
    "lakehouse.server.job_runtime",
    "lakehouse.server.sql_engines",
}

#: What each layer may import (besides itself and third-party code).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "shared": {"domain"},
    "adapters": {"domain", "shared"},
    "core": {"domain", "shared"},
    "servicers": {"core", "domain", "shared", "contract"},
    "transport": {"servicers", "core", "domain", "shared", "contract"},
    "wiring": {"servicers", "core", "domain", "shared", "contract", "adapters", "transport"},
    "client": {"contract"},
    "entry": {
        "wiring",
        "transport",
        "servicers",
        "core",
        "domain",
        "shared",
        "adapters",
        "contract",
        "client",
    },
}


def layer(module: str) -> str:
    """The layer a ``lakehouse`` module belongs to."""
    if module in SHARED:
        return "shared"
    if module in WIRING:
        return "wiring"
    if module == "lakehouse.v1" or module.startswith("lakehouse.v1."):
        return "contract"
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return {
        "domain": "domain",
        "adapters": "adapters",
        "core": "core",
        "services": "servicers",
        "server": "transport",
        "client": "client",
        "cli": "entry",
        "__main__": "entry",
    }.get(top, "unknown")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every ``lakehouse`` module ``path`` imports (``from lakehouse.x import y`` counts
    ``lakehouse.x.y`` when that is a module, else ``lakehouse.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lakehouse"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("lakehouse"):
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / candidate.replace(".", "/")
                if as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists():
                    found.add(candidate)
                else:
                    found.add(node.module)
    return found


def violations() -> set[tuple[str, str]]:
    bad: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        importer = module_name(path)
        mine = layer(importer)
        for imported in imports(path):
            theirs = layer(imported)
            if theirs == mine or theirs in ALLOWED[mine]:
                continue
            if mine == "shared" and theirs == "shared":
                continue
            bad.add((importer, imported))
    return bad


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = sorted(
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
        and layer(module_name(p)) == "unknown"
        and module_name(p) != "lakehouse"
    )
    assert unplaced == [], f"modules outside every layer: {unplaced}"


def test_no_module_imports_from_a_layer_above_it() -> None:
    found = sorted(violations())
    assert found == [], "imports that break the layer rule:\n" + "\n".join(
        f"  {a} ({layer(a)}) imports {b} ({layer(b)})" for a, b in found
    )


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("lakehouse.domain.errors", "domain"),
        ("lakehouse.core.ingest", "core"),
        ("lakehouse.adapters.iceberg.catalog", "adapters"),
        ("lakehouse.services.convert", "servicers"),
        ("lakehouse.server.interceptors", "transport"),
        ("lakehouse.server.app", "wiring"),
        ("lakehouse.config", "shared"),
        ("lakehouse.v1.table_service_pb2", "contract"),
    ],
)
def test_layers_are_read_from_folder_names(module: str, expected: str) -> None:
    assert layer(module) == expected
