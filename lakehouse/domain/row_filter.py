r"""The row filter language of ``ReadRows``: SQL-like text to a pyiceberg expression.

A small, hand-written tokenizer and recursive-descent parser (never ``eval``, no parser
library). The result is a pyiceberg ``BooleanExpression`` whose columns are the schema's full
dotted names and whose literals are already typed for their columns, so it binds to the schema
and pyiceberg can push it down (skip data files and row groups by their statistics).

Grammar (keywords are case-insensitive)::

    filter     := <empty> | or_expr
    or_expr    := and_expr ( OR and_expr )*
    and_expr   := not_expr ( AND not_expr )*
    not_expr   := NOT not_expr | primary
    primary    := '(' or_expr ')' | TRUE | FALSE | predicate
    predicate  := column op value
                | value op column                     -- the operator is flipped
                | column IS [NOT] NULL
                | column IS [NOT] NAN                 -- float and double columns only
                | column [NOT] IN '(' value ( ',' value )* ')'
                | column [NOT] BETWEEN value AND value
                | column [NOT] LIKE 'prefix%'         -- string columns; prefix match only
    op         := '=' | '==' | '!=' | '<>' | '<' | '<=' | '>' | '>='
    column     := name ( '.' name )*                  -- struct fields by dotted path
    name       := identifier | '"' quoted identifier '"'   -- "" escapes a double quote
    value      := integer | decimal | float           -- optional leading '-', exponent
                | 'string'                            -- '' escapes a single quote
                | TRUE | FALSE
                | DATE 'YYYY-MM-DD'
                | TIMESTAMP 'YYYY-MM-DD[( |T)hh:mm[:ss[.ffffff]]][Z|+hh:mm]'

A bare identifier is a letter or ``_`` followed by letters, digits and ``_``. The reserved
words ``AND OR NOT IS NULL IN BETWEEN LIKE TRUE FALSE`` must be double-quoted to be used as
column names; ``DATE``, ``TIMESTAMP`` and ``NAN`` are keywords only where a column cannot
stand. In a ``LIKE`` pattern, ``\%``, ``\_`` and ``\\`` stand for the literal characters.

Values are checked against the column's Iceberg type: integers for int and long columns,
numbers for float, double and decimal columns (a decimal value may not have more fractional
digits than the column's scale), strings for string columns, ``TRUE``/``FALSE`` for boolean
columns, and a string (or a typed literal) for date, time, timestamp, timestamptz and uuid
columns. A timestamp without an offset compared with a timestamptz column is taken as UTC;
one with an offset compared with a timestamp (without zone) column is an error.

Every problem is an ``InvalidArgument`` with reason ``INVALID_ROW_FILTER`` and one field
violation whose description points at the offending token by its 1-based character position.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation, localcontext
from enum import Enum
from typing import Any, cast
from uuid import UUID

from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThan,
    GreaterThanOrEqual,
    In,
    IsNaN,
    IsNull,
    LessThan,
    LessThanOrEqual,
    Not,
    NotEqualTo,
    NotIn,
    NotNaN,
    NotNull,
    NotStartsWith,
    Or,
    Reference,
    StartsWith,
)
from pyiceberg.expressions.literals import (
    BooleanLiteral,
    DateLiteral,
    DecimalLiteral,
    DoubleLiteral,
    Literal,
    LongLiteral,
    StringLiteral,
    TimeLiteral,
    TimestampLiteral,
    UUIDLiteral,
)
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)
from pyiceberg.utils.datetime import date_to_days, datetime_to_micros, time_to_micros

from lakehouse.domain.errors import FieldViolation, InvalidArgument

__all__ = [
    "MAX_CONDITIONS",
    "MAX_FILTER_BYTES",
    "MAX_IN_VALUES",
    "MAX_NESTING_DEPTH",
    "REASON",
    "parse_row_filter",
    "parse_row_filter_off_loop",
]

REASON = "INVALID_ROW_FILTER"
"""The ``ErrorInfo`` reason of every row filter error."""

MAX_FILTER_BYTES = 64 * 1024
"""The longest filter accepted, in UTF-8 bytes."""

MAX_NESTING_DEPTH = 100
"""How deeply parentheses may nest."""

MAX_IN_VALUES = 10_000
"""The most values one ``IN`` list may hold."""

MAX_CONDITIONS = 1_000
"""The most conditions (leaves of the AND/OR/NOT tree) a filter may hold.

