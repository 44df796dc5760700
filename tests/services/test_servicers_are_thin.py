"""Servicers reach only down: no module of ``lakehouse/services/`` imports adapters or transport.

A servicer decodes a request to core values, makes one core call and builds the response;
what it needs from storage comes through core, and the wiring (``lakehouse/server/``) hands
it the core objects. The imports are read from the source (ast), so an import inside a
function, under ``TYPE_CHECKING`` or relative counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lakehouse.services

FORBIDDEN = ("lakehouse.adapters", "lakehouse.server")


def _modules() -> dict[str, Path]:
    (folder,) = lakehouse.services.__path__
    return {f"lakehouse.services.{p.stem}": p for p in sorted(Path(folder).glob("*.py"))}


def _imports(module: str, path: Path) -> set[tuple[str, str]]:
    """Every (module, name) the file imports; name is empty for ``import x.y``."""
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # ``from lakehouse import adapters`` imports a forbidden package by its name
            found.update((base, alias.name) for alias in node.names)
    return found


def _reaches(imported: str, name: str, forbidden: str) -> bool:
    full = f"{imported}.{name}" if name else imported
    return any(m == forbidden or m.startswith(f"{forbidden}.") for m in (imported, full))


def test_there_are_servicer_modules_to_check() -> None:
    assert {"lakehouse.services.ingest_service", "lakehouse.services.convert"} <= set(_modules())


def test_no_servicer_module_imports_adapters_or_transport() -> None:
    offending = []
    for module, path in _modules().items():
        for imported, name in sorted(_imports(module, path)):
            if not any(_reaches(imported, name, forbidden) for forbidden in FORBIDDEN):
                continue
            offending.append(f"{module} imports {imported} {name}".rstrip())
    assert offending == [], "servicers must reach adapters and transport through core"


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "import lakehouse.server.app\n"
        "from lakehouse import adapters\n"
        "from ..adapters.iceberg.catalog import IcebergCatalog\n"
        "def f() -> None:\n"
        "    from lakehouse.server import auth\n"
    )
    found = _imports("lakehouse.services.probe", source)
    reaching = sorted(
        (imported, name)
        for imported, name in found
        if any(_reaches(imported, name, forbidden) for forbidden in FORBIDDEN)
    )
    assert reaching == [
        ("lakehouse", "adapters"),
        ("lakehouse.adapters.iceberg.catalog", "IcebergCatalog"),
        ("lakehouse.server", "auth"),
        ("lakehouse.server.app", ""),
    ]
