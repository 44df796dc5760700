"""Filter pushdown: DuckDB's pushed-down predicates as pyiceberg row filters.

Only predicates whose SQL meaning is exactly that of pyiceberg's row filter are translated
(see ``to_iceberg``); DuckDB does not re-apply a predicate a source accepted, so anything
else stays with DuckDB.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from duckdb._sources.nodes import Binary, Col, In, Lit, Node, Postfix
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThan,
    GreaterThanOrEqual,
    IsNull,
    LessThan,
    LessThanOrEqual,
    LiteralPredicate,
    NotNull,
    Reference,
)
from pyiceberg.expressions import In as IcebergIn
from pyiceberg.expressions.literals import (
    BooleanLiteral,
    DateLiteral,
    DecimalLiteral,
    Literal,
    LongLiteral,
    StringLiteral,
    TimestampLiteral,
)
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
)
from pyiceberg.utils.datetime import date_to_days, datetime_to_micros

# DuckDB's literal type names that compare exactly like the Iceberg type they map to (a
# float is left out: NaN orders differently in DuckDB and Arrow).
_PUSHABLE_TYPES: dict[str, type[IcebergType]] = {
    "BOOLEAN": BooleanType,
    "INTEGER": IntegerType,
    "BIGINT": LongType,
    "VARCHAR": StringType,
    "DATE": DateType,
    "TIMESTAMP": TimestampType,
    "TIMESTAMP WITH TIME ZONE": TimestamptzType,
}
_COMPARISONS: dict[str, type[LiteralPredicate]] = {
    "=": EqualTo,
    "<": LessThan,
    "<=": LessThanOrEqual,
    ">": GreaterThan,
    ">=": GreaterThanOrEqual,
}


def _literal(constant: Node, field_type: IcebergType) -> Literal[Any] | None:
    """The Iceberg literal of a DuckDB constant, when it is exactly a value of the column."""
    if not isinstance(constant, Lit):
        return None
    value, type_text = constant.value, constant.type
    expected = _PUSHABLE_TYPES.get(type_text)
    if isinstance(field_type, DecimalType):
        if type_text != f"DECIMAL({field_type.precision},{field_type.scale})":
            return None
        return DecimalLiteral(value) if isinstance(value, Decimal) else None
    if expected is None or not isinstance(field_type, expected):
        return None
    if isinstance(value, bool):
        return BooleanLiteral(value) if type_text == "BOOLEAN" else None
    if type_text in ("INTEGER", "BIGINT", "TIMESTAMP WITH TIME ZONE"):
        if not isinstance(value, int):
            return None
        return TimestampLiteral(value) if type_text.endswith("ZONE") else LongLiteral(value)
    if type_text == "VARCHAR":
        return StringLiteral(value) if isinstance(value, str) else None
    if type_text == "DATE":
        if isinstance(value, date) and not isinstance(value, datetime):
            return DateLiteral(date_to_days(value))
        return None
    if isinstance(value, datetime) and value.tzinfo is None:
        return TimestampLiteral(datetime_to_micros(value))
    return None


def to_iceberg(node: Node, types: dict[str, IcebergType]) -> BooleanExpression | None:
    """A pyiceberg filter that keeps exactly the rows DuckDB's predicate keeps, or None.

    DuckDB does not re-apply a predicate a source accepts, so only shapes whose SQL meaning
    (NULL never matches) is the same in pyiceberg's row filter are translated: =, <, <=, >,
    >= and IN on a top-level column with an exactly typed constant, IS [NOT] NULL, and AND
    of those. The rest stays with DuckDB: pyiceberg keeps NULLs for != and NOT IN when a
    data file predates the column (it evaluates them as true), and OR and NOT are rare in
    pushed-down filters.
    """
    if isinstance(node, Binary):
        if node.op.upper() == "AND":
            left, right = to_iceberg(node.left, types), to_iceberg(node.right, types)
            return And(left, right) if left is not None and right is not None else None
        compare = _COMPARISONS.get(node.op)
        if compare is None or not isinstance(node.left, Col) or len(node.left.parts) != 1:
            return None
        column = node.left.parts[0]
        field_type = types.get(column)
        value = _literal(node.right, field_type) if field_type is not None else None
        return compare(term=Reference(column), literal=value) if value is not None else None
    if isinstance(node, Postfix) and isinstance(node.operand, Col):
        if len(node.operand.parts) != 1 or node.operand.parts[0] not in types:
            return None
        op = node.op.upper()
        if op == "IS NULL":
            return IsNull(term=Reference(node.operand.parts[0]))
        if op == "IS NOT NULL":
            return NotNull(term=Reference(node.operand.parts[0]))
        return None
    if isinstance(node, In) and isinstance(node.operand, Col) and len(node.operand.parts) == 1:
        column = node.operand.parts[0]
        field_type = types.get(column)
        if field_type is None or not node.values:
            return None
        values = [_literal(v, field_type) for v in node.values]
        if any(v is None for v in values):
            return None
        return IcebergIn(term=Reference(column), values={v for v in values if v is not None})
    return None