Eight or more equalities (and ``IN`` lists) on one column joined by ``OR`` (``id = 1 OR
id = 2 ...``) are merged into one ``IN`` first and count as one condition, as does an ``IN``
list; ``BETWEEN`` counts as two.
The limit bounds the work of every later step, which is not linear in the tree size: pyarrow
evaluates a 4,000-term ``OR`` of ranges in about 0.6 s per data file (16 times the cost of
1,000 terms), and pyiceberg binds and evaluates the tree once per manifest and file.
"""

# The height of the finished expression tree is limited too: pyiceberg's visitors (bind,
# rewrite_not, the metrics evaluators) recurse once or twice per level, so a tree much deeper
# than this would hit Python's recursion limit later, inside the scan. AND/OR chains become
# balanced trees, so only pathological inputs (long chains nested a hundred deep) reach it.
_MAX_TREE_HEIGHT = 250

# A column's equalities joined by OR are merged into one IN from this many on (see
# _merge_equalities).
_MERGE_AT = 8

_RESERVED = frozenset({"AND", "OR", "NOT", "IS", "NULL", "IN", "BETWEEN", "LIKE", "TRUE", "FALSE"})
_SHOWN_TOKEN_CHARS = 40
_MAX_DECIMAL_PRECISION = 38
_MAX_INTEGER_DIGITS = 40  # far beyond any long; keeps int() away from huge digit strings

_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
_TIMESTAMP = re.compile(
    rf"[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}([ T]{_TIME})?(Z|[+-][0-9]{{2}}:?[0-9]{{2}})?"
)
_TIME_OF_DAY = re.compile(_TIME)

_INT_RANGES = {
    "int": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
}


class _Kind(Enum):
    WORD = "identifier"
    QUOTED = "quoted identifier"
    STRING = "string"
    NUMBER = "number"
    OP = "operator"
    LPAREN = "'('"
    RPAREN = "')'"
    COMMA = "','"
    DOT = "'.'"
    END = "end of filter"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str
    """The token as written."""
    value: str
    """Decoded: a name without quotes, a string's content, a normalized operator."""
    pos: int
    """0-based character offset in the filter."""


@dataclass(frozen=True, slots=True)
class _Value:
    """A literal as written, before it meets its column's type."""

    kind: str  # "int", "number", "string", "bool", "date" or "timestamp"
    token: _Token
    parsed: object = None  # the bool, date or datetime of the kinds that have one


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    """The schema's full dotted name."""
    type: IcebergType
    token: _Token
    """The first token of the column reference (errors point here)."""


