"""The ReadRows row filter: SQL-like text to pyiceberg expressions, and every way it can fail."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
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
    StartsWith,
)
from pyiceberg.expressions.literals import TimeLiteral, UUIDLiteral
from pyiceberg.expressions.visitors import bind, rewrite_not
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
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

from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.row_filter import (
    MAX_FILTER_BYTES,
    MAX_IN_VALUES,
    MAX_NESTING_DEPTH,
    parse_row_filter,
)

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "amount", DecimalType(10, 2)),
    NestedField(3, "region", StringType()),
    NestedField(4, "note", StringType()),
    NestedField(5, "score", DoubleType()),
    NestedField(6, "ratio", FloatType()),
    NestedField(7, "day", DateType()),
    NestedField(8, "ts", TimestampType()),
    NestedField(9, "tstz", TimestamptzType()),
    NestedField(
        10,
        "address",
        StructType(
            NestedField(11, "city", StringType()),
            NestedField(12, "zip", IntegerType()),
            NestedField(13, "Geo", StructType(NestedField(14, "lat", DoubleType()))),
        ),
    ),
    NestedField(15, "Weird Name", StringType()),
    NestedField(16, "flag", BooleanType()),
    NestedField(17, "uid", UUIDType()),
    NestedField(18, "tags", ListType(19, StringType())),
    NestedField(20, "at", TimeType()),
    NestedField(21, "count", IntegerType()),
    NestedField(22, "date", DateType()),  # a column named like a keyword
    NestedField(23, "attrs", MapType(24, StringType(), 25, StringType())),
    NestedField(26, "blob", BinaryType()),
    NestedField(27, 'say "hi"', StringType()),
)

EQ_1 = EqualTo("id", 1)
EQ_2 = EqualTo("id", 2)
EQ_3 = EqualTo("id", 3)
EQ_4 = EqualTo("id", 4)

GOOD: list[tuple[str, BooleanExpression]] = [
    # the examples of the issue
    (
        "amount > 10 AND region = 'eu'",
        And(GreaterThan("amount", Decimal("10.00")), EqualTo("region", "eu")),
    ),
    ("note IS NULL", IsNull("note")),
    ("note IS NOT NULL", NotNull("note")),
    ("id IN (1, 2, 3)", In("id", [1, 2, 3])),
    ("id NOT IN (1, 2)", NotIn("id", [1, 2])),
    ("id IN (7)", EqualTo("id", 7)),  # pyiceberg folds a one-value IN
    # every operator, keywords in any case
    ("id = 1", EQ_1),
    ("id == 1", EQ_1),
    ("id != 1", NotEqualTo("id", 1)),
    ("id <> 1", NotEqualTo("id", 1)),
    ("id < 1", LessThan("id", 1)),
    ("id <= 1", LessThanOrEqual("id", 1)),
    ("id > 1", GreaterThan("id", 1)),
    ("id >= 1", GreaterThanOrEqual("id", 1)),
    ("id=1 and id=2", And(EQ_1, EQ_2)),
    ("  id=1\n\tOr id=2  ", Or(EQ_1, EQ_2)),
    # precedence: NOT over AND over OR; parentheses override
    ("id = 1 OR id = 2 AND id = 3", Or(EQ_1, And(EQ_2, EQ_3))),
    ("(id = 1 OR id = 2) AND id = 3", And(Or(EQ_1, EQ_2), EQ_3)),
    ("NOT id = 1 OR id = 2", Or(Not(EQ_1), EQ_2)),
    ("NOT (id = 1 OR id = 2)", Not(Or(EQ_1, EQ_2))),
    ("NOT NOT id = 1", EQ_1),
    ("not not not id = 1", Not(EQ_1)),
    ("((((id = 1))))", EQ_1),
    ("id = 1 AND id = 2 AND id = 3", And(EQ_1, EQ_2, EQ_3)),
    # longer chains are balanced (depth stays logarithmic)
    ("id = 1 OR id = 2 OR id = 3 OR id = 4", Or(Or(EQ_1, EQ_2), Or(EQ_3, EQ_4))),
    # value first: the operator is flipped
    ("10 < id", GreaterThan("id", 10)),
    ("10 <= id", GreaterThanOrEqual("id", 10)),
    ("10 > id", LessThan("id", 10)),
    ("10 >= id", LessThanOrEqual("id", 10)),
    ("10 = id", EqualTo("id", 10)),
    ("'eu' <> region", NotEqualTo("region", "eu")),
    ("TRUE = flag", EqualTo("flag", True)),
    ("DATE '2024-01-01' <= day", GreaterThanOrEqual("day", date(2024, 1, 1))),
    # BETWEEN, inclusive; NOT BETWEEN as its complement
    ("id BETWEEN 1 AND 5", And(GreaterThanOrEqual("id", 1), LessThanOrEqual("id", 5))),
    ("id NOT BETWEEN 1 AND 5", Or(LessThan("id", 1), GreaterThan("id", 5))),
    (
        "id BETWEEN 1 AND 5 AND region = 'eu'",
        And(And(GreaterThanOrEqual("id", 1), LessThanOrEqual("id", 5)), EqualTo("region", "eu")),
    ),
    # LIKE 'prefix%'
    ("region LIKE 'eu%'", StartsWith("region", "eu")),
    ("region NOT LIKE 'eu%'", NotStartsWith("region", "eu")),
    ("region like 'e\\_u\\%%'", StartsWith("region", "e_u%")),
    ("region LIKE '%'", StartsWith("region", "")),
    # nested and quoted names; case-insensitive fallback
    ("address.city = 'x'", EqualTo("address.city", "x")),
    ("address . zip = 10115", EqualTo("address.zip", 10115)),
    ("address.Geo.lat > 52.5", GreaterThan("address.Geo.lat", 52.5)),
    ('"address"."city" = \'x\'', EqualTo("address.city", "x")),
    ("\"Weird Name\" = 'a'", EqualTo("Weird Name", "a")),
    ('"say ""hi""" IS NULL', IsNull('say "hi"')),
    ("ID = 1", EQ_1),
    ("ADDRESS.geo.LAT IS NULL", IsNull("address.Geo.lat")),
    ("date = '2024-01-01'", EqualTo("date", date(2024, 1, 1))),
    ("date = DATE '2024-01-01'", EqualTo("date", date(2024, 1, 1))),
    # strings
    ("region = 'it''s'", EqualTo("region", "it's")),
    ("region = ''", EqualTo("region", "")),
    ("region = 'AND (x'", EqualTo("region", "AND (x")),
    ("region = 'ünïcödé'", EqualTo("region", "ünïcödé")),
    # numbers: negative, decimal, exponent; ints widen to floating and decimal columns
    ("id > -5", GreaterThan("id", -5)),
    ("id = 9223372036854775807", EqualTo("id", 2**63 - 1)),
    ("id = -9223372036854775808", EqualTo("id", -(2**63))),
    ("score > -1.5e3", GreaterThan("score", -1500.0)),
    ("score < 2", LessThan("score", 2.0)),
    ("score >= 0.25", GreaterThanOrEqual("score", 0.25)),
    ("ratio < 1E-2", LessThan("ratio", 0.01)),
    ("amount = 10.5", EqualTo("amount", Decimal("10.50"))),
    ("amount >= -0.01", GreaterThanOrEqual("amount", Decimal("-0.01"))),
    ("amount < 1.5e2", LessThan("amount", Decimal("150.00"))),
    ("count = -2147483648", EqualTo("count", -(2**31))),
    # booleans, dates, times, timestamps, uuids
    ("flag = TRUE", EqualTo("flag", True)),
    ("flag != false", NotEqualTo("flag", False)),
    ("day = DATE '2024-02-29'", EqualTo("day", date(2024, 2, 29))),
    ("day < '2024-01-01'", LessThan("day", date(2024, 1, 1))),
    (
        "ts >= TIMESTAMP '2024-01-01 10:00:00'",
        GreaterThanOrEqual("ts", datetime(2024, 1, 1, 10)),
    ),
    ("ts < '2024-01-01T10:00:00.123456'", LessThan("ts", datetime(2024, 1, 1, 10, 0, 0, 123456))),
    ("ts > DATE '2024-01-01'", GreaterThan("ts", datetime(2024, 1, 1))),
    ("ts > '2024-01-01'", GreaterThan("ts", datetime(2024, 1, 1))),
    (
        "tstz >= TIMESTAMP '2024-01-01T10:00:00+00:00'",
        GreaterThanOrEqual("tstz", datetime(2024, 1, 1, 10, tzinfo=UTC)),
    ),
    (
        "tstz >= '2024-01-01 12:00:00+02:00'",
        GreaterThanOrEqual("tstz", datetime(2024, 1, 1, 10, tzinfo=UTC)),
    ),
    ("tstz < '2024-01-01 10:00Z'", LessThan("tstz", datetime(2024, 1, 1, 10, tzinfo=UTC))),
    # no offset on a timestamptz column means UTC
    ("tstz < '2024-01-01 10:00:00'", LessThan("tstz", datetime(2024, 1, 1, 10, tzinfo=UTC))),
    ("at >= '10:30'", GreaterThanOrEqual("at", TimeLiteral(37_800_000_000))),
    (
        "uid = '12345678-1234-5678-1234-567812345678'",
        EqualTo("uid", UUIDLiteral(UUID("12345678-1234-5678-1234-567812345678").bytes)),
    ),
    # NaN, null checks on any primitive, constants
    ("score IS NAN", IsNaN("score")),
    ("ratio IS NOT NaN", NotNaN("ratio")),
    ("blob IS NOT NULL", NotNull("blob")),
    ("TRUE", AlwaysTrue()),
    ("false", AlwaysFalse()),
    ("NOT TRUE", AlwaysFalse()),
    ("id = 1 AND TRUE", EQ_1),
    ("", AlwaysTrue()),
    ("   \n\t ", AlwaysTrue()),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[text for text, _ in GOOD])
