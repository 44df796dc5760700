"""Incremental reads over the wire: ReadRows with start_snapshot_id / end_snapshot_id.

Appends only: exactly the rows added in between. Overwrites and deletes: a changelog as
Spark's changelog view defines it, with carried-over rows cancelled. Both backends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyarrow as pa
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from lakehouse.client.arrow import read_rows_to_arrow_async
from lakehouse.v1 import ingest_pb2, ingest_service_pb2_grpc, rows_pb2, schema_pb2
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import table_service_pb2 as tpb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)


def json_rows(*rows: dict[str, Any]) -> rows_pb2.JsonRows:
    structs = []
    for row in rows:
        s = struct_pb2.Struct()
        s.update(row)
        structs.append(s)
    return rows_pb2.JsonRows(rows=structs)


@pytest_asyncio.fixture
async def ingest(channel: grpc.aio.Channel, table_stub: Any) -> AsyncIterator[Any]:
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="inc"))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="inc",
            table="t",
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(name="id", type=LONG, required=True),
                    schema_pb2.Field(name="name", type=STRING),
                ],
                identifier_field_names=["id"],
            ),
        )
    )
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


async def write(ingest: Any, *rows: dict[str, Any], **fields: Any) -> int:
    reply = await ingest.WriteRows(
        ipb.WriteRowsRequest(namespace="inc", table="t", json_rows=json_rows(*rows), **fields)
    )
    snapshot_id: int = reply.result.snapshot_id
    return snapshot_id


async def changes(table_stub: Any, start: int, end: int | None = None, **fields: Any) -> pa.Table:
    request = tpb.ReadRowsRequest(namespace="inc", table="t", start_snapshot_id=start, **fields)
    if end is not None:
        request.end_snapshot_id = end
    return await read_rows_to_arrow_async(table_stub.ReadRows(request))


def rows(data: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in data.to_pylist())


async def test_over_appends_it_returns_exactly_the_rows_added(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    first = await write(ingest, {"id": 1, "name": "a"})
    second = await write(ingest, {"id": 2, "name": "b"}, {"id": 3, "name": "c"})
    await write(ingest, {"id": 4, "name": "d"})

    since_first = await changes(table_stub, first)
    assert since_first.column_names == ["id", "name"]
    assert rows(since_first) == [(2, "b"), (3, "c"), (4, "d")]
    assert rows(await changes(table_stub, first, second)) == [(2, "b"), (3, "c")]
    assert (await changes(table_stub, second, second)).num_rows == 0
    # Filters and columns work as in any read.
    filtered = await changes(table_stub, first, row_filter="id >= 3", columns={"paths": ["id"]})
    assert rows(filtered) == [(3,), (4,)]


async def test_a_compaction_in_between_changes_nothing(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    from lakehouse.adapters.iceberg.compaction import compact_table

    first = await write(ingest, {"id": 1, "name": "a"})
    await write(ingest, {"id": 2, "name": "b"})
    await write(ingest, {"id": 3, "name": "c"})
    compact_table(
        direct_catalog(backend).load_table(("inc", "t")), target_file_bytes=64 * 1024 * 1024
    )
    await write(ingest, {"id": 4, "name": "d"})

    assert rows(await changes(table_stub, first)) == [(2, "b"), (3, "c"), (4, "d")]


async def test_over_deletes_and_upserts_it_returns_a_changelog(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    start = await write(ingest, *({"id": i, "name": f"v{i}"} for i in range(6)))
    deleted = await table_stub.DeleteRows(
        tpb.DeleteRowsRequest(namespace="inc", table="t", row_filter="id = 1")
    )
    upserted = await write(
        ingest,
        {"id": 2, "name": "two"},
        {"id": 9, "name": "new"},
        write_mode=ingest_pb2.WRITE_MODE_UPSERT,
    )

    log = await changes(table_stub, start)

    assert log.column_names == [
        "id",
        "name",
        "_change_type",
        "_change_ordinal",
        "_commit_snapshot_id",
    ]
    # The rewritten file carried ids 0, 2..5 over: they cancel out; only real changes remain.
    assert rows(log) == [
        (1, "v1", "DELETE", 0, deleted.snapshot_id),
        (2, "two", "INSERT", 1, upserted),
        (2, "v2", "DELETE", 1, upserted),
        (9, "new", "INSERT", 1, upserted),
    ]
    # The filter applies to both kinds of change; JSON works too.
    json_log = [
        r
        async for r in table_stub.ReadRows(
            tpb.ReadRowsRequest(
                namespace="inc",
                table="t",
                start_snapshot_id=start,
                row_filter="id = 2",
                format=rows_pb2.ROW_FORMAT_JSON,
            )
        )
    ]
    kinds = sorted(row["_change_type"] for r in json_log for row in r.json_rows.rows)
    assert kinds == ["DELETE", "INSERT"]


async def _refused(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return rpc_error_details(caught.value)


async def test_a_gap_is_an_error_never_silent(ingest: Any, table_stub: Any, backend: Any) -> None:
    first = await write(ingest, {"id": 1, "name": "a"})
    second = await write(ingest, {"id": 2, "name": "b"})
    await table_stub.RollbackTable(
        tpb.RollbackTableRequest(namespace="inc", table="t", snapshot_id=first)
    )
    await write(ingest, {"id": 3, "name": "c"})

    off_lineage = await _refused(changes(table_stub, second))
    assert off_lineage.code == grpc.StatusCode.FAILED_PRECONDITION
    assert off_lineage.reason == "SNAPSHOT_NOT_IN_LINEAGE"

    unknown = await _refused(changes(table_stub, 12345))
    assert unknown.code == grpc.StatusCode.FAILED_PRECONDITION
    assert unknown.reason == "SNAPSHOT_EXPIRED"

    table = direct_catalog(backend).load_table(("inc", "t"))
    table.maintenance.expire_snapshots().by_ids([second]).commit()
    expired = await _refused(changes(table_stub, second))
    assert expired.reason == "SNAPSHOT_EXPIRED"


async def test_bad_incremental_requests_are_invalid(ingest: Any, table_stub: Any) -> None:
    first = await write(ingest, {"id": 1, "name": "a"})
    end_only = tpb.ReadRowsRequest(namespace="inc", table="t", end_snapshot_id=first)
    err = await _refused(read_rows_to_arrow_async(table_stub.ReadRows(end_only)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations[0][0] == "end_snapshot_id"

    with_version = tpb.ReadRowsRequest(
        namespace="inc", table="t", start_snapshot_id=first, snapshot_id=first
    )
    err = await _refused(read_rows_to_arrow_async(table_stub.ReadRows(with_version)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations[0][0] == "start_snapshot_id"

    missing_end = await _refused(changes(table_stub, first, 777))
    assert missing_end.code == grpc.StatusCode.NOT_FOUND