class _Error(Exception):
    """Internal: carries a finished description up to ``parse_row_filter``."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def _show(token: _Token) -> str:
    text = token.text
    if len(text) > _SHOWN_TOKEN_CHARS:
        text = text[: _SHOWN_TOKEN_CHARS - 3] + "..."
    return repr(text)


def _at(token: _Token, problem: str) -> _Error:
    """An error about ``token``: ``at position N ('tok'): problem``."""
    if token.kind is _Kind.END:
        return _Error(f"at position {token.pos + 1}: {problem}")
    return _Error(f"at position {token.pos + 1} ({_show(token)}): {problem}")


def _expected(token: _Token, what: str) -> _Error:
    """An error saying what should have stood where ``token`` is."""
    if token.kind is _Kind.END:
        return _Error(f"at position {token.pos + 1}: unexpected end of filter, expected {what}")
    return _at(token, f"expected {what}")


def parse_row_filter(text: str, schema: Schema, *, field: str = "row_filter") -> BooleanExpression:
    """Parses a SQL-like row filter into a pyiceberg expression bound-ready for ``schema``.

    The syntax is in this module's docstring. Examples: ``amount > 10 AND region = 'eu'``,
    ``note IS NULL``, ``id IN (1, 2, 3)``, ``NOT (day BETWEEN DATE '2024-01-01' AND
    DATE '2024-01-31')``, ``address.city LIKE 'Ber%'``, ``"Mixed Case" <> 'x'``.

    Args:
        text: The filter. Empty or whitespace-only means every row.
        schema: The schema of the table (or snapshot) being read; columns are resolved
            case-sensitively first, then case-insensitively if that is unambiguous.
        field: The request field that carried the filter, named in the error.

    Returns:
        The expression, with each column as the schema's full dotted name and each value as
        a literal of the column's type, ready for ``table.scan(row_filter=...)``.

    Raises:
        InvalidArgument: The filter is malformed, names an unknown column, compares a column
            with a value of the wrong type, or exceeds a limit (``MAX_FILTER_BYTES``,
            ``MAX_NESTING_DEPTH``, ``MAX_IN_VALUES``, ``MAX_CONDITIONS``). Its reason is
            ``INVALID_ROW_FILTER``; its one violation names ``field`` and points at the
            offending token (or, for a limit of the whole filter, says which).
    """
    try:
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_FILTER_BYTES:
            raise _Error(f"the filter is {size} bytes long, at most {MAX_FILTER_BYTES} allowed")
        if not text or text.isspace():
            return AlwaysTrue()
        expression = _Parser(_tokenize(text), schema).parse()
        height, conditions = _measure(expression)
        if conditions > MAX_CONDITIONS:
            raise _Error(
                f"the filter is too complex: it has {conditions} conditions, at most "
                f"{MAX_CONDITIONS} allowed; use IN lists for many values of one column"
            )
        if height > _MAX_TREE_HEIGHT:
            raise _Error(
                "the filter is too complex: its AND/OR/NOT tree is more than "
                f"{_MAX_TREE_HEIGHT} levels deep; use IN lists or fewer nested parentheses"
            )
        return expression
    except _Error as e:
        description = e.description
    except RecursionError:  # a backstop: the depth limits should make this unreachable
        description = f"the filter nests too deeply (at most {MAX_NESTING_DEPTH} levels)"
    raise InvalidArgument(
        f"{field}: {description}",
        violations=[FieldViolation(field, description)],
        reason=REASON,
    )


# Filters up to this many characters are parsed on the calling thread: they take well under a
# millisecond, less than the hop to a worker thread and back.
_INLINE_CHARS = 1024


async def parse_row_filter_off_loop(
    text: str, schema: Schema, *, field: str = "row_filter"
) -> BooleanExpression:
    """``parse_row_filter``, in a worker thread when the filter is long.

    A filter near ``MAX_FILTER_BYTES`` takes a few hundred milliseconds of CPU to parse; on
    the event loop, a few of them at once stall every other call (health checks included).

    Raises:
        InvalidArgument: As ``parse_row_filter``.
    """
    if len(text) <= _INLINE_CHARS:
        return parse_row_filter(text, schema, field=field)
    return await asyncio.to_thread(parse_row_filter, text, schema, field=field)


# --- tokenizer -------------------------------------------------------------------------------

_PUNCTUATION = {"(": _Kind.LPAREN, ")": _Kind.RPAREN, ",": _Kind.COMMA, ".": _Kind.DOT}
_TWO_CHAR_OPERATORS = {"==": "=", "!=": "!=", "<>": "!=", "<=": "<=", ">=": ">="}
_ONE_CHAR_OPERATORS = {"=": "=", "<": "<", ">": ">"}


def _is_word_start(ch: str) -> bool:
    return ch == "_" or ch.isalpha()


def _is_word_char(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def _quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    """Reads a quoted string or identifier; returns its content and the index after it."""
    parts: list[str] = []
    i = start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            raise _Error(f"unterminated {what} starting at position {start + 1}")
        parts.append(text[i:j])
        if text.startswith(quote, j + 1):  # a doubled quote stands for one
            parts.append(quote)
            i = j + 2
            continue
        return "".join(parts), j + 1


def _tokenize(text: str) -> Iterator[_Token]:
    """Yields the tokens of ``text`` lazily, so errors surface in reading order."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        start = i
        if _is_word_start(ch):
            i += 1
            while i < n and _is_word_char(text[i]):
                i += 1
            word = text[start:i]
            yield _Token(_Kind.WORD, word, word, start)
        elif ch == "'" or ch == '"':
            what = "string" if ch == "'" else "quoted identifier"
            value, i = _quoted(text, start, ch, what)
            kind = _Kind.STRING if ch == "'" else _Kind.QUOTED
            token = _Token(kind, text[start:i], value, start)
            if kind is _Kind.QUOTED and not value:
                raise _at(token, "a quoted identifier must not be empty")
            yield token
        elif ch.isdigit() or (ch == "-" and i + 1 < n and "0" <= text[i + 1] <= "9"):
            match = _NUMBER.match(text, i)
            end = match.end() if match else i + 1
            # "12abc", "1.2.3", "1e" and the like: one malformed token, not two good ones.
            while end < n and (_is_word_char(text[end]) or text[end] == "."):
                end += 1
            token = _Token(_Kind.NUMBER, text[start:end], text[start:end], start)
            if match is None or match.end() != end:
                raise _at(token, "malformed number")
            yield token
            i = end
        elif ch in _PUNCTUATION:
            yield _Token(_PUNCTUATION[ch], ch, ch, start)
            i += 1
        else:
            two = text[i : i + 2]
            if two in _TWO_CHAR_OPERATORS:
                yield _Token(_Kind.OP, two, _TWO_CHAR_OPERATORS[two], start)
                i += 2
            elif ch in _ONE_CHAR_OPERATORS:
                yield _Token(_Kind.OP, ch, _ONE_CHAR_OPERATORS[ch], start)
                i += 1
            else:
                bad = _Token(_Kind.OP, ch, ch, start)
                raise _at(bad, "unexpected character")
    yield _Token(_Kind.END, "", "", n)


