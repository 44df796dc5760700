"""Trino's results as Arrow: its type notation parsed, its values converted, the preview built.

Result pages come as JSON rows with the columns' Trino types as text; each type is parsed
(``parse_trino_type``) and mapped to an Arrow type with a converter for the client's Python
values (``plan_column``), and the kept rows become the preview table (``preview_table``).
A type or value the mapping does not know is shown as text rather than failing a query
that succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrinoType:
    """A Trino type as the client protocol names it (``decimal(10, 2)``, ``row(a bigint)``).

    Attributes:
        base: The lower-case base name: ``bigint``, ``timestamp with time zone``, ``array``...
        params: Numeric parameters (length, precision, scale).
        fields: Element types: one for array, key and value for map, the fields of a row
            (with their names, None when unnamed).
    """

    base: str
    params: tuple[int, ...] = ()
    fields: tuple[tuple[str | None, TrinoType], ...] = ()


_TOKEN = re.compile(
    r'\s*(?:(?P<quoted>"(?:[^"]|"")*")|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\d+)'
    r"|(?P<punct>[(),]))"
)
# Multi-word types: their words must not be read as a row field's name and type.
_MULTIWORD_TYPES = frozenset(
    {"interval day to second", "interval year to month", "double precision"}
)


def parse_trino_type(text: str) -> TrinoType:
    """Parses a type as Trino writes it in a result's ``columns``.

    Raises:
        ValueError: ``text`` is not a type in Trino's notation.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"unexpected character at {pos} in type {text!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    parser = _TypeParser(tokens)
    parsed = parser.type()
    if parser.pos != len(tokens):
        raise ValueError(f"trailing text in type {text!r}")
    return parsed


class _TypeParser:
    """Recursive descent over the tokens of one type."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        token_kind, token = self.peek()
        if token_kind != kind or (value is not None and token != value):
            raise ValueError(f"expected {value or kind}, found {token or 'the end'}")
        self.pos += 1
        return token

    def words(self) -> list[str]:
        words = []
        while self.peek()[0] == "word":
            words.append(self.take("word").lower())
        return words

    def type(self) -> TrinoType:
        words = self.words()
        if not words:
            raise ValueError(f"expected a type name, found {self.peek()[1] or 'the end'}")
        params: list[int] = []
        fields: list[tuple[str | None, TrinoType]] = []
        if self.peek() == ("punct", "("):
            self.take("punct", "(")
            while True:
                if words == ["row"]:
                    fields.append(self.row_field())
                elif self.peek()[0] == "number":
                    params.append(int(self.take("number")))
                else:
                    fields.append((None, self.type()))
                if self.peek() == ("punct", ","):
                    self.take("punct", ",")
                    continue
                self.take("punct", ")")
                break
            words += self.words()  # "timestamp(3) with time zone"
        return TrinoType(" ".join(words), tuple(params), tuple(fields))

    def row_field(self) -> tuple[str | None, TrinoType]:
        kind, token = self.peek()
        if kind == "quoted":
            self.pos += 1
            return token[1:-1].replace('""', '"'), self.type()
        # "a bigint" is a named field, "bigint" and "interval day to second" are not.
        count = 0
        while self.peek(count)[0] == "word":
            count += 1
        spelled = " ".join(self.peek(i)[1].lower() for i in range(count))
        if count >= 2 and spelled not in _MULTIWORD_TYPES:
            return self.take("word"), self.type()
        return None, self.type()


@dataclass(frozen=True)
class Column:
    """One result column: its name, its Arrow type and the converter of its values."""

    name: str
    arrow_type: pa.DataType
    convert: Callable[[Any], Any]


def plan_column(name: str, type_text: str) -> Column:
    """How to preview column ``name`` of Trino type ``type_text`` (as text, if unknown)."""
    try:
        arrow_type, convert = _plan(parse_trino_type(type_text))
    except ValueError:
        logger.warning("unknown Trino type %r of column %r; previewed as text", type_text, name)
        arrow_type, convert = pa.string(), _nullable(_text)
    return Column(name, arrow_type, convert)


_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double": pa.float64(),
    "varchar": pa.string(),
    "char": pa.string(),
    "json": pa.string(),
    "varbinary": pa.binary(),
    "date": pa.date32(),
}


def _plan(t: TrinoType) -> tuple[pa.DataType, Callable[[Any], Any]]:
    """The Arrow type of a Trino type, and a converter for its values.

    The converter turns the Python value the client made (``trino.mapper``) into one that
    ``pa.array`` accepts for that Arrow type.
    """
    if t.base in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[t.base], _identity
    if t.base == "decimal" and len(t.params) == 2:
        precision, scale = t.params
        if precision <= 38:
            return pa.decimal128(precision, scale), _identity
        return pa.decimal256(precision, scale), _identity
    if t.base in ("timestamp", "timestamp with time zone"):
        # The client rounds to microseconds (what Python's datetime holds): beyond that,
        # microseconds are the honest unit.
        unit = "ms" if t.params and t.params[0] <= 3 else "us"
        if t.base == "timestamp":
            return pa.timestamp(unit), _identity
        # Arrow has one zone per column, Trino one per value: normalise to UTC.
        return pa.timestamp(unit, tz="UTC"), _nullable(_to_utc)
    if t.base == "time":
        if t.params and t.params[0] <= 3:
            return pa.time32("ms"), _identity
        return pa.time64("us"), _identity
    if t.base == "array" and len(t.fields) == 1:
        element_type, element = _plan(t.fields[0][1])
        return pa.list_(element_type), _nullable(lambda v: [element(x) for x in v])
    if t.base == "map" and len(t.fields) == 2:
        key_type, key = _plan(t.fields[0][1])
        value_type, value = _plan(t.fields[1][1])
        return pa.map_(key_type, value_type), _nullable(
            lambda v: [(key(k), value(x)) for k, x in v.items()]
        )
    if t.base == "row" and t.fields:
        plans = [_plan(field_type) for _, field_type in t.fields]
        struct = pa.struct(
            [
                pa.field(name or f"_col{i}", arrow_type)
                for i, ((name, _), (arrow_type, _)) in enumerate(zip(t.fields, plans, strict=True))
            ]
        )
        converters = [convert for _, convert in plans]
        return struct, _nullable(lambda v: tuple(c(x) for c, x in zip(converters, v, strict=True)))
    # uuid, ipaddress, interval..., time with time zone, number, sketches: text keeps them
    # readable without inventing a representation.
    return pa.string(), _nullable(_text)


def _identity(value: Any) -> Any:
    return value


def _nullable(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _to_utc(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def row_bytes(row: Sequence[Any]) -> int:
    """About how many bytes a result row's values take (text and binary by their length)."""
    return sum(len(v) if isinstance(v, (str, bytes)) else 16 for v in row) + 8


def preview_table(columns: Sequence[Column], rows: list[list[Any]]) -> pa.Table:
    """The kept rows as an Arrow table with the result's schema."""
    arrays = []
    fields = []
    for index, column in enumerate(columns):
        values = [column.convert(row[index]) for row in rows]
        try:
            arrays.append(pa.array(values, type=column.arrow_type))
            fields.append(pa.field(column.name, column.arrow_type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            # A value the mapping did not foresee: show the column as text rather than
            # failing a query that succeeded.
            logger.warning("Trino column %r previewed as text", column.name, exc_info=True)
            arrays.append(pa.array([None if v is None else _text(v) for v in values], pa.string()))
            fields.append(pa.field(column.name, pa.string()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