def test_good_filters_parse_to_the_expected_expression(
    text: str, expected: BooleanExpression
) -> None:
    expression = parse_row_filter(text, SCHEMA)
    assert expression == expected, repr(expression)
    # Typed right for its columns: binds (case-sensitively, with the schema's names) as it is.
    bind(SCHEMA, rewrite_not(expression), case_sensitive=True)


# (filter, the start of the description, a phrase it must contain)
BAD: list[tuple[str, str, str]] = [
    ("amount2 > 1", "at position 1 ('amount2'): ", "no column named 'amount2'"),
    ("id = 1 AND nope IS NULL", "at position 12 ('nope'): ", "no column named 'nope'"),
    ("address.town = 'x'", "at position 1 ('address.town'): ", "no column named 'address.town'"),
    ("amount > AND id = 1", "at position 10 ('AND'): ", "expected a value after '>'"),
    ("amount >", "at position 9: ", "unexpected end of filter, expected a value after '>'"),
    ("id = 1 AND", "at position 11: ", "unexpected end of filter, expected a condition"),
    ("id = 1 OR OR id = 2", "at position 11 ('OR'): ", "expected a condition"),
    ("(id = 1", "at position 8: ", "unexpected end of filter, expected ')'"),
    ("((id = 1) OR (id = 2)", "at position 22: ", "unexpected end of filter, expected ')'"),
    ("id = 1)", "at position 7 (')'): ", "unmatched ')'"),
    ("()", "at position 2 (')'): ", "expected a condition"),
    ("id = 'a'", "at position 6 (\"'a'\"): ", "column 'id' is long, expected an integer"),
    ("id = 1.5", "at position 6 ('1.5'): ", "expected an integer"),
    ("region = 5", "at position 10 ('5'): ", "column 'region' is string, expected a quoted string"),
    ("flag = 'true'", "at position 8 (\"'true'\"): ", "expected TRUE or FALSE"),
    ("score > 'high'", "at position 9 (\"'high'\"): ", "expected a number"),
    ("day = '2024-13-01'", "at position 7 (\"'2024-13-01'\"): ", "not a valid date"),
    ("day = DATE 'soon'", "at position 12 (\"'soon'\"): ", "not a valid date"),
    ("day = 20240101", "at position 7 ('20240101'): ", "expected a date"),
    ("day = TIMESTAMP '2024-01-01 10:00'", "at position 17 ", "expected a date"),
    ("ts = 'yesterday'", "at position 6 (\"'yesterday'\"): ", "not a valid timestamp"),
    ("ts = '2024-01-01 25:00'", "at position 6 ", "not a valid timestamp"),
    ("ts = '2024-01-01T00:00Z'", "at position 6 ", "timestamp without time zone"),
    ("uid = 'not-a-uuid'", "at position 7 ", "not a valid UUID"),
    ("at = '25:00'", "at position 6 ", "not a valid time of day"),
    ("amount = 1.234", "at position 10 ('1.234'): ", "at most 2 digits after the decimal point"),
    ("amount = 123456789", "at position 10 ", "out of range for column 'amount'"),
    ("count = 2147483648", "at position 9 ", "out of range for column 'count' of type int"),
    ("id = 99999999999999999999", "at position 6 ", "out of range for column 'id' of type long"),
    ("id = " + "9" * 5000, "at position 6 ", "out of range"),
    ("ratio = 1e39", "at position 9 ", "out of range for column 'ratio' of type float"),
    ("score = 1e400", "at position 9 ", "out of range"),
    ("blob = 'x'", "at position 8 ", "cannot compare it with a value"),
    ("region = 'eu", "unterminated string starting at position 10", ""),
    ("\"Weird Name = 'a'", "unterminated quoted identifier starting at position 1", ""),
    ('"" = 1', "at position 1 ('\"\"'): ", "must not be empty"),
    ("id = 1 foo", "at position 8 ('foo'): ", "expected AND, OR or the end of the filter"),
    ("id = 1 2", "at position 8 ('2'): ", "expected AND, OR or the end of the filter"),
    ("1 = 1", "at position 5 ('1'): ", "a comparison needs a column on one side"),
    ("'a' = 'a'", "at position 7 (\"'a'\"): ", "a comparison needs a column on one side"),
    ("1", "at position 2: ", "expected a comparison operator after the value"),
    ("id = region", "at position 6 ('region'): ", "comparing two columns is not supported"),
    ("id = NULL", "at position 6 ('NULL'): ", "IS NULL or IS NOT NULL"),
    ("NULL IS NULL", "at position 1 ('NULL'): ", "IS NULL or IS NOT NULL"),
    ("id", "at position 3: ", "expected a comparison operator, IS, IN, BETWEEN or LIKE"),
    ("id IS 5", "at position 7 ('5'): ", "expected NULL or NAN after IS"),
    ("id IS NOT", "at position 10: ", "expected NULL or NAN after IS NOT"),
    ("id NOT = 1", "at position 8 ('='): ", "expected IN, BETWEEN or LIKE after NOT"),
    ("region IS NAN", "at position 11 ('NAN'): ", "NaN checks need a float or double column"),
    ("id IN 1", "at position 7 ('1'): ", "expected '(' after IN"),
    ("id IN ()", "at position 8 (')'): ", "expected a value in the IN list"),
    ("id IN (1, 2", "at position 12: ", "expected ',' or ')' in the IN list"),
    ("id IN (1 2)", "at position 10 ('2'): ", "expected ',' or ')'"),
    ("id IN (1, 'x')", "at position 11 (\"'x'\"): ", "expected an integer"),
    ("id BETWEEN 1 OR 2", "at position 14 ('OR'): ", "expected AND after the lower bound"),
    ("id BETWEEN 1 AND", "at position 17: ", "expected a value after BETWEEN ... AND"),
    ("region LIKE '%eu'", "at position 13 (\"'%eu'\"): ", "unsupported LIKE pattern"),
    ("region LIKE 'e%u%'", "at position 13 ", "only a prefix match ending in '%'"),
    ("region LIKE 'e_u%'", "at position 13 ", "unsupported LIKE pattern"),
    ("region LIKE 'eu'", "at position 13 ", "use = for an exact match"),
    ("region LIKE eu", "at position 13 ('eu'): ", "expected a quoted pattern after LIKE"),
    ("id LIKE '1%'", "at position 9 ", "LIKE needs a string column"),
    ("tags = 'x'", "at position 1 ('tags'): ", "column 'tags' is a list"),
    ("tags.element = 'x'", "at position 1 ('tags.element'): ", "'tags' is a list or map"),
    ("attrs.key = 'x'", "at position 1 ", "'attrs' is a list or map"),
    ("address IS NULL", "at position 1 ('address'): ", "column 'address' is a struct"),
    ("address. = 1", "at position 10 ('='): ", "expected a field name after '.'"),
    ("id = 12abc", "at position 6 ('12abc'): ", "malformed number"),
    ("id = 1.2.3", "at position 6 ('1.2.3'): ", "malformed number"),
    ("id = .5", "at position 6 ('.'): ", "expected a value after '='"),
    ("id = - 5", "at position 6 ('-'): ", "unexpected character"),
    ("id = 1; DROP TABLE x", "at position 7 (';'): ", "unexpected character"),
    ("id = 1 && id = 2", "at position 8 ('&'): ", "unexpected character"),
    ("__import__('os')", "at position 1 ('__import__'): ", "no column named '__import__'"),
    ("__import__('os').system('ls')", "at position 1 ('__import__'): ", "no column named"),
    ('eval("1")', "at position 1 ('eval'): ", "no column named 'eval'"),
    ("id = 1 or exec('x')", "at position 11 ('exec'): ", "no column named 'exec'"),
    ("{'a': 1}", "at position 1 ('{'): ", "unexpected character"),
    ("lambda: 1", "at position 7 (':'): ", "unexpected character"),
    # errors are reported in reading order: the first problem wins
    ("nope = 1 AND id = 'x", "at position 1 ('nope'): ", "no column named 'nope'"),
    ("id = 'x' AND $", "at position 6 (\"'x'\"): ", "expected an integer"),
]