# --- parser ----------------------------------------------------------------------------------

_FLIPPED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
# pyiceberg's predicates are pydantic models: mypy sees the field-derived signatures that
# pydantic's dataclass_transform synthesizes, not their real __init__(term, literal). These
# casts state the real ones once instead of silencing each call.
_Unary = Callable[[str], BooleanExpression]
_Binary = Callable[[str, Literal[Any]], BooleanExpression]
_SetOf = Callable[[str, list[Literal[Any]]], BooleanExpression]
_COMPARISONS: dict[str, _Binary] = {
    "=": cast(_Binary, EqualTo),
    "!=": cast(_Binary, NotEqualTo),
    "<": cast(_Binary, LessThan),
    "<=": cast(_Binary, LessThanOrEqual),
    ">": cast(_Binary, GreaterThan),
    ">=": cast(_Binary, GreaterThanOrEqual),
}
_IS_NULL, _NOT_NULL = cast(_Unary, IsNull), cast(_Unary, NotNull)
_IS_NAN, _NOT_NAN = cast(_Unary, IsNaN), cast(_Unary, NotNaN)
_IN, _NOT_IN = cast(_SetOf, In), cast(_SetOf, NotIn)
_STARTS_WITH, _NOT_STARTS_WITH = cast(_Binary, StartsWith), cast(_Binary, NotStartsWith)


def _chain(
    combine: type[And] | type[Or], operands: Sequence[BooleanExpression]
) -> BooleanExpression:
    """Combines a chain of AND or OR operands.

    pyiceberg's n-ary ``And(a, b, c, ...)`` / ``Or(...)`` build a balanced tree, so a chain of
    thousands of ORs is a tree of logarithmic depth (its visitors recurse per level).
    """
    if len(operands) == 1:
        return operands[0]
    return combine(operands[0], operands[1], *operands[2:])


def _measure(expression: BooleanExpression) -> tuple[int, int]:
    """The height of an expression tree and its number of leaves, computed without recursion."""
    height = leaves = 0
    stack: list[tuple[BooleanExpression, int]] = [(expression, 1)]
    while stack:
        node, level = stack.pop()
        height = max(height, level)
        if isinstance(node, (And, Or)):
            stack.append((node.left, level + 1))
            stack.append((node.right, level + 1))
        elif isinstance(node, Not):
            stack.append((node.child, level + 1))
        else:
            leaves += 1
    return height, leaves


def _merge_equalities(operands: list[BooleanExpression]) -> list[BooleanExpression]:
    """OR operands with a column's many equalities and IN lists merged into one ``IN``.

    ``id = 1 OR id = 2 OR ...`` is how clients spell a list of keys. As an OR tree of
    thousands of leaves, later steps (pyarrow's evaluation of each data file above all) cost
    more than linear time in the number of terms; one ``IN`` costs one set lookup per value.
    OR is commutative, so a merged group takes the place of its first member. Groups smaller
    than ``_MERGE_AT`` stay as written: cheap either way, and clearer in a scan plan.
    """
    groups: dict[str, list[BooleanExpression]] = {}
    for operand in operands:
        if isinstance(operand, (EqualTo, In)) and isinstance(operand.term, Reference):
            groups.setdefault(operand.term.name, []).append(operand)
    merging = {name for name, group in groups.items() if len(group) >= _MERGE_AT}
    if not merging:
        return operands
    result: list[BooleanExpression] = []
    for operand in operands:
        if not (
            isinstance(operand, (EqualTo, In))
            and isinstance(operand.term, Reference)
            and operand.term.name in merging
        ):
            result.append(operand)
            continue
        name = operand.term.name
        group = groups[name]
        if operand is not group[0]:
            continue
        values: set[Literal[Any]] = set()
        for member in group:
            if isinstance(member, EqualTo):
                values.add(member.literal)
            elif isinstance(member, In):
                values.update(member.literals)
        result.append(_IN(name, list(values)))
    return result


