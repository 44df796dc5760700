"""DuckDB's own parser, for the statement rules: parse trees, the tables they name, tokens.

``table_refs`` walks DuckDB's parse tree of a SELECT for every table it names and refuses
what cannot be a lakehouse table (a file path, a URL, a three-part name, time travel), table
functions that read files and functions that read the engine's settings; ``token_positions``
is DuckDB's tokenizer, for the statements DuckDB does not serialise (INSERT, DELETE,
UPDATE). Every error is an ``InvalidArgument`` on field ``sql.statement`` (``invalid``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import duckdb

from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.names import MAX_NAME_LENGTH

STATEMENT_FIELD = "sql.statement"
"""The request field every statement error is reported against."""

NOT_ALLOWED = "SQL_NOT_ALLOWED"
"""The ``ErrorInfo`` reason of a statement the engine refuses to run (not a syntax error)."""

_MESSAGE_LIMIT = 2000
#: A name part the lakehouse can hold, unquoted (a namespace is also a DuckDB schema name).
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class TableRef:
    """A table name as the statement wrote it (lower-cased parts)."""

    parts: tuple[str, ...]
    shown: str
    maybe_cte: bool = False


def invalid(description: str, *, reason: str | None = None) -> InvalidArgument:
    """The statement's fault, on field ``sql.statement`` (a long description is cut)."""
    if len(description) > _MESSAGE_LIMIT:
        description = description[:_MESSAGE_LIMIT] + "..."
    return InvalidArgument.field(STATEMENT_FIELD, description, reason=reason)


def serialize(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, Any]:
    """DuckDB's parse tree of a SELECT (parse only: no table needs to exist).

    Raises:
        InvalidArgument: The SELECT does not parse.
    """
    try:
        rows = con.sql("SELECT json_serialize_sql($1)", params=[query]).fetchall()
    except duckdb.Error as exc:
        raise invalid(str(exc)) from exc
    tree: dict[str, Any] = json.loads(rows[0][0])
    if tree.get("error"):
        raise invalid(str(tree.get("error_message", "the statement cannot be analysed")))
    return tree


def table_refs(con: duckdb.DuckDBPyConnection, query: str) -> tuple[TableRef, ...]:
    """Every table the query names, from DuckDB's parse tree.

    The walk is generic (any dict that is a BASE_TABLE), so subqueries, joins, set
    operations and expressions are covered whatever node types hold them. A one-part name
    that is also the name of a common table expression may be that CTE: it is read if the
    lakehouse has such a table and skipped otherwise (DuckDB's scoping decides).
    """
    tree = serialize(con, query)
    tables: list[dict[str, Any]] = []
    ctes: set[str] = set()
    pending: list[Any] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if node.get("type") == "BASE_TABLE" and "table_name" in node:
            tables.append(node)
        if node.get("type") == "SHOW_REF" and node.get("table_name"):
            # SHOW / DESCRIBE / SUMMARIZE of a name: one rule with FROM, so a path is
            # refused here whichever statement form carries it.
            tables.append(node)
        if node.get("type") == "TABLE_FUNCTION":
            _check_table_function(node)
        if node.get("class") == "FUNCTION":
            _check_scalar_function(node)
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(str(entry.get("key", "")).lower() for entry in cte_map.get("map", []))
        pending.extend(node.values())
    refs: dict[tuple[str, ...], TableRef] = {}
    for table in tables:
        names = [table.get("catalog_name") or "", table.get("schema_name") or ""]
        parts = tuple(p for p in (*names, table["table_name"]) if p)
        shown = ".".join(parts)
        if table.get("catalog_name"):
            raise invalid(
                f"table {shown!r}: tables are named namespace.table (no catalog part)",
                reason=NOT_ALLOWED,
            )
        if table.get("at_clause"):
            raise invalid(f"table {shown!r}: time travel (AT ...) is not supported")
        lowered = tuple(p.lower() for p in parts)
        for part in lowered[:-1]:
            _check_name_part(part, shown)
        # The table part may name a branch or tag: "t@audit" (see split_ref).
        table_part, at, ref_part = lowered[-1].partition("@")
        _check_name_part(table_part, shown)
        if at and not _REF_NAME.fullmatch(ref_part):
            _check_name_part(lowered[-1], shown)  # refused, with its message
        maybe_cte = len(lowered) == 1 and lowered[0] in ctes
        known = refs.get(lowered)
        if known is None or (known.maybe_cte and not maybe_cte):
            refs[lowered] = TableRef(lowered, shown, maybe_cte)
    return tuple(refs.values())


