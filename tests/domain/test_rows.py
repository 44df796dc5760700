"""Decoding and validating ingest payloads (Arrow IPC and JSON rows) against a table schema."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
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

from lakehouse.domain.rows.arrow_conform import conform_arrow
from lakehouse.domain.rows.arrow_read import decode_arrow
from lakehouse.domain.rows.json_rows import decode_json
from lakehouse.domain.rows.problems import DecodedRows, RowErrorReason, RowProblem
from lakehouse.domain.schemas import schema_to_arrow

UTC = dt.UTC

SIMPLE = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType()),
    NestedField(3, "score", DoubleType()),
)

ALL_TYPES = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "small", IntegerType()),
    NestedField(3, "ratio", FloatType()),
    NestedField(4, "score", DoubleType()),
    NestedField(5, "price", DecimalType(10, 2)),
    NestedField(6, "name", StringType()),
    NestedField(7, "flag", BooleanType()),
    NestedField(8, "day", DateType()),
    NestedField(9, "at", TimeType()),
    NestedField(10, "local_ts", TimestampType()),
    NestedField(11, "ts", TimestamptzType()),
    NestedField(12, "uid", UUIDType()),
    NestedField(13, "blob", BinaryType()),
    NestedField(14, "code", FixedType(3)),
    NestedField(
        15,
        "address",
        StructType(
            NestedField(16, "city", StringType(), required=True),
            NestedField(17, "zip", IntegerType()),
        ),
    ),
    NestedField(18, "tags", ListType(19, StringType(), element_required=True)),
    NestedField(20, "attrs", MapType(21, StringType(), 22, LongType(), value_required=False)),
)


def ipc_stream(*batches: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue())


def assert_conformed(decoded: DecodedRows, schema: Schema) -> None:
    assert decoded.valid.schema.equals(schema_to_arrow(schema), check_metadata=True)


def reasons(decoded: DecodedRows) -> list[tuple[int, str, RowErrorReason]]:
    return [(p.row_index, p.column, p.reason) for p in decoded.problems]


# --- Arrow: reading -----------------------------------------------------------------------


def test_record_batch_message_with_its_schema() -> None:
    batch = pa.record_batch({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]})
    decoded = decode_arrow(bytes(batch.serialize()), bytes(batch.schema.serialize()), SIMPLE)
    assert_conformed(decoded, SIMPLE)
    assert decoded.row_count == 2
    assert list(decoded.valid_indices) == [0, 1]
    assert list(decoded.problems) == []
    assert decoded.valid.to_pylist() == [
        {"id": 1, "name": "a", "score": None},
        {"id": 2, "name": "b", "score": None},
    ]


def test_ipc_stream_with_two_batches_ignores_schema_bytes() -> None:
    one = pa.record_batch({"id": pa.array([1, 2], pa.int64())})
    two = pa.record_batch({"id": pa.array([3], pa.int64())})
    decoded = decode_arrow(ipc_stream(one, two), b"ignored", SIMPLE)
    assert decoded.row_count == 3
    assert decoded.valid.column("id").to_pylist() == [1, 2, 3]
    assert list(decoded.valid_indices) == [0, 1, 2]
    assert_conformed(decoded, SIMPLE)


def test_ipc_stream_with_dictionary_column_is_decoded_to_plain() -> None:
    batch = pa.record_batch(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "name": pa.array(["x", "y", "x"]).dictionary_encode(),
        }
    )
    decoded = decode_arrow(ipc_stream(batch), None, SIMPLE)
    assert decoded.valid.column("name").to_pylist() == ["x", "y", "x"]
    assert_conformed(decoded, SIMPLE)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00garbage bytes here", b"\xff\xff\xff\xff" + b"\x01" * 40],
    ids=["empty", "garbage", "bad-metadata"],
)
def test_corrupt_bytes(payload: bytes) -> None:
    decoded = decode_arrow(payload, None, SIMPLE)
    assert decoded.row_count == 0
    assert decoded.valid.num_rows == 0
    assert_conformed(decoded, SIMPLE)
    assert [(p.row_index, p.column, p.reason) for p in decoded.problems] == [
        (-1, "", RowErrorReason.CORRUPT_ARROW)
    ]


def test_truncated_stream_is_corrupt() -> None:
    payload = ipc_stream(pa.record_batch({"id": pa.array(list(range(100)), pa.int64())}))
    decoded = decode_arrow(payload[: len(payload) // 2], None, SIMPLE)
    assert reasons(decoded) == [(-1, "", RowErrorReason.CORRUPT_ARROW)]


def test_record_batch_message_without_schema_is_corrupt() -> None:
    batch = pa.record_batch({"id": pa.array([1], pa.int64())})
    decoded = decode_arrow(bytes(batch.serialize()), None, SIMPLE)
    assert reasons(decoded) == [(-1, "", RowErrorReason.CORRUPT_ARROW)]
    assert "schema" in decoded.problems[0].message


def test_record_batch_message_with_a_schema_that_does_not_fit_is_corrupt() -> None:
    batch = pa.record_batch({"id": pa.array([1, 2], pa.int64())})
    wrong = pa.schema([("id", pa.string()), ("x", pa.large_binary())])
    decoded = decode_arrow(bytes(batch.serialize()), bytes(wrong.serialize()), SIMPLE)
    assert reasons(decoded) == [(-1, "", RowErrorReason.CORRUPT_ARROW)]


# --- Arrow: conforming --------------------------------------------------------------------


def test_safe_casts_and_missing_optional_columns_are_accepted() -> None:
    batch = pa.record_batch(
        {
            "score": pa.array([1.5, None], pa.float32()),
            "id": pa.array([1, 2], pa.int32()),
        }
    )
    decoded = conform_arrow(pa.Table.from_batches([batch]), SIMPLE)
    assert list(decoded.valid_indices) == [0, 1]
    assert_conformed(decoded, SIMPLE)
    assert decoded.valid.to_pylist() == [
        {"id": 1, "name": None, "score": 1.5},
        {"id": 2, "name": None, "score": None},
    ]


def test_safe_casts_of_every_kind() -> None:
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "ts", TimestamptzType()),
        NestedField(3, "local_ts", TimestampType()),
        NestedField(4, "price", DecimalType(10, 2)),
        NestedField(5, "uid", UUIDType()),
        NestedField(6, "code", FixedType(3)),
        NestedField(7, "day", DateType()),
    )
    u = uuid.uuid4()
    table = pa.table(
        {
            "id": pa.array([7], pa.uint16()),
            "ts": pa.array([1_000_000_000], pa.timestamp("ns", tz="Europe/Paris")),
            "local_ts": pa.array([5], pa.timestamp("s")),
            "price": pa.array([decimal.Decimal("1.5")], pa.decimal128(3, 1)),
            "uid": pa.array([u.bytes], pa.binary(16)),
            "code": pa.array([b"abc"], pa.binary()),
            "day": pa.array(["2024-05-31"], pa.string()),
        }
    )
    decoded = conform_arrow(table, schema)
    assert list(decoded.problems) == []
    assert_conformed(decoded, schema)
    assert decoded.valid.to_pylist() == [
        {
            "id": 7,
            "ts": dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
            "local_ts": dt.datetime(1970, 1, 1, 0, 0, 5),
            "price": decimal.Decimal("1.50"),
            "uid": u,
            "code": b"abc",
            "day": dt.date(2024, 5, 31),
        }
    ]


def test_unknown_column_invalidates_every_row() -> None:
    table = pa.table({"id": pa.array([1, 2], pa.int64()), "Name": ["a", "b"]})
    decoded = conform_arrow(table, SIMPLE)
    assert decoded.row_count == 2
    assert decoded.valid.num_rows == 0
    assert list(decoded.valid_indices) == []
    assert reasons(decoded) == [
        (0, "Name", RowErrorReason.UNKNOWN_COLUMN),
        (1, "Name", RowErrorReason.UNKNOWN_COLUMN),
    ]
    assert "did you mean 'name'" in decoded.problems[0].message
    assert_conformed(decoded, SIMPLE)


def test_columns_of_the_tables_types_are_kept_as_sent_and_strings_widened() -> None:
    # The plain path: no value is checked but the required columns' nulls, nothing is copied
    # but what a cast makes, and several batches stay as they came.
    first = pa.record_batch({"name": ["a", None], "id": pa.array([1, 2], pa.int64())})
    second = pa.record_batch({"name": ["c", "d"], "id": pa.array([3, 4], pa.int64())})
    table = pa.Table.from_batches([first, second])
    decoded = conform_arrow(table, SIMPLE)
    assert_conformed(decoded, SIMPLE)
    assert decoded.problems == [] and list(decoded.valid_indices) == [0, 1, 2, 3]
    assert decoded.valid.to_pylist() == [
        {"id": 1, "name": "a", "score": None},
        {"id": 2, "name": None, "score": None},
        {"id": 3, "name": "c", "score": None},
        {"id": 4, "name": "d", "score": None},
    ]
    sent = table.column("id").chunk(0).buffers()[1]
    assert decoded.valid.column("id").chunk(0).buffers()[1].address == sent.address
    assert decoded.valid.schema.field("name").type == pa.large_string()


def test_nulls_of_a_required_column_in_a_later_batch_are_found() -> None:
    first = pa.record_batch({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]})
    second = pa.record_batch({"id": pa.array([None, 4], pa.int64()), "name": ["c", "d"]})
    decoded = conform_arrow(pa.Table.from_batches([first, second]), SIMPLE)
    assert reasons(decoded) == [(2, "id", RowErrorReason.MISSING_REQUIRED_COLUMN)]
    assert list(decoded.valid_indices) == [0, 1, 3]
    assert decoded.valid.column("name").to_pylist() == ["a", "b", "d"]


def test_missing_required_column_invalidates_every_row() -> None:
    decoded = conform_arrow(pa.table({"name": ["a", "b"]}), SIMPLE)
    assert reasons(decoded) == [
        (0, "id", RowErrorReason.MISSING_REQUIRED_COLUMN),
        (1, "id", RowErrorReason.MISSING_REQUIRED_COLUMN),
    ]
    assert decoded.invalid_count == 2


def test_nulls_in_a_required_column_invalidate_those_rows_only() -> None:
    table = pa.table({"id": pa.array([1, None, 3], pa.int64()), "name": ["a", "b", "c"]})
    decoded = conform_arrow(table, SIMPLE)
    assert list(decoded.valid_indices) == [0, 2]
    assert decoded.valid.column("name").to_pylist() == ["a", "c"]
    assert reasons(decoded) == [(1, "id", RowErrorReason.MISSING_REQUIRED_COLUMN)]
    assert json.loads(decoded.invalid_payloads[1]) == {"id": None, "name": "b"}
    assert_conformed(decoded, SIMPLE)
    assert decoded.valid.schema.field("id").nullable is False


def test_uncastable_column_type_invalidates_every_row() -> None:
    table = pa.table({"id": pa.array([1, 2], pa.int64()), "name": pa.array([1, 2], pa.int64())})
    decoded = conform_arrow(table, SIMPLE)
    assert reasons(decoded) == [
        (0, "name", RowErrorReason.TYPE_MISMATCH),
        (1, "name", RowErrorReason.TYPE_MISMATCH),
    ]
    assert "expected string" in decoded.problems[0].message


def test_naive_timestamps_do_not_cast_to_timestamptz() -> None:
    schema = Schema(NestedField(1, "ts", TimestamptzType()))
    decoded = conform_arrow(pa.table({"ts": pa.array([1], pa.timestamp("us"))}), schema)
    assert reasons(decoded) == [(0, "ts", RowErrorReason.TYPE_MISMATCH)]


def test_out_of_range_values_invalidate_their_rows_only() -> None:
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "small", IntegerType()),
    )
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "small": pa.array([1, 3_000_000_000, None, -(2**40)], pa.int64()),
        }
    )
    decoded = conform_arrow(table, schema)
    assert list(decoded.valid_indices) == [0, 2]
    assert decoded.valid.to_pylist() == [{"id": 1, "small": 1}, {"id": 3, "small": None}]
    assert reasons(decoded) == [
        (1, "small", RowErrorReason.VALUE_OUT_OF_RANGE),
        (3, "small", RowErrorReason.VALUE_OUT_OF_RANGE),
    ]
    assert "3000000000" in decoded.problems[0].message
    assert sorted(decoded.invalid_payloads) == [1, 3]
    assert json.loads(decoded.invalid_payloads[1]) == {"id": 2, "small": 3_000_000_000}
    assert_conformed(decoded, schema)


def test_unparseable_strings_are_type_mismatches_per_row() -> None:
    table = pa.table({"id": pa.array(["1", "abc", "3", "4.5"])})
    decoded = conform_arrow(table, SIMPLE)
    assert decoded.valid.column("id").to_pylist() == [1, 3]
    assert list(decoded.valid_indices) == [0, 2]
    assert reasons(decoded) == [
        (1, "id", RowErrorReason.TYPE_MISMATCH),
        (3, "id", RowErrorReason.TYPE_MISMATCH),
    ]
    assert "expected long" in decoded.problems[0].message
    assert "'abc'" in decoded.problems[0].message


def test_one_bad_value_in_a_large_column_is_isolated() -> None:
    values = list(range(50_000))
    values[31_337] = 2**40
    schema = Schema(NestedField(1, "small", IntegerType()))
    decoded = conform_arrow(pa.table({"small": pa.array(values, pa.int64())}), schema)
    assert reasons(decoded) == [(31_337, "small", RowErrorReason.VALUE_OUT_OF_RANGE)]
    assert decoded.valid.num_rows == 49_999
    assert decoded.valid.column("small")[31_337].as_py() == 31_338


def test_lossy_timestamp_and_decimal_casts_are_out_of_range() -> None:
    schema = Schema(
        NestedField(1, "local_ts", TimestampType()),
        NestedField(2, "price", DecimalType(4, 2)),
    )
    table = pa.table(
        {
            "local_ts": pa.array([1000, 1001, 2000], pa.timestamp("ns")),
            "price": pa.array(
                [decimal.Decimal(x) for x in ("1.00", "2.00", "123.45")], pa.decimal128(5, 2)
            ),
        }
    )
    decoded = conform_arrow(table, schema)
    assert reasons(decoded) == [
        (1, "local_ts", RowErrorReason.VALUE_OUT_OF_RANGE),
        (2, "price", RowErrorReason.VALUE_OUT_OF_RANGE),
    ]
    assert list(decoded.valid_indices) == [0]


def test_nested_struct_list_and_map_are_conformed() -> None:
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(
            2,
            "address",
            StructType(
                NestedField(3, "city", StringType(), required=True),
                NestedField(4, "zip", IntegerType()),
                NestedField(5, "country", StringType()),
            ),
        ),
        NestedField(6, "tags", ListType(7, LongType(), element_required=True)),
        NestedField(8, "attrs", MapType(9, StringType(), 10, LongType(), value_required=False)),
    )
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "address": pa.array(
                [
                    {"zip": 1, "city": "Oslo"},
                    None,
                    {"zip": 3, "city": None},  # required nested field null: invalid
                    {"zip": 4, "city": "Rome"},
                    {"zip": 5, "city": "Kyiv"},
                ],
                pa.struct([("zip", pa.int16()), ("city", pa.string())]),
            ),
            "tags": pa.array(
                [[1, 2], None, [], [3, None], [2**40]],  # null element: invalid
                pa.list_(pa.int32() if False else pa.int64()),
            ),
            "attrs": pa.array(
                [[("a", 1)], None, [], [("b", None)], [("c", 2)]],
                pa.map_(pa.string(), pa.int32()),
            ),
        }
    )
    decoded = conform_arrow(table, schema)
    assert reasons(decoded) == [
        (2, "address.city", RowErrorReason.MISSING_REQUIRED_COLUMN),
        (3, "tags.element", RowErrorReason.MISSING_REQUIRED_COLUMN),
    ]
    assert list(decoded.valid_indices) == [0, 1, 4]
    assert_conformed(decoded, schema)
    rows = decoded.valid.to_pylist(maps_as_pydicts="strict")
    assert rows == [
        {
            "id": 1,
            "address": {"city": "Oslo", "zip": 1, "country": None},
            "tags": [1, 2],
            "attrs": {"a": 1},
        },
        {"id": 2, "address": None, "tags": None, "attrs": None},
        {
            "id": 5,
            "address": {"city": "Kyiv", "zip": 5, "country": None},
            "tags": [2**40],
            "attrs": {"c": 2},
        },
    ]


def test_nested_unknown_field_and_bad_element_values() -> None:
    schema = Schema(
        NestedField(1, "address", StructType(NestedField(2, "zip", IntegerType()))),
        NestedField(3, "nums", ListType(4, IntegerType(), element_required=False)),
    )
    unknown = pa.table({"address": pa.array([{"zip": 1, "street": "x"}])})
    assert reasons(conform_arrow(unknown, schema)) == [
        (0, "address.street", RowErrorReason.UNKNOWN_COLUMN)
    ]
    nums = pa.table({"nums": pa.array([[1], [2, 2**40], None, [3]], pa.list_(pa.int64()))})
    decoded = conform_arrow(nums, schema)
    assert reasons(decoded) == [(1, "nums.element", RowErrorReason.VALUE_OUT_OF_RANGE)]
    assert decoded.valid.column("nums").to_pylist() == [[1], None, [3]]
    assert list(decoded.valid_indices) == [0, 2, 3]
    assert json.loads(decoded.invalid_payloads[1]) == {"nums": [2, 2**40]}


def test_problems_and_payloads_of_many_bad_rows_are_built_on_access() -> None:
    n = 200_000
    table = pa.table({"id": pa.array(range(n), pa.int64()), "bogus": pa.nulls(n, pa.int8())})
    decoded = conform_arrow(table, SIMPLE)
    assert decoded.row_count == n
    assert decoded.invalid_count == n
    assert len(decoded.problems) == n
    first = decoded.problems[:2]
    assert first == [
        RowProblem(0, "bogus", RowErrorReason.UNKNOWN_COLUMN, first[0].message),
        RowProblem(1, "bogus", RowErrorReason.UNKNOWN_COLUMN, first[0].message),
    ]
    assert decoded.problems[-1].row_index == n - 1
    assert len(decoded.invalid_payloads) == n
    assert json.loads(decoded.invalid_payloads[n - 1]) == {"id": n - 1, "bogus": None}


@pytest.mark.slow
def test_a_million_clean_rows_decode_by_vectorized_casts() -> None:
    n = 1_000_000
    schema = Schema(
        *[NestedField(i + 1, f"c{i}", LongType(), required=i == 0) for i in range(5)],
        *[NestedField(i + 6, f"s{i}", StringType()) for i in range(3)],
        NestedField(9, "d", DoubleType()),
        NestedField(10, "ts", TimestamptzType()),
    )
    ints = pa.array(range(n), pa.int32())
    strings = pa.array(["value"] * n, pa.string())
    table = pa.table(
        {
            **{f"c{i}": ints for i in range(5)},
            **{f"s{i}": strings for i in range(3)},
            "d": pa.array([0.5] * n, pa.float32()),
            "ts": pa.array(range(n), pa.timestamp("ms", tz="UTC")),
        }
    )
    decoded = decode_arrow(ipc_stream(*table.to_batches(max_chunksize=100_000)), None, schema)
    assert decoded.row_count == n
    assert decoded.valid.num_rows == n
    assert len(decoded.problems) == 0
    assert_conformed(decoded, schema)


# --- JSON ---------------------------------------------------------------------------------


def test_json_rows_of_every_type() -> None:
    u = uuid.uuid4()
    row = {
        "id": "9007199254740993",  # beyond 2^53: sent as a string
        "small": 7.0,  # JSON numbers are doubles
        "ratio": "NaN",
        "score": "-Infinity",
        "price": "12345678.90",
        "name": "x",
        "flag": True,
        "day": "2024-05-31",
        "at": "13:45:00.123456",
        "local_ts": "2024-05-31T13:45:00",
        "ts": "2024-05-31T13:45:00+02:00",
        "uid": str(u),
        "blob": base64.b64encode(b"\x00\xff").decode(),
        "code": base64.b64encode(b"abc").decode(),
        "address": {"city": "Oslo", "zip": 1234.0},
        "tags": ["a", "b"],
        "attrs": {"k": "12", "n": None},
    }
    decoded = decode_json([row], ALL_TYPES)
    assert list(decoded.problems) == []
    assert_conformed(decoded, ALL_TYPES)
    [out] = decoded.valid.to_pylist(maps_as_pydicts="strict")
    assert out["id"] == 9007199254740993
    assert out["small"] == 7
    assert out["ratio"] != out["ratio"]  # NaN
    assert out["score"] == float("-inf")
    assert out["price"] == decimal.Decimal("12345678.90")
    assert out["day"] == dt.date(2024, 5, 31)
    assert out["at"] == dt.time(13, 45, 0, 123456)
    assert out["local_ts"] == dt.datetime(2024, 5, 31, 13, 45)
    assert out["ts"] == dt.datetime(2024, 5, 31, 11, 45, tzinfo=UTC)
    assert out["uid"] == u
    assert out["blob"] == b"\x00\xff"
    assert out["code"] == b"abc"
    assert out["address"] == {"city": "Oslo", "zip": 1234}
    assert out["tags"] == ["a", "b"]
    assert out["attrs"] == {"k": 12, "n": None}


def test_json_map_as_list_of_key_value_objects() -> None:
    schema = Schema(NestedField(1, "m", MapType(2, LongType(), 3, StringType())))
    decoded = decode_json(
        [{"m": [{"key": "5", "value": "five"}, {"key": 6.0, "value": "x"}]}], schema
    )
    assert decoded.valid.to_pylist(maps_as_pydicts="strict") == [{"m": {5: "five", 6: "x"}}]


def test_json_decimals_are_exact() -> None:
    schema = Schema(NestedField(1, "p", DecimalType(38, 10)))
    big = "1234567890123456789012345678.0123456789"
    decoded = decode_json([{"p": big}, {"p": 0.1}, {"p": "1.00000000000"}], schema)
    assert decoded.valid.column("p").to_pylist() == [
        decimal.Decimal(big),
        decimal.Decimal("0.1000000000"),
        decimal.Decimal("1.0000000000"),
    ]


def test_json_timestamps_with_offsets_are_utc() -> None:
    schema = Schema(NestedField(1, "ts", TimestamptzType()))
    decoded = decode_json(
        [{"ts": "2024-01-01T00:00:00Z"}, {"ts": "2024-01-01T00:30:00.5-01:30"}], schema
    )
    assert decoded.valid.column("ts").to_pylist() == [
        dt.datetime(2024, 1, 1, tzinfo=UTC),
        dt.datetime(2024, 1, 1, 2, 0, 0, 500000, tzinfo=UTC),
    ]


BAD_JSON: list[tuple[Any, str, RowErrorReason, str]] = [
    ([1, 2], "", RowErrorReason.UNPARSEABLE_ROW, "must be a JSON object"),
    ("text", "", RowErrorReason.UNPARSEABLE_ROW, "got string 'text'"),
    ({"id": 1, "nope": 1}, "nope", RowErrorReason.UNKNOWN_COLUMN, "unknown column 'nope'"),
    ({"id": 1, "ID": 1}, "ID", RowErrorReason.UNKNOWN_COLUMN, "did you mean 'id'"),
    ({"id": 1, "address": {"city": "x", "street": "y"}}, "address.street",
     RowErrorReason.UNKNOWN_COLUMN, "unknown column 'address.street'"),
    ({}, "id", RowErrorReason.MISSING_REQUIRED_COLUMN, "'id' is missing"),
    ({"id": None}, "id", RowErrorReason.MISSING_REQUIRED_COLUMN, "'id' is null"),
    ({"id": 1, "address": {"zip": 1}}, "address.city",
     RowErrorReason.MISSING_REQUIRED_COLUMN, "'address.city' is missing"),
    ({"id": 1, "tags": ["a", None]}, "tags.element",
     RowErrorReason.MISSING_REQUIRED_COLUMN, "element 1"),
    ({"id": "abc"}, "id", RowErrorReason.TYPE_MISMATCH, "expected long, got string 'abc'"),
    ({"id": 1.5}, "id", RowErrorReason.TYPE_MISMATCH, "expected long, got number 1.5"),
    ({"id": True}, "id", RowErrorReason.TYPE_MISMATCH, "got boolean true"),
    ({"id": 2.0**60}, "id", RowErrorReason.VALUE_OUT_OF_RANGE, "must be sent as strings"),
    ({"id": "9223372036854775808"}, "id", RowErrorReason.VALUE_OUT_OF_RANGE, "out of range"),
    ({"id": 1, "small": 2.0**31}, "small", RowErrorReason.VALUE_OUT_OF_RANGE, "-2147483648"),
    ({"id": 1, "ratio": 1e39}, "ratio", RowErrorReason.VALUE_OUT_OF_RANGE, "32-bit"),
    ({"id": 1, "score": "nan"}, "score", RowErrorReason.TYPE_MISMATCH, "expected double"),
    ({"id": 1, "price": "1.234"}, "price", RowErrorReason.VALUE_OUT_OF_RANGE, "fraction digits"),
    ({"id": 1, "price": "123456789"}, "price", RowErrorReason.VALUE_OUT_OF_RANGE, "10 digits"),
    ({"id": 1, "price": "NaN"}, "price", RowErrorReason.TYPE_MISMATCH, "decimal(10, 2)"),
    ({"id": 1, "name": 5.0}, "name", RowErrorReason.TYPE_MISMATCH, "expected string"),
    ({"id": 1, "flag": "true"}, "flag", RowErrorReason.TYPE_MISMATCH, "expected boolean"),
    ({"id": 1, "day": "31/05/2024"}, "day", RowErrorReason.TYPE_MISMATCH, "expected date"),
    ({"id": 1, "ts": "2024-05-31T13:45:00"}, "ts", RowErrorReason.TYPE_MISMATCH, "UTC offset"),
    ({"id": 1, "local_ts": "2024-05-31T13:45:00Z"}, "local_ts",
     RowErrorReason.TYPE_MISMATCH, "takes no UTC offset"),
    ({"id": 1, "ts": "2024-05-31T13:45:00.1234567Z"}, "ts",
     RowErrorReason.VALUE_OUT_OF_RANGE, "microseconds"),
    ({"id": 1, "uid": "not-a-uuid"}, "uid", RowErrorReason.TYPE_MISMATCH, "expected uuid"),
    ({"id": 1, "blob": "!!not base64"}, "blob", RowErrorReason.TYPE_MISMATCH, "base64"),
    ({"id": 1, "code": base64.b64encode(b"ab").decode()}, "code",
     RowErrorReason.TYPE_MISMATCH, "2 bytes instead of 3"),
    ({"id": 1, "address": "Oslo"}, "address", RowErrorReason.TYPE_MISMATCH, "expected struct"),
    ({"id": 1, "tags": "a"}, "tags", RowErrorReason.TYPE_MISMATCH, "expected list"),
    ({"id": 1, "tags": [1.0]}, "tags.element", RowErrorReason.TYPE_MISMATCH, "expected string"),
    ({"id": 1, "attrs": {"k": "v"}}, "attrs.value", RowErrorReason.TYPE_MISMATCH, "expected long"),
    ({"id": 1, "attrs": [{"k": 1}]}, "attrs", RowErrorReason.TYPE_MISMATCH, '"key", "value"'),
]  # fmt: skip


@pytest.mark.parametrize(("row", "column", "reason", "text"), BAD_JSON, ids=repr)
def test_bad_json_rows(row: Any, column: str, reason: RowErrorReason, text: str) -> None:
    good = {"id": 42}
    decoded = decode_json([good, row, good], ALL_TYPES)
    assert decoded.row_count == 3
    assert list(decoded.valid_indices) == [0, 2]
    assert decoded.valid.column("id").to_pylist() == [42, 42]
    [problem] = decoded.problems
    assert (problem.row_index, problem.column, problem.reason) == (1, column, reason)
    assert text in problem.message
    assert list(decoded.invalid_payloads) == [1]
    assert json.loads(decoded.invalid_payloads[1]) == row
    assert_conformed(decoded, ALL_TYPES)


def test_json_all_invalid_gives_an_empty_conformed_table() -> None:
    decoded = decode_json([{"nope": 1}], SIMPLE)
    assert decoded.valid.num_rows == 0
    assert decoded.invalid_count == 1
    assert_conformed(decoded, SIMPLE)


# --- pyiceberg accepts what we build ------------------------------------------------------


def test_conformed_tables_append_to_a_real_iceberg_table(tmp_path: Path) -> None:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=tmp_path.as_uri())
    catalog.create_namespace("ns")
    table = catalog.create_table("ns.all", schema=ALL_TYPES)
    schema = table.schema()  # create_table assigns fresh field ids: decode against these
    u = uuid.uuid4()
    from_json = decode_json(
        [
            {
                "id": 1,
                "small": 2,
                "price": "3.25",
                "ts": "2024-01-01T00:00:00Z",
                "uid": str(u),
                "code": base64.b64encode(b"xyz").decode(),
                "address": {"city": "Oslo"},
                "tags": ["a"],
                "attrs": {"k": 1},
            },
            {"id": 2, "address": None},
            {"id": "bad"},
        ],
        schema,
    )
    arrow_in = pa.table(
        {
            "id": pa.array([3, None, 4], pa.int32()),
            "address": pa.array(
                [{"city": "Rome"}, {"city": "x"}, None], pa.struct([("city", pa.string())])
            ),
            "tags": pa.array([["t"], [], None], pa.list_(pa.string())),
        }
    )
    from_arrow = decode_arrow(ipc_stream(*arrow_in.to_batches()), None, schema)
    assert list(from_json.valid_indices) == [0, 1]
    assert list(from_arrow.valid_indices) == [0, 2]
    table.append(from_json.valid)
    table.append(from_arrow.valid)
    back = table.scan().to_arrow().sort_by("id")
    expected = pa.concat_tables([from_json.valid, from_arrow.valid]).sort_by("id")
    assert back.to_pylist() == expected.to_pylist()
    assert back.column("id").to_pylist() == [1, 2, 3, 4]
    assert back.column("uid")[0].as_py() == u


def test_a_null_struct_hiding_nulls_in_its_required_children_appends(tmp_path: Path) -> None:
    # Parquet readers give a null optional struct nulls in its required children too; they
    # are hidden by the parent, and Arrow's Parquet writer must not see them as missing values.
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(
            2,
            "address",
            StructType(NestedField(3, "zip", StringType(), required=True)),
            required=False,
        ),
    )
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=tmp_path.as_uri())
    catalog.create_namespace("ns")
    table = catalog.create_table("ns.people", schema=schema)
    zips = pa.array(["1000", None], pa.string())
    address = pa.StructArray.from_arrays(
        [zips], fields=[pa.field("zip", pa.string(), nullable=False)], mask=pa.array([False, True])
    )
    data = pa.table({"id": pa.array([1, 2], pa.int64()), "address": address})

    decoded = conform_arrow(data, table.schema())

    assert decoded.invalid_count == 0
    table.append(decoded.valid)
    assert table.scan().to_arrow()["address"].to_pylist() == [{"zip": "1000"}, None]