class _Parser:
    def __init__(self, tokens: Iterator[_Token], schema: Schema) -> None:
        self._source = tokens
        self._tokens: list[_Token] = []  # read so far; a column's text is sliced from here
        self._i = 0
        self._struct = schema.as_struct()  # as_struct() builds a new object per call
        self._resolved: dict[tuple[str, ...], tuple[str, NestedField]] = {}

    # token helpers

    def _peek(self, ahead: int = 0) -> _Token:
        while len(self._tokens) <= self._i + ahead:
            if self._tokens and self._tokens[-1].kind is _Kind.END:
                return self._tokens[-1]
            self._tokens.append(next(self._source))
        return self._tokens[self._i + ahead]

    def _next(self) -> _Token:
        token = self._peek()
        if token.kind is not _Kind.END:
            self._i += 1
        return token

    @staticmethod
    def _is_keyword(token: _Token, *words: str) -> bool:
        return token.kind is _Kind.WORD and token.value.upper() in words

    def _starts_column(self, token: _Token) -> bool:
        if token.kind is _Kind.QUOTED:
            return True
        if token.kind is not _Kind.WORD or token.value.upper() in _RESERVED:
            return False
        # DATE '...' and TIMESTAMP '...' are typed values; a bare DATE is a column.
        return not self._is_typed_literal(token)

    def _is_typed_literal(self, token: _Token) -> bool:
        """Whether ``token`` (the current one) starts ``DATE '...'`` or ``TIMESTAMP '...'``."""
        return self._is_keyword(token, "DATE", "TIMESTAMP") and self._peek(1).kind is _Kind.STRING

    # grammar

    def parse(self) -> BooleanExpression:
        expression = self._or_expr(0)
        token = self._peek()
        if token.kind is _Kind.RPAREN:
            raise _at(token, "unmatched ')'")
        if token.kind is not _Kind.END:
            raise _expected(token, "AND, OR or the end of the filter")
        return expression

    def _or_expr(self, depth: int) -> BooleanExpression:
        operands = [self._and_expr(depth)]
        while self._is_keyword(self._peek(), "OR"):
            self._next()
            operands.append(self._and_expr(depth))
        return _chain(Or, _merge_equalities(operands) if len(operands) > 1 else operands)

    def _and_expr(self, depth: int) -> BooleanExpression:
        operands = [self._not_expr(depth)]
        while self._is_keyword(self._peek(), "AND"):
            self._next()
            operands.append(self._not_expr(depth))
        return _chain(And, operands)

    def _not_expr(self, depth: int) -> BooleanExpression:
        # NOT NOT NOT ... is read in a loop, not by recursion, and collapses (pyiceberg's Not
        # of a Not is its child), so only parentheses count towards the nesting depth.
        negations = 0
        while self._is_keyword(self._peek(), "NOT"):
            self._next()
            negations += 1
        expression = self._primary(depth)
        return Not(expression) if negations % 2 else expression

    def _primary(self, depth: int) -> BooleanExpression:
        token = self._peek()
        if token.kind is _Kind.LPAREN:
            if depth + 1 > MAX_NESTING_DEPTH:
                raise _at(token, f"the filter nests deeper than {MAX_NESTING_DEPTH} levels")
            self._next()
            expression = self._or_expr(depth + 1)
            closing = self._peek()
            if closing.kind is not _Kind.RPAREN:
                raise _expected(closing, "')'")
            self._next()
            return expression
        if self._is_keyword(token, "TRUE", "FALSE") and self._peek(1).kind is not _Kind.OP:
            self._next()
            return AlwaysTrue() if token.value.upper() == "TRUE" else AlwaysFalse()
        if self._starts_column(token):
            return self._predicate(self._column())
        if token.kind in (_Kind.NUMBER, _Kind.STRING) or self._is_keyword(
            token, "TRUE", "FALSE", "DATE", "TIMESTAMP"
        ):
            return self._value_first_comparison()
        if self._is_keyword(token, "NULL"):
            raise _at(token, "NULL can only be tested with IS NULL or IS NOT NULL")
        raise _expected(token, "a condition: a column name, '(', NOT, TRUE or FALSE")

    def _value_first_comparison(self) -> BooleanExpression:
        value = self._value("a value")
        op = self._peek()
        if op.kind is not _Kind.OP:
            raise _expected(op, "a comparison operator after the value")
        self._next()
        if not self._starts_column(self._peek()):
            raise _expected(
                self._peek(),
                f"a column name after {op.text!r}: a comparison needs a column on one side",
            )
        column = self._column()
        return _COMPARISONS[_FLIPPED[op.value]](column.name, _typed(value, column))

    def _column(self) -> _Column:
        start = self._i
        first = self._peek()
        parts = [self._next().value]
        while self._peek().kind is _Kind.DOT:
            dot = self._next()
            token = self._peek()
            if token.kind not in (_Kind.WORD, _Kind.QUOTED):
                raise _expected(token, f"a field name after {dot.text!r}")
            parts.append(self._next().value)
        written = "".join(token.text for token in self._tokens[start : self._i])
        span = _Token(first.kind, written, written, first.pos)
        key = tuple(parts)
        if key not in self._resolved:
            self._resolved[key] = _resolve(self._struct, parts, span)
        name, field = self._resolved[key]
        return _Column(name, field.field_type, span)

    def _predicate(self, column: _Column) -> BooleanExpression:
        token = self._peek()
        if token.kind is _Kind.OP:
            self._next()
            value = self._value(f"a value after {token.text!r}")
            return _COMPARISONS[token.value](column.name, _typed(value, column))
        if self._is_keyword(token, "IS"):
            self._next()
            negated = self._is_keyword(self._peek(), "NOT")
            if negated:
                self._next()
            what = self._peek()
            if self._is_keyword(what, "NULL"):
                self._next()
                return _NOT_NULL(column.name) if negated else _IS_NULL(column.name)
            if self._is_keyword(what, "NAN"):
                if not isinstance(column.type, (FloatType, DoubleType)):
                    raise _at(
                        what,
                        f"column {column.name!r} is {column.type}; NaN checks need a float "
                        "or double column",
                    )
                self._next()
                return _NOT_NAN(column.name) if negated else _IS_NAN(column.name)
            raise _expected(what, "NULL or NAN after IS NOT" if negated else "NULL or NAN after IS")
        negated = self._is_keyword(token, "NOT")
        if negated:
            self._next()
            token = self._peek()
            if not self._is_keyword(token, "IN", "BETWEEN", "LIKE"):
                raise _expected(token, "IN, BETWEEN or LIKE after NOT")
        if self._is_keyword(token, "IN"):
            self._next()
            return self._in_list(column, negated)
        if self._is_keyword(token, "BETWEEN"):
            self._next()
            low = _typed(self._value("a value after BETWEEN"), column)
            and_token = self._peek()
            if not self._is_keyword(and_token, "AND"):
                raise _expected(and_token, "AND after the lower bound of BETWEEN")
            self._next()
            high = _typed(self._value("a value after BETWEEN ... AND"), column)
            if negated:
                return Or(_COMPARISONS["<"](column.name, low), _COMPARISONS[">"](column.name, high))
            return And(_COMPARISONS[">="](column.name, low), _COMPARISONS["<="](column.name, high))
        if self._is_keyword(token, "LIKE"):
            self._next()
            return self._like(column, negated)
        raise _expected(
            token,
            f"a comparison operator, IS, IN, BETWEEN or LIKE after column {column.name!r}",
        )

    def _in_list(self, column: _Column, negated: bool) -> BooleanExpression:
        opening = self._peek()
        if opening.kind is not _Kind.LPAREN:
            raise _expected(opening, "'(' after IN")
        self._next()
        values: list[Literal[Any]] = []
        while True:
            value = self._value("a value in the IN list")
            if len(values) >= MAX_IN_VALUES:
                raise _at(value.token, f"an IN list may hold at most {MAX_IN_VALUES} values")
            values.append(_typed(value, column))
            token = self._peek()
            if token.kind is _Kind.COMMA:
                self._next()
                continue
            if token.kind is _Kind.RPAREN:
                self._next()
                break
            raise _expected(token, "',' or ')' in the IN list")
        # In/NotIn of one value come back from pyiceberg as EqualTo/NotEqualTo.
        return _NOT_IN(column.name, values) if negated else _IN(column.name, values)

    def _like(self, column: _Column, negated: bool) -> BooleanExpression:
        token = self._peek()
        if token.kind is not _Kind.STRING:
            raise _expected(token, "a quoted pattern after LIKE")
        self._next()
        if not isinstance(column.type, StringType):
            raise _at(token, f"column {column.name!r} is {column.type}; LIKE needs a string column")
        prefix = StringLiteral(_like_prefix(token))
        return (_NOT_STARTS_WITH if negated else _STARTS_WITH)(column.name, prefix)

    def _value(self, what: str) -> _Value:
        token = self._peek()
        if token.kind is _Kind.NUMBER:
            self._next()
            is_int = not any(c in token.text for c in ".eE")
            return _Value("int" if is_int else "number", token)
        if token.kind is _Kind.STRING:
            self._next()
            return _Value("string", token)
        if self._is_keyword(token, "TRUE", "FALSE"):
            self._next()
            return _Value("bool", token, token.value.upper() == "TRUE")
        if self._is_typed_literal(token):
            self._next()
            string = self._next()
            if token.value.upper() == "DATE":
                return _Value("date", string, _parse_date(string))
            return _Value("timestamp", string, _parse_timestamp(string))
        if self._is_keyword(token, "NULL"):
            raise _at(token, "compare with NULL using IS NULL or IS NOT NULL")
        if self._starts_column(token):
            raise _at(
                token, f"expected {what}, not a column: comparing two columns is not supported"
            )
        raise _expected(token, what)


