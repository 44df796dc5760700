"""DELETE and UPDATE statements of DuckDB jobs, split into their parts with DuckDB's parser.

A DELETE or UPDATE is checked as the SELECT that evaluates it (``RowChange.checked_query``):
its WHERE and SET expressions over the target, with the same rules as any query; each
evaluation over a batch of the target's rows is that same text with another source.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb

from lakehouse.adapters.duckdb.parse_tree import (
    NOT_ALLOWED,
    invalid,
    quote,
    refuse_ref_target,
    serialize,
    table_refs,
    token_positions,
    unquote,
)


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


def split_row_change(con: duckdb.DuckDBPyConnection, kind: str, text: str) -> RowChange:
    """``DELETE FROM name [[AS] alias] WHERE cond`` or ``UPDATE name [[AS] alias] SET ...``.

    DuckDB has parsed the whole statement already (its grammar is DuckDB's); it serialises
    only SELECT statements, so the parts are found with its tokenizer, at the top level of
    parentheses, and each is then parsed on its own. Forms whose rows would not come from
    the target alone (``DELETE ... USING``, ``UPDATE ... FROM``), ``RETURNING`` and a
    leading ``WITH`` are refused; so is a DELETE without a WHERE (as DeleteRows needs a
    filter: deleting every row is ``WHERE true`` spelled out).

    Args:
        con: A connection for DuckDB's parser.
        kind: ``DELETE`` or ``UPDATE``, as DuckDB's parser classified the statement.
        text: The statement, which DuckDB's parser accepted.

    Raises:
        InvalidArgument: A form not supported (reason ``SQL_NOT_ALLOWED``), or a part that
            is not what it must be (the target not a table name, SET not ``column = ...``).
    """
    toks = token_positions(text)
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
    pending: list[Any] = [serialize(con, f"SELECT 1 WHERE (\n{where}\n)")]
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
    """The clause keywords outside brackets, as ``(token index, keyword)``.

    Expressions hold some of the same words: ``a IS [NOT] DISTINCT FROM b`` is no FROM
    clause, and after WHERE (the last clause) only RETURNING can follow.
    """
    depth = 0
    found: list[tuple[int, str]] = []
    previous = ""
    for i, (_, kind, tok) in enumerate(toks):
        word = tok.lower() if kind == "keyword" else ""
        if kind == "operator":
            depth += sum(_NESTING.get(char, 0) for char in tok)
        elif depth == 0 and word in _CHANGE_CLAUSES and previous != "distinct":
            after_where = any(w == "where" for _, w in found)
            if not after_where or word == "returning":
                found.append((i, word))
        previous = word
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
    refs = table_refs(con, f"SELECT * FROM {name_text}")
    tree = serialize(con, f"SELECT * FROM {name_text}")
    node = tree["statements"][0]["node"].get("from_table") or {}
    if len(refs) != 1 or len(refs[0].parts) > 2 or node.get("type") != "BASE_TABLE":
        raise invalid(f"{name_text!r} is not a table name")
    if node.get("column_name_alias") or node.get("sample"):
        raise invalid(f"{name_text!r}: only a table name and an alias are supported")
    refuse_ref_target(refs[0].parts)
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
        column = unquote(column_text.strip())
        if not equals or not expression.strip() or not column or "." in column_text:
            raise invalid(f"SET {item!r}: expected column = expression (one column of the target)")
        if column.casefold() in seen:
            raise invalid(f"column {column!r} is set more than once")
        seen.add(column.casefold())
        pairs.append((column, expression.strip()))
    return tuple(pairs)
