"""docs/errors.md is checked against the code: every reason the service raises is in its table,
under a status code gRPC has, and the table names no reason the service never raises.

The reasons are read from the code's syntax tree, wherever a reason is set: a ``reason=``
argument, a positional argument in a ``reason`` parameter's place, an assignment to anything
named ``*reason*`` (a class's default, ``reason = "A" if ... else "B"``, a ``*_REASONS`` map's
values), a parameter's default; names are resolved to the module-level string constants they
hold (``reason=NOT_ALLOWED`` with ``NOT_ALLOWED = "SQL_NOT_ALLOWED"`` elsewhere).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "errors.md"
#: A table row: the code, then the reasons, each backticked.
ROW = re.compile(r"^\| `([A-Z_]+)` \| ((?:`[A-Z0-9_]+`(?:, )?)+) \|")
#: A reason spelt like a status code is that code's generic reason (an error class's default,
#: for errors with no more specific one): the page says so once instead of per row.
GENERIC = {c.name for c in grpc.StatusCode}
#: The default of the quota error class, which every raise overrides (namespaces, tables).
NEVER_SENT = {"QUOTA_EXCEEDED"}

REASON_TEXT = re.compile(r"^[A-Z][A-Z0-9_]+$")
#: Reasons set in ways the scanner must keep finding (a reason= of an imported constant, a
#: positional reason, both branches of a conditional, a map's values, a bare REASON constant).
TRICKY = {
    "SQL_NOT_ALLOWED",
    "NOT_IMPLEMENTED",
    "RATE_LIMITED",
    "INVALID_ROW_FILTER",
    "CURSOR_EXPIRED",
    "CURSOR_NOT_IN_LINEAGE",
    "ENGINE_UNAVAILABLE",
    "JOB_QUOTA_EXCEEDED",
}


def _trees() -> list[ast.Module]:
    return [ast.parse(p.read_text()) for p in sorted((ROOT / "lakehouse").rglob("*.py"))]


def _strings(node: ast.expr | None, names: dict[str, set[str]]) -> set[str]:
    """The reason strings an expression may evaluate to, as far as the syntax tells."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} if REASON_TEXT.match(node.value) else set()
    if isinstance(node, ast.Name):
        return names.get(node.id, set())
    if isinstance(node, ast.Attribute):
        return names.get(node.attr, set())
    if isinstance(node, ast.IfExp):
        return _strings(node.body, names) | _strings(node.orelse, names)
    if isinstance(node, ast.BoolOp):
        return set().union(*(_strings(v, names) for v in node.values))
    if isinstance(node, ast.Subscript):  # MAP[key]: any of the map's values
        return _strings(node.value, names)
    if isinstance(node, ast.Dict):
        return set().union(*(_strings(v, names) for v in node.values))
    if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
        return set().union(*(_strings(v, names) for v in node.elts))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
        return _strings(node.args[0], names)  # frozenset({...}), set(...)
    return set()


def _assignments(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, (ast.Name, ast.Attribute)):
                    yield (target.id if isinstance(target, ast.Name) else target.attr), node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
            if isinstance(target, (ast.Name, ast.Attribute)):
                yield (target.id if isinstance(target, ast.Name) else target.attr), node.value


def _reasons_in_code() -> set[str]:
    trees = _trees()
    names: dict[str, set[str]] = {}
    for tree in trees:  # module- and class-level constants, by name
        for name, value in _assignments(tree):
            if name.isupper() and (held := _strings(value, {})):
                names.setdefault(name, set()).update(held)
    # Where a function takes its reason positionally (self/cls not counted).
    positions: dict[str, int] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
                params = [p for p in params if p not in ("self", "cls")]
                if "reason" in params:
                    positions[node.name] = params.index("reason")
    found: set[str] = set()
    for tree in trees:
        for name, value in _assignments(tree):
            if "reason" in name.lower():
                found |= _strings(value, names)
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "reason":
                found |= _strings(node.value, names)
            elif isinstance(node, ast.arguments):
                params = [*node.posonlyargs, *node.args]
                defaults = zip(
                    params[len(params) - len(node.defaults) :], node.defaults, strict=True
                )
                kw_defaults = zip(node.kwonlyargs, node.kw_defaults, strict=True)
                for arg, default in (*defaults, *kw_defaults):
                    if default is not None and "reason" in arg.arg.lower():
                        found |= _strings(default, names)
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                index = positions.get(called)
                if index is not None and index < len(node.args):
                    found |= _strings(node.args[index], names)
    return found


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
    raised = _reasons_in_code()
    assert len(raised) > 80 and raised >= TRICKY, sorted(TRICKY - raised)
    missing = sorted(raised - set(_table()) - GENERIC - NEVER_SENT)
    assert not missing, f"{DOC.name} does not list the reasons {missing}"


def test_every_reason_in_the_table_is_raised_by_the_service() -> None:
    source = _source()
    unknown = sorted(r for r in _table() if f'"{r}"' not in source)
    assert not unknown, f"{DOC.name} lists reasons the service never raises: {unknown}"