# --- columns and values ----------------------------------------------------------------------


def _resolve(struct: StructType, parts: list[str], token: _Token) -> tuple[str, NestedField]:
    """Finds a column by its path: case-sensitively, else case-insensitively if unambiguous."""
    written = ".".join(parts)
    for case_sensitive in (True, False):
        matches: list[list[NestedField]] = []
        inside: list[str] = []  # paths that ran into a list or map
        _walk(struct, parts, [], case_sensitive, matches, inside)
        if len(matches) == 1:
            path = matches[0]
            name = ".".join(f.name for f in path)
            target = path[-1]
            if isinstance(target.field_type, (StructType, ListType, MapType)):
                kind = type(target.field_type).__name__.removesuffix("Type").lower()
                raise _at(
                    token,
                    f"column {name!r} is a {kind}; a row filter can only test primitive "
                    "columns (struct fields by their dotted name)",
                )
            return name, target
        if len(matches) > 1:
            names = sorted(".".join(f.name for f in path) for path in matches)
            raise _at(
                token,
                f"column name {written!r} is ambiguous ({', '.join(map(repr, names))}); "
                "write it with the exact case",
            )
        if inside:
            raise _at(
                token,
                f"{inside[0]!r} is a list or map; a row filter can only test top-level columns "
                "and struct fields",
            )
    raise _at(token, f"no column named {written!r}")


