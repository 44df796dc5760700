"""lakehouse.client.changes: change-stream rows for UPSERT writes, and DeleteRows requests.

Against the server, the helper is exercised by the guide's PostgreSQL mirror
(tests/docs/test_pg_mirror_example.py) and by the guide's examples (tests/docs/test_examples.py).
"""

from __future__ import annotations

import decimal

import pyarrow as pa
import pytest

from lakehouse.client.arrow import append_rows_requests
from lakehouse.client.changes import (
    CHANGE_SEQUENCE_NUMBER_COLUMN,
    CHANGE_TYPE_COLUMN,
    Change,
    ChangeKind,
    changes_to_arrow,
    delete_rows_request,
)
from lakehouse.v1 import ingest_pb2

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("balance", pa.decimal128(12, 2)),
    ],
    metadata={"origin": "test"},
)


def test_changes_become_one_table_with_the_change_columns() -> None:
    table = changes_to_arrow(
        [
            Change.upsert({"id": 1, "name": "Ada", "balance": decimal.Decimal("1.50")}, 10),
            Change.delete({"id": 2, "name": "ignored: not a key"}, 11),
            Change(ChangeKind.UPSERT, {"id": 3, "name": "Bo"}, 12),  # balance left out: null
        ],
        SCHEMA,
        key_columns=["id"],
    )
    assert table.column_names == [*SCHEMA.names, CHANGE_TYPE_COLUMN, CHANGE_SEQUENCE_NUMBER_COLUMN]
    # A DELETE row holds only its key, so every column may be null.
    assert all(field.nullable for field in table.schema)
    assert table.schema.field("balance").type == pa.decimal128(12, 2)
    assert table.schema.field(CHANGE_SEQUENCE_NUMBER_COLUMN).type == pa.int64()
    assert table.schema.metadata == {b"origin": b"test"}
    assert table.to_pylist() == [
        {
            "id": 1,
            "name": "Ada",
            "balance": decimal.Decimal("1.50"),
            "_change_type": "UPSERT",
            "_change_sequence_number": 10,
        },
        {
            "id": 2,
            "name": None,
            "balance": None,
            "_change_type": "DELETE",
            "_change_sequence_number": 11,
        },
        {
            "id": 3,
            "name": "Bo",
            "balance": None,
            "_change_type": "UPSERT",
            "_change_sequence_number": 12,
        },
    ]


def test_without_sequence_numbers_or_key_columns() -> None:
    table = changes_to_arrow(
        [Change.upsert({"id": 1, "name": "a"}), Change.delete({"id": 1, "name": "kept"})], SCHEMA
    )
    assert CHANGE_SEQUENCE_NUMBER_COLUMN not in table.column_names
    assert table.column(CHANGE_TYPE_COLUMN).to_pylist() == ["UPSERT", "DELETE"]
    assert table.column("name").to_pylist() == ["a", "kept"]  # rows taken as they are


def test_no_changes_is_an_empty_table_with_the_schema() -> None:
    table = changes_to_arrow([], SCHEMA)
    assert table.num_rows == 0
    assert table.column_names == [*SCHEMA.names, CHANGE_TYPE_COLUMN]


@pytest.mark.parametrize(
    ("changes", "key_columns", "message"),
    [
        ([Change.upsert({"id": 1, "nope": 2})], None, r"change 0: columns \['nope'\]"),
        ([Change.upsert({"id": 1}, 5), Change.upsert({"id": 2})], None, "change 1: every change"),
        ([Change.upsert({"id": 1}), Change.upsert({"id": 2}, 5)], None, "change 1: every change"),
        ([Change.delete({"name": "x"})], ["id"], r"change 0: key columns \['id'\]"),
        ([Change.delete({"id": None})], ["id"], r"change 0: key columns \['id'\]"),
        ([Change.upsert({"id": 1})], ["key"], r"key columns \['key'\] are not in the schema"),
        ([Change("DELETE", {"id": 1})], None, "is not a ChangeKind"),  # type: ignore[arg-type]
    ],
)
def test_bad_changes_are_refused(
    changes: list[Change], key_columns: list[str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        changes_to_arrow(changes, SCHEMA, key_columns=key_columns)


def test_a_value_of_the_wrong_type_is_refused_by_arrow() -> None:
    with pytest.raises(pa.ArrowException):
        changes_to_arrow([Change.upsert({"id": "one"})], SCHEMA)


def test_the_table_goes_into_an_upsert_stream() -> None:
    table = changes_to_arrow([Change.upsert({"id": 1, "name": "a"}, 1)], SCHEMA)
    (request,) = append_rows_requests(
        "crm",
        "customers",
        table,
        writer_id="w",
        start_offset=7,
        write_mode=ingest_pb2.WRITE_MODE_UPSERT,
    )
    assert (request.write_mode, request.writer_id, request.offset) == (
        ingest_pb2.WRITE_MODE_UPSERT,
        "w",
        7,
    )
    schema = pa.ipc.read_schema(pa.py_buffer(request.arrow_schema.serialized_schema))
    assert schema.names[-2:] == [CHANGE_TYPE_COLUMN, CHANGE_SEQUENCE_NUMBER_COLUMN]


def test_delete_rows_request() -> None:
    request = delete_rows_request(
        "crm", "customers", "id = 7", request_id="gdpr-1", expected_etag="e1"
    )
    assert (request.namespace, request.table, request.row_filter) == ("crm", "customers", "id = 7")
    assert (request.request_id, request.expected_etag) == ("gdpr-1", "e1")
    assert delete_rows_request("crm", "customers", "true").request_id == ""
    with pytest.raises(ValueError, match="required"):
        delete_rows_request("crm", "customers", "  ")
