"""The statement rules of DuckDB SQL jobs, checked with DuckDB's own parser.

A statement is parsed before it runs (and when its job is created): exactly one statement,
a query, ``INSERT INTO``, ``DELETE FROM`` or ``UPDATE``, every table it names a lakehouse
table (no file paths, table functions that read files, three-part names or time travel), and
no function that reads the engine's settings or the server's environment. A DELETE or
UPDATE is checked as the SELECT that evaluates it: the same text, the same rules. The
connection settings (``connection``) are the guarantee; these checks give clear messages.
Every statement error is an ``InvalidArgument`` on field ``sql.statement`` (``invalid``).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb

from lakehouse.adapters.duckdb.connection import connect
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.names import MAX_NAME_LENGTH

STATEMENT_FIELD = "sql.statement"
"""The request field every statement error is reported against."""

NOT_ALLOWED = "SQL_NOT_ALLOWED"
"""The ``ErrorInfo`` reason of a statement the engine refuses to run (not a syntax error)."""

_MESSAGE_LIMIT = 2000
_PARSER_MEMORY_MB = 64
#: A name part the lakehouse can hold, unquoted (a namespace is also a DuckDB schema name).
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")

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
        key = resolve(ref.parts, default_namespace)
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
class TableRef:
    """A table name as the statement wrote it (lower-cased parts)."""

    parts: tuple[str, ...]
    shown: str
    maybe_cte: bool = False


@dataclass(frozen=True)
class Insert:
    """An ``INSERT``'s target table, its column list and whether it matches by name."""

    target: tuple[str, ...]
    columns: tuple[str, ...] | None
    by_name: bool


@dataclass(frozen=True)
class RowChange:
    """A ``DELETE`` or ``UPDATE``: its target, which rows it changes and their new values.

    Attributes:
        kind: ``DELETE`` or ``UPDATE``.
        target: The target table's name parts as written (lower-cased).
        alias: The name the WHERE and SET expressions give the target's rows (its alias,
            or its table name).
        where: The WHERE condition as written; None for an UPDATE of every row.
        assignments: UPDATE: ``(column, expression)`` pairs as written, in order.
    """

    kind: str
    target: tuple[str, ...]
    alias: str
    where: str | None
    assignments: tuple[tuple[str, str], ...] = ()

    def query(self, source: str, items: Iterable[str], *, where: bool = True) -> str:
        """A SELECT of ``items`` over ``source`` under the target's alias, with the WHERE.

        The statement's check and each evaluation over a batch of the target's rows are
        this one text with another ``source``: what runs is what was checked.
        """
        condition = f" WHERE (\n{self.where}\n)" if where and self.where is not None else ""
        return f"SELECT {', '.join(items)} FROM {source} AS {quote(self.alias)}{condition}"

    def checked_query(self) -> str:
        """The SELECT that is checked for the statement: its WHERE and SET over the target."""
        items = ["*", *(f"(\n{expression}\n)" for _, expression in self.assignments)]
        return self.query(".".join(quote(p) for p in self.target), items)


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


def invalid(description: str, *, reason: str | None = None) -> InvalidArgument:
    """The statement's fault, on field ``sql.statement`` (a long description is cut)."""
    if len(description) > _MESSAGE_LIMIT:
        description = description[:_MESSAGE_LIMIT] + "..."
    return InvalidArgument.field(STATEMENT_FIELD, description, reason=reason)


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
        return Plan(text, _table_refs(con, text), None)
    if kind == "INSERT":
        insert, query = _split_insert(con, text)
        return Plan(query, _table_refs(con, query), insert)
    if kind in _ROW_CHANGES:
        change = _split_row_change(con, kind, text)
        query = change.checked_query()
        return Plan(query, _table_refs(con, query), None, change)
    if kind == "MERGE_INTO":
        raise invalid(_MERGE_HINT, reason=NOT_ALLOWED)
    hint = _READ_ONLY_HINT if kind in _DATA_CHANGING else _QUERY_HINT
    raise invalid(hint.format(kind=kind.replace("_", " ")), reason=NOT_ALLOWED)


def _strip_terminator(text: str) -> str:
    text = text.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def _serialize(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, Any]:
    """DuckDB's parse tree of a SELECT (parse only: no table needs to exist)."""
    try:
        rows = con.sql("SELECT json_serialize_sql($1)", params=[query]).fetchall()
    except duckdb.Error as exc:
        raise invalid(str(exc)) from exc
    tree: dict[str, Any] = json.loads(rows[0][0])
    if tree.get("error"):
        raise invalid(str(tree.get("error_message", "the statement cannot be analysed")))
    return tree