def _walk(
    struct: StructType,
    parts: list[str],
    path: list[NestedField],
    case_sensitive: bool,
    matches: list[list[NestedField]],
    inside: list[str],
) -> None:
    part, rest = parts[0], parts[1:]
    for candidate in struct.fields:
        same = (
            candidate.name == part
            if case_sensitive
            else candidate.name.casefold() == part.casefold()
        )
        if not same:
            continue
        here = [*path, candidate]
        if not rest:
            matches.append(here)
        elif isinstance(candidate.field_type, StructType):
            _walk(candidate.field_type, rest, here, case_sensitive, matches, inside)
        elif isinstance(candidate.field_type, (ListType, MapType)):
            inside.append(".".join(f.name for f in here))


def _like_prefix(token: _Token) -> str:
    r"""The prefix of a ``'prefix%'`` pattern; ``\%``, ``\_`` and ``\\`` are literal."""
    pattern = token.value
    prefix: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_\\":
            prefix.append(pattern[i + 1])
            i += 2
            continue
        if ch == "%" and i == len(pattern) - 1:
            return "".join(prefix)
        if ch in "%_":
            break
        prefix.append(ch)
        i += 1
    raise _at(
        token,
        "unsupported LIKE pattern: only a prefix match ending in '%' (like 'abc%') is "
        "supported; escape a literal '%' or '_' with '\\', and use = for an exact match",
    )


def _parse_date(token: _Token) -> date:
    if _DATE.fullmatch(token.value):
        try:
            return date.fromisoformat(token.value)
        except ValueError:
            pass
    raise _at(token, "not a valid date, expected 'YYYY-MM-DD'")


def _parse_timestamp(token: _Token) -> datetime:
    if _TIMESTAMP.fullmatch(token.value):
        try:
            return datetime.fromisoformat(token.value)
        except ValueError:
            pass
    raise _at(
        token,
        "not a valid timestamp, expected 'YYYY-MM-DD hh:mm:ss[.ffffff]' with an optional "
        "'T' separator and UTC offset ('Z' or '+hh:mm')",
    )


