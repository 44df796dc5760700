"""The statement rules of DuckDB SQL jobs, checked with DuckDB's own parser.

A statement is parsed before it runs (and when its job is created): exactly one statement,
a query, ``INSERT INTO``, ``DELETE FROM`` or ``UPDATE``, every table it names a lakehouse
table (no file paths, table functions that read files, three-part names or time travel), and
no function that reads the engine's settings or the server's environment. A DELETE or
UPDATE is checked as the SELECT that evaluates it: the same text, the same rules. The
connection settings (``connection``) are the guarantee; these checks give clear messages.
Every statement error is an ``InvalidArgument`` on field ``sql.statement``
(``parse_tree.invalid``); DuckDB's parse trees are read in ``parse_tree``, DELETE and UPDATE
split in ``row_statements``.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from lakehouse.adapters.duckdb.connection import connect
from lakehouse.adapters.duckdb.parse_tree import (
    NOT_ALLOWED,
    TableRef,
    invalid,
    refuse_ref_target,
    split_ref,
    table_refs,
    token_positions,
    unquote,
)
from lakehouse.adapters.duckdb.row_statements import RowChange, split_row_change

_PARSER_MEMORY_MB = 64

_READ_ONLY_HINT = (
    "DuckDB jobs change rows only with INSERT INTO, DELETE FROM and UPDATE on "
    "namespace.table; run {kind} statements with the TRINO engine"
)
_QUERY_HINT = (
    "{kind} statements are not allowed: a SQL job runs one query (SELECT, WITH, VALUES, "
    "TABLE, set operations), INSERT INTO namespace.table <query>, DELETE FROM "
    "namespace.table WHERE ... or UPDATE namespace.table SET ... [WHERE ...]"
)
_DATA_CHANGING = frozenset({"CREATE", "DROP", "ALTER", "MERGE_INTO"})
_ROW_CHANGES = frozenset({"DELETE", "UPDATE"})


@dataclass(frozen=True)
class NamedTable:
    """A lakehouse table a statement names, resolved against the default namespace.

    Attributes:
        namespace: The table's namespace.
        table: The table's name.
        may_be_cte: The statement wrote a bare name that is also one of its common table
            expressions: it reads the lakehouse table if one exists, the CTE otherwise.
    """

    namespace: str
    table: str
    may_be_cte: bool = False


def check_statement(
    statement: str, *, default_namespace: str | None = None
) -> tuple[NamedTable, ...]:
    """Checks a statement without a catalog: DuckDB's parser and the allowed shapes only.

    Called when a SQL job is created, so that a statement that cannot run creates no job.
    The caller then confirms that the tables returned exist (this function has no catalog).

    Args:
        statement: The SQL text.
        default_namespace: When given (even empty), bare table names are checked against
            it: with no default namespace, every table must be named ``namespace.table``.

    Returns:
        The tables the statement reads and the target of an ``INSERT``, ``DELETE`` or
        ``UPDATE``, in the order named (none
        when ``default_namespace`` is None: bare names cannot be resolved then).

    Raises:
        InvalidArgument: On field ``sql.statement``: a syntax error (DuckDB's message), more
            or fewer than one statement, a statement type other than a query, ``INSERT``,
            ``DELETE`` or ``UPDATE`` (reason ``SQL_NOT_ALLOWED``), a ``DELETE`` without a
            WHERE or a form of ``DELETE``/``UPDATE`` not supported, or a table reference
            that cannot be a lakehouse table (a file path, a three-part name, time travel).
    """
    con = connect(memory_limit_mb=_PARSER_MEMORY_MB, threads=1, temp_dir=None)
    try:
        plan = analyze(con, statement)
    finally:
        con.close()
    if default_namespace is None:
        return ()
    names: dict[tuple[str, str], NamedTable] = {}
    for ref in plan.tables:
        if ref.maybe_cte and not default_namespace:
            continue  # can only be the CTE: there is no namespace to find a table in
        namespace, name = resolve(ref.parts, default_namespace)
        key = (namespace, split_ref(name)[0])  # "t@audit" reads table t (the ref: at run)
        if key not in names or not ref.maybe_cte:
            names[key] = NamedTable(*key, may_be_cte=ref.maybe_cte)
    written = plan.insert.target if plan.insert is not None else None
    if plan.change is not None:
        written = plan.change.target
    if written is not None:
        key = resolve(written, default_namespace)
        names[key] = NamedTable(*key)
    return tuple(names.values())


@dataclass(frozen=True)
class Insert:
    """An ``INSERT``'s target table, its column list and whether it matches by name."""

    target: tuple[str, ...]
    columns: tuple[str, ...] | None
    by_name: bool


@dataclass(frozen=True)
class Plan:
    """What runs: the query text (the INSERT's source for an INSERT) and what it reads.

    For a DELETE or UPDATE (``change``), ``query`` is the SELECT checked for it (not run as
    such) and ``tables`` include the target.
    """

    query: str
    tables: tuple[TableRef, ...]
    insert: Insert | None
    change: RowChange | None = None


def analyze(con: duckdb.DuckDBPyConnection, statement: str) -> Plan:
    """Parses ``statement`` and checks its shape: what runs and which tables it names.

    Raises:
        InvalidArgument: The statement is not one allowed query, ``INSERT``, ``DELETE`` or
            ``UPDATE``.
    """
    try:
        statements = con.extract_statements(statement)
    except duckdb.Error as exc:
        raise invalid(str(exc)) from exc
    if len(statements) != 1:
        raise invalid(
            f"a SQL job runs exactly one statement, got {len(statements)}",
            reason=NOT_ALLOWED if statements else None,
        )
    parsed = statements[0]
    kind = parsed.type.name
    text = _strip_terminator(parsed.query)
    if kind == "SELECT":
        return Plan(text, table_refs(con, text), None)
    if kind == "INSERT":
        insert, query = _split_insert(con, text)
        return Plan(query, table_refs(con, query), insert)
    if kind in _ROW_CHANGES:
        change = split_row_change(con, kind, text)
        query = change.checked_query()
        return Plan(query, table_refs(con, query), None, change)
    if kind == "MERGE_INTO":
        raise invalid(_MERGE_HINT, reason=NOT_ALLOWED)
    hint = _READ_ONLY_HINT if kind in _DATA_CHANGING else _QUERY_HINT
    raise invalid(hint.format(kind=kind.replace("_", " ")), reason=NOT_ALLOWED)


def _strip_terminator(text: str) -> str:
    text = text.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def resolve(parts: tuple[str, ...], default_namespace: str) -> tuple[str, str]:
    """``(namespace, table)`` of a one- or two-part name; one part takes the default namespace."""
    if len(parts) == 2:
        return parts[0], parts[1]
    if not default_namespace:
        raise invalid(
            f"table {parts[0]!r} has no namespace: write namespace.table or set default_namespace"
        )
    return default_namespace, parts[0]


_QUERY_STARTS = frozenset({"select", "with", "values", "from", "table"})


def _split_insert(con: duckdb.DuckDBPyConnection, text: str) -> tuple[Insert, str]:
    """``[WITH ...] INSERT INTO name [(columns)] [BY NAME|BY POSITION] <query>``, split up.

    DuckDB serialises only SELECT statements, so the INSERT is split with DuckDB's
    tokenizer and each part parsed on its own: the target as a table name, the rest as a
    query (with the leading WITH, if any, put back in front of it).
    """
    toks = token_positions(text)

    def word(i: int) -> str:
        return toks[i][2].lower() if i < len(toks) and toks[i][1] == "keyword" else ""

    depth = 0
    start = -1
    for i, (_, kind, tok) in enumerate(toks):
        if kind == "operator":
            depth += tok.count("(") - tok.count(")")
        if depth == 0 and word(i) == "insert":
            start = i
            break
    if start < 0:
        raise invalid("cannot find INSERT in the statement")
    prefix = text[: toks[start][0]].strip()
    i = start + 1
    if word(i) == "or":
        raise invalid(
            "INSERT OR REPLACE / OR IGNORE is not supported: lakehouse tables have no keys"
        )
    if word(i) != "into":
        raise invalid("expected INTO after INSERT")
    i += 1
    name_start = i
    while i < len(toks) and not (
        toks[i][2] == "(" or word(i) in _QUERY_STARTS or word(i) in {"by", "as", "default"}
    ):
        i += 1
    if i == name_start or i >= len(toks):
        raise invalid("INSERT needs a target table and a query")
    name_text = text[toks[name_start][0] : toks[i][0]].strip()
    target = _insert_target(con, name_text)
    if word(i) == "as":
        raise invalid("an alias on the INSERT target is not supported")
    columns: tuple[str, ...] | None = None
    if toks[i][2] == "(" and word(i + 1) not in _QUERY_STARTS:
        names: list[str] = []
        i += 1
        while i < len(toks) and toks[i][2] != ")":
            kind, tok = toks[i][1], toks[i][2]
            if kind == "identifier" or (kind == "keyword" and tok != ","):
                names.append(unquote(tok))
            elif tok != ",":
                raise invalid(f"unexpected {tok!r} in the INSERT column list")
            i += 1
        if i >= len(toks) or not names:
            raise invalid("the INSERT column list is empty or not closed")
        columns = tuple(names)
        i += 1
    by_name = False
    if word(i) == "by":
        if word(i + 1) not in {"name", "position"}:
            raise invalid("expected BY NAME or BY POSITION")
        by_name = word(i + 1) == "name"
        i += 2
    if i >= len(toks):
        raise invalid("INSERT needs a query")
    if word(i) == "default":
        raise invalid("INSERT ... DEFAULT VALUES is not supported")
    rest = text[toks[i][0] :].strip()
    depth = 0
    for j in range(i, len(toks)):
        kind, tok = toks[j][1], toks[j][2]
        if kind == "operator":
            depth += tok.count("(") - tok.count(")")
        if depth == 0 and (
            word(j) == "returning" or (word(j) == "on" and word(j + 1) == "conflict")
        ):
            raise invalid(f"INSERT ... {tok.upper()} is not supported")
    if prefix:
        if word(i) == "with":
            raise invalid("WITH both before INSERT and in its query is not supported")
        rest = f"{prefix}\n{rest}"
    return Insert(target, columns, by_name), rest


_MERGE_HINT = (
    "MERGE INTO is not supported by DuckDB jobs: run it with the TRINO engine, or mirror rows "
    "by key with WriteRows in UPSERT mode"
)


def _insert_target(con: duckdb.DuckDBPyConnection, name_text: str) -> tuple[str, ...]:
    refs = table_refs(con, f"SELECT * FROM {name_text}")
    if len(refs) != 1 or len(refs[0].parts) > 2:
        raise invalid(f"{name_text!r} is not a table name")
    refuse_ref_target(refs[0].parts)
    return refs[0].parts