def _table_refs(con: duckdb.DuckDBPyConnection, query: str) -> tuple[TableRef, ...]:
    """Every table the query names, from DuckDB's parse tree.

    The walk is generic (any dict that is a BASE_TABLE), so subqueries, joins, set
    operations and expressions are covered whatever node types hold them. A one-part name
    that is also the name of a common table expression may be that CTE: it is read if the
    lakehouse has such a table and skipped otherwise (DuckDB's scoping decides).
    """
    tree = _serialize(con, query)
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
        for part in lowered:
            _check_name_part(part, shown)
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


def resolve(parts: tuple[str, ...], default_namespace: str) -> tuple[str, str]:
    """``(namespace, table)`` of a one- or two-part name; one part takes the default namespace."""
    if len(parts) == 2:
        return parts[0], parts[1]
    if not default_namespace:
        raise invalid(
            f"table {parts[0]!r} has no namespace: write namespace.table or set default_namespace"
        )
    return default_namespace, parts[0]


def _token_positions(text: str) -> list[tuple[int, str, str]]:
    marks = duckdb.tokenize(text)
    result = []
    for i, (start, kind) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        if kind.name != "comment":
            result.append((start, kind.name, text[start:end].strip()))
    return result


_QUERY_STARTS = frozenset({"select", "with", "values", "from", "table"})


def _split_insert(con: duckdb.DuckDBPyConnection, text: str) -> tuple[Insert, str]:
    """``[WITH ...] INSERT INTO name [(columns)] [BY NAME|BY POSITION] <query>``, split up.

    DuckDB serialises only SELECT statements, so the INSERT is split with DuckDB's
    tokenizer and each part parsed on its own: the target as a table name, the rest as a
    query (with the leading WITH, if any, put back in front of it).
    """
    toks = _token_positions(text)

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
                names.append(_unquote(tok))
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


def _split_row_change(con: duckdb.DuckDBPyConnection, kind: str, text: str) -> RowChange:
    """``DELETE FROM name [[AS] alias] WHERE cond`` or ``UPDATE name [[AS] alias] SET ...``.

    DuckDB has parsed the whole statement already (its grammar is DuckDB's); it serialises
    only SELECT statements, so the parts are found with its tokenizer, at the top level of
    parentheses, and each is then parsed on its own. Forms whose rows would not come from
    the target alone (``DELETE ... USING``, ``UPDATE ... FROM``), ``RETURNING`` and a
    leading ``WITH`` are refused; so is a DELETE without a WHERE (as DeleteRows needs a
    filter: deleting every row is ``WHERE true`` spelled out).
    """
    toks = _token_positions(text)
    shown = kind.lower()

    def word(i: int) -> str:
        return toks[i][2].lower() if i < len(toks) and toks[i][1] == "keyword" else ""

    if word(0) != shown:
        raise invalid(
            f"WITH before {kind} is not supported: use a subquery in the WHERE",
            reason=NOT_ALLOWED,
        )
    marks = _top_level_keywords(toks)
    start = 2 if kind == "DELETE" else 1
    if kind == "DELETE" and word(1) != "from":
        raise invalid("expected FROM after DELETE")
    ends = {"using", "where", "returning"} if kind == "DELETE" else {"set"}
    stop = next((i for i, w in marks if i >= start and w in ends), len(toks))
    if stop == start or start >= len(toks):
        raise invalid(f"{kind} needs a target table")
    end = toks[stop][0] if stop < len(toks) else len(text)
    target, alias = _change_target(con, text[toks[start][0] : end].strip())
    clauses: dict[str, tuple[int, int]] = {}
    following = [(i, w) for i, w in marks if i >= stop]
    for n, (i, w) in enumerate(following):
        until = following[n + 1][0] if n + 1 < len(following) else len(toks)
        if w in clauses:
            raise invalid(f"{w.upper()} appears twice")
        clauses[w] = (
            toks[i + 1][0] if i + 1 < len(toks) else len(text),
            toks[until][0] if until < len(toks) else len(text),
        )
    for refused, why in (
        ("using", "DELETE ... USING is not supported: use a subquery in the WHERE"),
        ("from", "UPDATE ... FROM is not supported: use subqueries in the SET and WHERE"),
        ("returning", f"{kind} ... RETURNING is not supported"),
    ):
        if refused in clauses:
            raise invalid(why, reason=NOT_ALLOWED)
    where = _clause(text, clauses.get("where"))
    if where is not None:
        _check_deterministic(con, kind, where)
    if kind == "DELETE":
        if where is None:
            raise invalid(
                "DELETE needs a WHERE: to delete every row, write WHERE true",
                reason=NOT_ALLOWED,
            )
        return RowChange(kind, target, alias, where)
    assignments = _assignments(text, toks, clauses.get("set"))
    return RowChange(kind, target, alias, where, assignments)