@pytest.mark.parametrize(("text", "prefix", "gist"), BAD, ids=[text[:40] for text, _, _ in BAD])
def test_bad_filters_point_at_the_offending_token(text: str, prefix: str, gist: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_row_filter(text, SCHEMA)
    error = exc.value
    assert error.reason == "INVALID_ROW_FILTER"
    (violation,) = error.violations
    assert violation.field == "row_filter"
    assert violation.description.startswith(prefix), violation.description
    assert gist in violation.description, violation.description
    assert error.message == f"row_filter: {violation.description}"


def test_the_error_names_the_field_it_was_given() -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_row_filter("nope = 1", SCHEMA, field="read_options.row_filter")
    assert exc.value.violations[0].field == "read_options.row_filter"
    assert exc.value.message.startswith("read_options.row_filter: at position 1 ('nope')")


def test_long_tokens_are_shortened_in_errors() -> None:
    name = "x" * 500
    with pytest.raises(InvalidArgument) as exc:
        parse_row_filter(f"{name} = 1", SCHEMA)
    description = exc.value.violations[0].description
    assert description.startswith("at position 1 ('xxxx")
    assert len(description) < 700  # the name once in full (what was not found), once shortened


def test_case_sensitive_match_wins_and_ambiguity_is_an_error() -> None:
    schema = Schema(
        NestedField(1, "name", StringType()),
        NestedField(2, "Name", StringType()),
        NestedField(3, "other", LongType()),
    )
    assert parse_row_filter("Name = 'a'", schema) == EqualTo("Name", "a")
    assert parse_row_filter("name = 'a'", schema) == EqualTo("name", "a")
    assert parse_row_filter("OTHER = 1", schema) == EqualTo("other", 1)
    with pytest.raises(InvalidArgument) as exc:
        parse_row_filter("NAME = 'a'", schema)
    assert "column name 'NAME' is ambiguous ('Name', 'name')" in exc.value.message


def test_reserved_words_can_be_column_names_when_quoted() -> None:
    schema = Schema(NestedField(1, "in", LongType()), NestedField(2, "nan", DoubleType()))
    assert parse_row_filter('"in" = 1', schema) == EqualTo("in", 1)
    assert parse_row_filter("nan IS NAN", schema) == IsNaN("nan")
    with pytest.raises(InvalidArgument, match="at position 1 \\('in'\\): expected a condition"):
        parse_row_filter("in = 1", schema)


# --- limits ----------------------------------------------------------------------------------


def test_a_filter_over_64_kib_is_rejected() -> None:
    text = "region = '" + "x" * MAX_FILTER_BYTES + "'"
    with pytest.raises(InvalidArgument, match="at most 65536 allowed"):
        parse_row_filter(text, SCHEMA)
    # the limit is in UTF-8 bytes, not characters
    text = "region = '" + "é" * (MAX_FILTER_BYTES // 2) + "'"
    with pytest.raises(InvalidArgument, match="bytes long"):
        parse_row_filter(text, SCHEMA)


def test_a_filter_of_nearly_64_kib_parses_and_binds() -> None:
    terms = [f"id = {i}" for i in range(9000)]
    text = " OR ".join(terms)
    while len(text) > MAX_FILTER_BYTES:
        terms.pop()
        text = " OR ".join(terms)
    expression = parse_row_filter(text, SCHEMA)
    bind(SCHEMA, rewrite_not(expression), case_sensitive=True)


def test_nesting_up_to_the_limit_works_and_beyond_is_an_error() -> None:
    deepest = "(" * MAX_NESTING_DEPTH + "id = 1" + ")" * MAX_NESTING_DEPTH
    assert parse_row_filter(deepest, SCHEMA) == EQ_1
    too_deep = "(" * (MAX_NESTING_DEPTH + 1) + "id = 1" + ")" * (MAX_NESTING_DEPTH + 1)
    with pytest.raises(InvalidArgument) as exc:
        parse_row_filter(too_deep, SCHEMA)
    assert exc.value.violations[0].description == (
        f"at position {MAX_NESTING_DEPTH + 1} ('('): the filter nests deeper than 100 levels"
    )


@pytest.mark.parametrize(
    "text",
    [
        "(" * 30_000,
        "(" * 30_000 + "id = 1" + ")" * 30_000,
        "NOT (" * 10_000 + "id = 1" + ")" * 10_000,
        "id IN (" * 10_000,
    ],
    ids=["open parens", "balanced parens", "NOT (", "IN ("],
)
def test_huge_nesting_is_an_error_not_a_crash(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_row_filter(text, SCHEMA)
    assert exc.value.reason == "INVALID_ROW_FILTER"


def test_a_long_run_of_not_collapses() -> None:
    assert parse_row_filter("NOT " * 10_000 + "id = 1", SCHEMA) == EQ_1
    assert parse_row_filter("NOT " * 10_001 + "id = 1", SCHEMA) == Not(EQ_1)


def test_expression_trees_too_deep_for_pyiceberg_are_rejected() -> None:
    # Long chains nested deeply would make a tree pyiceberg's recursive visitors cannot walk.
    # Ranges, not equalities: a column's equalities would merge into one IN. Nine OR operands
    # per level make three tree levels per parenthesis, under MAX_CONDITIONS in all.
    text = "id = 0"
    for _ in range(MAX_NESTING_DEPTH - 1):
        text = f"({text}) OR " + " OR ".join(["id > 1"] * 8)
    with pytest.raises(InvalidArgument, match="levels deep"):
        parse_row_filter(text, SCHEMA)


def test_whatever_depth_is_accepted_binds() -> None:
    text = "id = 0"
    for _ in range(MAX_NESTING_DEPTH - 1):
        text = f"NOT ({text} AND id = 1)"
    expression = parse_row_filter(text, SCHEMA)
    bind(SCHEMA, rewrite_not(expression), case_sensitive=True)


def test_in_lists_hold_up_to_10000_values() -> None:
    values = ", ".join(str(i) for i in range(MAX_IN_VALUES))
    expression = parse_row_filter(f"id IN ({values})", SCHEMA)
    assert expression == In("id", range(MAX_IN_VALUES))
    with pytest.raises(InvalidArgument, match="an IN list may hold at most 10000 values"):
        parse_row_filter(f"id IN ({values}, {MAX_IN_VALUES})", SCHEMA)


# --- robustness ------------------------------------------------------------------------------

ALPHABET = [
    *["id", "amount", "region", "score", "ratio", "day", "ts", "flag", "address.city"],
    *['"Weird Name"', "nope", "date", "tags", "address"],
    *["AND", "OR", "NOT", "IS", "NULL", "NaN", "IN", "BETWEEN", "LIKE", "TRUE", "FALSE"],
    *["DATE", "TIMESTAMP", "(", ")", ",", ".", "=", "==", "!=", "<>", "<", "<=", ">", ">="],
    *["1", "-2", "3.5", "1e3", "-0.01", "99999999999999999999", "'eu'", "'2024-01-01'"],
    *["'ab%'", "'%'", "''", "'", '"', "$", "-", ";", "\\", "\x00", "é", " ", "\n"],
]


def _soup(rng: random.Random) -> str:
    pieces = rng.choices(ALPHABET, k=rng.randint(1, 12))
    return rng.choice([" ", ""]).join(pieces)


def _mutant(rng: random.Random) -> str:
    """A good filter with a few characters cut, doubled or replaced by alphabet pieces."""
    text = rng.choice(GOOD)[0]
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(text))
        match rng.randrange(3):
            case 0:
                text = text[:at] + text[at + rng.randint(1, 4) :]
            case 1:
                text = text[:at] + text[at : at + rng.randint(1, 4)] * 2 + text[at:]
            case _:
                text = text[:at] + rng.choice(ALPHABET) + text[at:]
    return text


def test_random_token_soup_parses_or_raises_invalid_argument() -> None:
    rng = random.Random(20240101)
    parsed = 0
    for i in range(2000):
        text = _soup(rng) if i % 2 else _mutant(rng)
        try:
            expression = parse_row_filter(text, SCHEMA)
        except InvalidArgument as e:
            assert e.reason == "INVALID_ROW_FILTER", text
            assert len(e.violations) == 1, text
            assert e.violations[0].field == "row_filter", text
            continue
        # whatever parses is a filter pyiceberg can use as it is
        bind(SCHEMA, rewrite_not(expression), case_sensitive=True)
        parsed += 1
    assert parsed > 50  # some mutants stay valid, so the whole parser is exercised


def test_random_valid_filters_parse_and_bind() -> None:
    rng = random.Random(7)
    predicates = [
        "id = 1",
        "amount > 10",
        "region = 'eu'",
        "note IS NULL",
        "id IN (1, 2, 3)",
        "score IS NOT NAN",
        "day BETWEEN '2024-01-01' AND DATE '2024-12-31'",
        "region LIKE 'e%'",
        "5 < id",
        "TRUE",
    ]

    def build(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(predicates)
        op = rng.choice(["AND", "OR"])
        text = f"{build(depth - 1)} {op} {build(depth - 1)}"
        return f"NOT ({text})" if rng.random() < 0.3 else f"({text})"

    for _ in range(300):
        expression = parse_row_filter(build(6), SCHEMA)
        bind(SCHEMA, rewrite_not(expression), case_sensitive=True)


# --- pushdown on a real table ----------------------------------------------------------------


def test_the_filter_prunes_data_files_of_a_real_table(tmp_path: Path) -> None:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=tmp_path.as_uri())
    catalog.create_namespace("sales")
    arrow_schema = pa.schema(
        [pa.field("id", pa.int64(), nullable=False), pa.field("region", pa.string())]
    )
    table = catalog.create_table("sales.orders", schema=arrow_schema)
    for ids in (range(0, 100), range(100, 200)):
        table.append(
            pa.table(
                {"id": list(ids), "region": ["eu" if i % 2 else "us" for i in ids]},
                schema=arrow_schema,
            )
        )
    table = catalog.load_table("sales.orders")
    assert len(list(table.scan().plan_files())) == 2

    scan = table.scan(row_filter=parse_row_filter("id >= 150", table.schema()))
    assert len(list(scan.plan_files())) == 1
    result = scan.to_arrow()
    assert result.num_rows == 50
    assert sorted(result.column("id").to_pylist()) == list(range(150, 200))

    both = table.scan(
        row_filter=parse_row_filter("ID BETWEEN 95 AND 104 AND region = 'eu'", table.schema())
    )
    assert len(list(both.plan_files())) == 2
    assert sorted(both.to_arrow().column("id").to_pylist()) == [95, 97, 99, 101, 103]

    none = table.scan(row_filter=parse_row_filter("id < 0 OR id > 1000", table.schema()))
    assert list(none.plan_files()) == []
