"""Type names ("decimal(12,2)", "list<string>"): parsing, refusals, and the round trips."""

from __future__ import annotations

import pytest
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
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

from lakehouse.domain.type_names import TypeNameError, parse_type_name, type_name

GOOD: list[tuple[str, IcebergType]] = [
    ("boolean", BooleanType()),
    ("int", IntegerType()),
    ("long", LongType()),
    ("float", FloatType()),
    ("double", DoubleType()),
    ("date", DateType()),
    ("time", TimeType()),
    ("timestamp", TimestampType()),
    ("timestamptz", TimestamptzType()),
    ("string", StringType()),
    ("uuid", UUIDType()),
    ("binary", BinaryType()),
    ("decimal(12,2)", DecimalType(12, 2)),
    ("decimal(38,0)", DecimalType(38, 0)),
    ("fixed[16]", FixedType(16)),
    ("list<string>", ListType(1, StringType(), element_required=False)),
    ("list<long not null>", ListType(1, LongType(), element_required=True)),
    ("map<string,long>", MapType(1, StringType(), 2, LongType(), value_required=False)),
    ("map<string,double not null>", MapType(1, StringType(), 2, DoubleType(), True)),
    (
        "struct<a:int not null,b:list<decimal(5,1)>>",
        StructType(
            NestedField(1, "a", IntegerType(), required=True),
            NestedField(2, "b", ListType(3, DecimalType(5, 1), False), required=False),
        ),
    ),
    (
        "struct<`two words`:string,`tick``s`:long>",
        StructType(
            NestedField(1, "two words", StringType(), required=False),
            NestedField(2, "tick`s", LongType(), required=False),
        ),
    ),
    (
        "map<string,struct<x:fixed[4]>>",
        MapType(
            1, StringType(), 2, StructType(NestedField(3, "x", FixedType(4), required=False)), False
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[text for text, _ in GOOD])
def test_parses_and_spells_back(text: str, expected: IcebergType) -> None:
    parsed = parse_type_name(text)
    assert parsed == expected
    assert type_name(parsed) == text


@pytest.mark.parametrize(
    "text",
    ["DECIMAL( 12 , 2 )", " list < string > ", "Map<String, Long NOT NULL>", "struct< a : int >"],
)
def test_case_and_spaces_do_not_matter(text: str) -> None:
    assert type_name(parse_type_name(text)) == "".join(text.lower().split()).replace(
        "notnull", " not null"
    )


@pytest.mark.parametrize(
    "t",
    [
        DecimalType(12, 2),
        FixedType(16),
        # An element or value is optional unless spelled "not null" (pyiceberg's str() of a
        # list or map does not say): the proto's default too.
        ListType(1, StringType(), element_required=False),
        MapType(1, StringType(), 2, LongType(), value_required=False),
        TimestamptzType(),
    ],
)
def test_pyiceberg_spelling_parses_back(t: IcebergType) -> None:
    # pyiceberg writes "decimal(12, 2)" and "map<string, long>": both are read.
    assert parse_type_name(str(t)) == t


def test_nested_ids_come_from_the_caller_in_order() -> None:
    ids = iter(range(10, 20))
    parsed = parse_type_name("map<string,list<int>>", ids)
    assert parsed == MapType(10, StringType(), 11, ListType(12, IntegerType(), False), False)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected a type"),
        ("lng", "unknown type 'lng'"),
        ("timestamp_ns", "unknown type 'timestamp_ns'"),
        ("decimal(12)", "expected ','"),
        ("decimal(39,2)", "precision must be 1 to 38, got 39"),
        ("decimal(0,0)", "precision must be 1 to 38, got 0"),
        ("decimal(5,6)", "scale must be 0 to the precision 5, got 6"),
        ("decimal(12,2)junk", "unexpected 'junk' after the type"),
        ("fixed[0]", "fixed length must be 1 to 2147483647, got 0"),
        ("fixed[99999999999999999999]", "fixed length must be 1 to 2147483647"),
        ("decimal(99999999999999999999,1)", "precision must be 1 to 38"),
        ("fixed(16)", "expected '['"),
        ("list<string", "expected '>', found the end"),
        ("list<>", "expected a type"),
        ("map<string>", "expected ','"),
        ("struct<>", "expected a struct field name"),
        ("struct<a int>", "expected ':'"),
        ("struct<a:int,A:long>", "duplicate struct field name 'A'"),
        ("list<long not>", "expected 'null' after 'not'"),
        ("long not null", "unexpected 'not' after the type"),
        ("list<string>;", "unexpected character ';'"),
        ("list<" * 40 + "int" + ">" * 40, "nest at most"),
    ],
)
def test_bad_spellings_say_what_and_where(text: str, says: str) -> None:
    with pytest.raises(TypeNameError, match="position") as exc:
        parse_type_name(text)
    assert says in str(exc.value)


def test_types_without_a_contract_spelling_are_refused() -> None:
    from pyiceberg.types import TimestampNanoType

    with pytest.raises(TypeNameError, match=r"no lakehouse\.v1 representation"):
        type_name(TimestampNanoType())