def _parse_time(token: _Token) -> time:
    if _TIME_OF_DAY.fullmatch(token.value):
        try:
            return time.fromisoformat(token.value)
        except ValueError:
            pass
    raise _at(token, "not a valid time of day, expected 'hh:mm:ss[.ffffff]'")


def _typed(value: _Value, column: _Column) -> Literal[Any]:
    """The literal of ``value`` in the type of ``column``, or an error at the value."""
    kind, token, ctype = value.kind, value.token, column.type

    def mismatch(expected: str) -> _Error:
        return _at(token, f"column {column.name!r} is {ctype}, expected {expected}")

    def out_of_range() -> _Error:
        return _at(token, f"value out of range for column {column.name!r} of type {ctype}")

    if isinstance(ctype, (IntegerType, LongType)):
        if kind != "int":
            raise mismatch("an integer")
        if len(token.text) > _MAX_INTEGER_DIGITS:
            raise out_of_range()
        number = int(token.text)
        low, high = _INT_RANGES["int" if isinstance(ctype, IntegerType) else "long"]
        if not low <= number <= high:
            raise out_of_range()
        return LongLiteral(number)
    if isinstance(ctype, (FloatType, DoubleType)):
        if kind not in ("int", "number"):
            raise mismatch("a number")
        real = float(token.text)
        limit = FloatType.max if isinstance(ctype, FloatType) else math.inf
        if not math.isfinite(real) or abs(real) > limit:
            raise out_of_range()
        return DoubleLiteral(real)
    if isinstance(ctype, DecimalType):
        if kind not in ("int", "number"):
            raise mismatch("a number")
        return DecimalLiteral(_decimal(token, ctype, column.name))
    if isinstance(ctype, StringType):
        if kind != "string":
            raise mismatch("a quoted string")
        return StringLiteral(token.value)
    if isinstance(ctype, BooleanType):
        if kind != "bool":
            raise mismatch("TRUE or FALSE")
        return BooleanLiteral(bool(value.parsed))
    if isinstance(ctype, DateType):
        if kind == "string":
            return DateLiteral(date_to_days(_parse_date(token)))
        if kind == "date" and isinstance(value.parsed, date):
            return DateLiteral(date_to_days(value.parsed))
        raise mismatch("a date such as DATE '2024-01-31' or '2024-01-31'")
    if isinstance(ctype, (TimestampType, TimestamptzType)):
        if kind == "string":
            moment = _parse_timestamp(token)
        elif kind == "timestamp" and isinstance(value.parsed, datetime):
            moment = value.parsed
        elif kind == "date" and isinstance(value.parsed, date):
            moment = datetime.combine(value.parsed, time())  # midnight
        else:
            raise mismatch("a timestamp such as TIMESTAMP '2024-01-31 10:00:00'")
        if isinstance(ctype, TimestamptzType):
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)  # no offset given: UTC
        elif moment.tzinfo is not None:
            raise _at(
                token,
                f"column {column.name!r} is a timestamp without time zone; "
                "write the value without a UTC offset",
            )
        return TimestampLiteral(datetime_to_micros(moment))
    if isinstance(ctype, TimeType):
        if kind != "string":
            raise mismatch("a time of day such as '10:30:00'")
        return TimeLiteral(time_to_micros(_parse_time(token)))
    if isinstance(ctype, UUIDType):
        if kind != "string":
            raise mismatch("a quoted UUID")
        try:
            return UUIDLiteral(UUID(token.value).bytes)
        except ValueError:
            raise _at(token, "not a valid UUID") from None
    raise _at(
        token,
        f"column {column.name!r} is {ctype}; a row filter cannot compare it with a value "
        "(only IS NULL / IS NOT NULL)",
    )


def _decimal(token: _Token, ctype: DecimalType, name: str) -> Decimal:
    """The value as a Decimal with exactly the column's scale (pyiceberg binds no other)."""
    exact = Decimal(token.text)
    if exact != 0 and exact.adjusted() >= ctype.precision - ctype.scale:
        raise _at(token, f"value out of range for column {name!r} of type {ctype}")
    try:
        # Iceberg decimals have up to 38 digits, more than the default context's 28.
        with localcontext() as context:
            context.prec = 2 * _MAX_DECIMAL_PRECISION
            scaled = exact.quantize(Decimal(1).scaleb(-ctype.scale))
    except InvalidOperation:
        scaled = None
    if scaled is None or scaled != exact:
        raise _at(
            token,
            f"column {name!r} is {ctype}: the value may have at most {ctype.scale} digits "
            "after the decimal point",
        )
    return scaled