#: Table functions that make rows out of their arguments alone. Any other (read_csv,
#: read_parquet, glob, read_text...) reads files or URLs: refused when the job is created,
#: not only when it runs (where external access is off anyway).
_GENERATING_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})


def _check_table_function(node: dict[str, Any]) -> None:
    function = node.get("function")
    name = str(function.get("function_name", "")) if isinstance(function, dict) else ""
    if name.lower() not in _GENERATING_TABLE_FUNCTIONS:
        raise invalid(
            f"table function {name or '?'}() is not allowed: a SQL job reads only the "
            "lakehouse's tables, named namespace.table",
            reason=NOT_ALLOWED,
        )


#: Scalar functions that read the engine's configuration or the process's environment,
#: which hold server paths (temp_directory, home_directory, extension_directory,
#: secret_directory, allowed_directories...). The tables that list them
#: (duckdb_settings(), pragma_database_list(), duckdb_databases()...) are table functions,
#: refused above.
_HIDDEN_FUNCTIONS = frozenset({"current_setting", "getenv", "getvariable"})


def _check_scalar_function(node: dict[str, Any]) -> None:
    name = str(node.get("function_name", "")).lower()
    if name in _HIDDEN_FUNCTIONS:
        raise invalid(
            f"function {name}() is not allowed: a SQL job cannot read the engine's settings "
            "or the server's environment",
            reason=NOT_ALLOWED,
        )


def _check_name_part(part: str, shown: str) -> None:
    """A name the lakehouse can hold; anything else (a file path, a URL) is refused."""
    if len(part) > MAX_NAME_LENGTH or not IDENTIFIER.fullmatch(part):
        raise invalid(
            f"{shown!r} is not a lakehouse table: a SQL job reads only the lakehouse's "
            "tables, named namespace.table",
            reason=NOT_ALLOWED,
        )


def token_positions(text: str) -> list[tuple[int, str, str]]:
    """DuckDB's tokens of ``text`` but comments: ``(start, kind, text)`` of each."""
    marks = duckdb.tokenize(text)
    result = []
    for i, (start, kind) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        if kind.name != "comment":
            result.append((start, kind.name, text[start:end].strip()))
    return result


def unquote(token: str) -> str:
    """A name as written: a double-quoted identifier without its quotes (doubled ones undone)."""
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return token[1:-1].replace('""', '"')
    return token


def quote(name: str) -> str:
    """A double-quoted SQL identifier (quotes inside are doubled)."""
    return '"' + name.replace('"', '""') + '"'


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (at most 500 characters), for an answer."""
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def split_ref(name: str) -> tuple[str, str]:
    """``(table, ref)`` of a table name that may name a branch or tag: ``"orders@audit"``.

    A SQL job reads a branch's head or a tag's snapshot under the quoted name
    ``ns."table@ref"``; without ``@`` the ref is empty (the current snapshot).

    Raises:
        InvalidArgument: A malformed ref name (on ``sql.statement``).
    """
    table, at, ref = name.partition("@")
    if not at:
        return name, ""
    if not _REF_NAME.fullmatch(ref):
        raise invalid(
            f"{name!r}: after '@' comes a branch or tag name (ASCII letters, digits, '.', '_' "
            "or '-')"
        )
    return table, ref


def refuse_ref_target(parts: tuple[str, ...]) -> None:
    """Refuses a write whose target names a branch or tag (SQL jobs read them only).

    Raises:
        InvalidArgument: SQL_NOT_ALLOWED, pointing to the RPCs that write to a branch.
    """
    if "@" in parts[-1]:
        raise invalid(
            f"{'.'.join(parts)!r}: a branch or tag is read-only in a SQL job; write to a branch "
            "with WriteRows, AppendRows or DeleteRows and their branch field",
            reason="SQL_NOT_ALLOWED",
        )


_REF_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