#: Keywords that start a clause of a DELETE or UPDATE (at the top level of parentheses).
_CHANGE_CLAUSES = frozenset({"using", "where", "returning", "set", "from"})
#: Brackets that nest: a list or struct literal holds commas and keywords of its own.
_NESTING = {"(": 1, ")": -1, "[": 1, "]": -1, "{": 1, "}": -1}


#: Functions whose value differs each time they are evaluated. The WHERE of a DELETE or
#: UPDATE is evaluated more than once (to find the files, to count, to rewrite), and must
#: pick the same rows each time. (``now()`` and its kin are fixed: the statement runs in one
#: DuckDB transaction.)
_VOLATILE_FUNCTIONS = frozenset(
    {
        "random",
        "setseed",
        "uuid",
        "uuidv4",
        "uuidv7",
        "gen_random_uuid",
        "nextval",
        "currval",
        "setval",
        "current_query",
        "current_query_id",
        "sleep_ms",
    }
)


def _check_deterministic(con: duckdb.DuckDBPyConnection, kind: str, where: str) -> None:
    pending: list[Any] = [_serialize(con, f"SELECT 1 WHERE (\n{where}\n)")]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            name = str(node.get("function_name", "")).lower()
            if node.get("class") == "FUNCTION" and name in _VOLATILE_FUNCTIONS:
                raise invalid(
                    f"function {name}() is not allowed in the WHERE of a {kind}: the WHERE is "
                    "evaluated more than once and must pick the same rows each time",
                    reason=NOT_ALLOWED,
                )
            pending.extend(node.values())


def _top_level_keywords(toks: list[tuple[int, str, str]]) -> list[tuple[int, str]]:
    depth = 0
    found = []
    for i, (_, kind, tok) in enumerate(toks):
        if kind == "operator":
            depth += sum(_NESTING.get(char, 0) for char in tok)
        elif depth == 0 and kind == "keyword" and tok.lower() in _CHANGE_CLAUSES:
            found.append((i, tok.lower()))
    return found


def _clause(text: str, span: tuple[int, int] | None) -> str | None:
    if span is None:
        return None
    body = text[span[0] : span[1]].strip()
    if not body:
        raise invalid("an empty clause in the statement")
    return body


def _change_target(con: duckdb.DuckDBPyConnection, name_text: str) -> tuple[tuple[str, ...], str]:
    """The target's name parts and the name its rows go by (the alias, or the table name)."""
    refs = _table_refs(con, f"SELECT * FROM {name_text}")
    tree = _serialize(con, f"SELECT * FROM {name_text}")
    node = tree["statements"][0]["node"].get("from_table") or {}
    if len(refs) != 1 or len(refs[0].parts) > 2 or node.get("type") != "BASE_TABLE":
        raise invalid(f"{name_text!r} is not a table name")
    if node.get("column_name_alias") or node.get("sample"):
        raise invalid(f"{name_text!r}: only a table name and an alias are supported")
    alias = str(node.get("alias") or refs[0].parts[-1])
    return refs[0].parts, alias


def _assignments(
    text: str, toks: list[tuple[int, str, str]], span: tuple[int, int] | None
) -> tuple[tuple[str, str], ...]:
    """``column = expression`` pairs of a SET, split at its top-level commas."""
    body = _clause(text, span)
    if body is None or span is None:
        raise invalid("UPDATE needs SET column = expression")
    cuts = [span[0]]
    depth = 0
    for start, kind, tok in toks:
        if not span[0] <= start < span[1] or kind != "operator":
            continue
        for offset, char in enumerate(text[start : start + len(tok)]):
            depth += _NESTING.get(char, 0)
            if char == "," and depth == 0:
                cuts.append(start + offset + 1)
    cuts.append(span[1] + 1)
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for begin, until in itertools.pairwise(cuts):
        item = text[begin : until - 1].strip()
        column_text, equals, expression = item.partition("=")
        column = _unquote(column_text.strip())
        if not equals or not expression.strip() or not column or "." in column_text:
            raise invalid(f"SET {item!r}: expected column = expression (one column of the target)")
        if column.casefold() in seen:
            raise invalid(f"column {column!r} is set more than once")
        seen.add(column.casefold())
        pairs.append((column, expression.strip()))
    return tuple(pairs)


def _insert_target(con: duckdb.DuckDBPyConnection, name_text: str) -> tuple[str, ...]:
    refs = _table_refs(con, f"SELECT * FROM {name_text}")
    if len(refs) != 1 or len(refs[0].parts) > 2:
        raise invalid(f"{name_text!r} is not a table name")
    return refs[0].parts


def _unquote(token: str) -> str:
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
