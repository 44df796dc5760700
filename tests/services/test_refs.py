"""Branches and tags over the wire: create, list, read, publish, delete; expiry keeps them.

Both backends. A branch gets commits from pyiceberg directly (the service's own writes to
branches come later), as from any engine sharing the catalog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyarrow as pa
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from fixtures.duckdb15 import duckdb15_python, iceberg_ids
from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from lakehouse.adapters.iceberg.expiry import expire_snapshots
from lakehouse.client.arrow import read_rows_to_arrow_async
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc, rows_pb2, schema_pb2, snapshot_pb2
from lakehouse.v1 import table_service_pb2 as tpb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
FAR_FUTURE_MS = 10**15


@pytest_asyncio.fixture
async def ingest(channel: grpc.aio.Channel, table_stub: Any) -> AsyncIterator[Any]:
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="refs"))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="refs",
            table="t",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
        )
    )
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


async def write(ingest: Any, *ids: int) -> int:
    rows = []
    for i in ids:
        s = struct_pb2.Struct()
        s.update({"id": i})
        rows.append(s)
    reply = await ingest.WriteRows(
        ipb.WriteRowsRequest(namespace="refs", table="t", json_rows=rows_pb2.JsonRows(rows=rows))
    )
    snapshot_id: int = reply.result.snapshot_id
    return snapshot_id


async def ids(table_stub: Any, **fields: Any) -> list[int]:
    data = await read_rows_to_arrow_async(
        table_stub.ReadRows(tpb.ReadRowsRequest(namespace="refs", table="t", **fields))
    )
    return sorted(data.column("id").to_pylist())


async def refused(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return rpc_error_details(caught.value)


def table_of(backend: Any) -> Any:
    return direct_catalog(backend).load_table(("refs", "t"))


async def test_a_tag_names_a_snapshot_that_reads_and_survives_expiry(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    tagged = await write(ingest, 1, 2)
    created = await table_stub.CreateTag(
        tpb.CreateTagRequest(namespace="refs", table="t", name="release-1")
    )
    assert created.ref.snapshot_id == tagged
    assert created.ref.type == snapshot_pb2.REF_TYPE_TAG
    await write(ingest, 3)
    await write(ingest, 4)

    listed = await table_stub.ListRefs(tpb.ListRefsRequest(namespace="refs", table="t"))
    assert [(r.name, r.type) for r in listed.refs] == [
        ("main", snapshot_pb2.REF_TYPE_BRANCH),
        ("release-1", snapshot_pb2.REF_TYPE_TAG),
    ]
    assert await ids(table_stub, ref="release-1") == [1, 2]
    assert await ids(table_stub) == [1, 2, 3, 4]

    expire_snapshots(table_of(backend), older_than_ms=FAR_FUTURE_MS, retain_last=1)

    assert {s.snapshot_id for s in table_of(backend).snapshots()} >= {tagged}
    assert await ids(table_stub, ref="release-1") == [1, 2]

    # Deleted, the tag no longer keeps its snapshot.
    await table_stub.DeleteRef(tpb.DeleteRefRequest(namespace="refs", table="t", name="release-1"))
    expire_snapshots(table_of(backend), older_than_ms=FAR_FUTURE_MS, retain_last=1)
    assert tagged not in {s.snapshot_id for s in table_of(backend).snapshots()}
    gone = await refused(ids(table_stub, ref="release-1"))
    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "REF_NOT_FOUND")


async def test_publishing_a_branch_fast_forwards_main(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    await write(ingest, 1)
    branch = await table_stub.CreateBranch(
        tpb.CreateBranchRequest(namespace="refs", table="t", name="audit", min_snapshots_to_keep=2)
    )
    assert branch.ref.min_snapshots_to_keep == 2
    table_of(backend).append(pa.table({"id": pa.array([10, 11], pa.int64())}), branch="audit")
    assert await ids(table_stub) == [1]
    assert await ids(table_stub, ref="audit") == [1, 10, 11]

    published = await table_stub.PublishBranch(
        tpb.PublishBranchRequest(namespace="refs", table="t", branch="audit")
    )

    head = table_of(backend).metadata.refs["audit"].snapshot_id
    assert published.table.current_snapshot_id == head
    assert await ids(table_stub) == [1, 10, 11]


async def test_a_branch_behind_main_is_not_published(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    await write(ingest, 1)
    await table_stub.CreateBranch(tpb.CreateBranchRequest(namespace="refs", table="t", name="b"))
    table_of(backend).append(pa.table({"id": pa.array([10], pa.int64())}), branch="b")
    main_before = await write(ingest, 2)  # main moved on since the branch was made

    err = await refused(
        table_stub.PublishBranch(tpb.PublishBranchRequest(namespace="refs", table="t", branch="b"))
    )

    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "NOT_FAST_FORWARD")
    assert table_of(backend).metadata.current_snapshot_id == main_before
    assert await ids(table_stub) == [1, 2]


async def test_bad_ref_requests_change_nothing(ingest: Any, table_stub: Any, backend: Any) -> None:
    empty = await refused(
        table_stub.CreateTag(tpb.CreateTagRequest(namespace="refs", table="t", name="v0"))
    )
    assert (empty.code, empty.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TABLE_HAS_NO_SNAPSHOT",
    )
    first = await write(ingest, 1)
    await table_stub.CreateTag(tpb.CreateTagRequest(namespace="refs", table="t", name="v1"))

    cases = [
        (tpb.CreateTagRequest(namespace="refs", table="t", name="main"), "INVALID_ARGUMENT"),
        (tpb.CreateTagRequest(namespace="refs", table="t", name="a/b"), "INVALID_ARGUMENT"),
        (tpb.CreateTagRequest(namespace="refs", table="t", name="v1"), "ALREADY_EXISTS"),
        (
            tpb.CreateTagRequest(namespace="refs", table="t", name="v2", snapshot_id=first + 1),
            "NOT_FOUND",
        ),
        (
            tpb.CreateBranchRequest(namespace="refs", table="t", name="b", min_snapshots_to_keep=0),
            "INVALID_ARGUMENT",
        ),
        (tpb.DeleteRefRequest(namespace="refs", table="t", name="main"), "INVALID_ARGUMENT"),
        (tpb.DeleteRefRequest(namespace="refs", table="t", name="nope"), "NOT_FOUND"),
        (tpb.PublishBranchRequest(namespace="refs", table="t", branch="v1"), "FAILED_PRECONDITION"),
    ]
    methods = {
        tpb.CreateTagRequest: table_stub.CreateTag,
        tpb.CreateBranchRequest: table_stub.CreateBranch,
        tpb.DeleteRefRequest: table_stub.DeleteRef,
        tpb.PublishBranchRequest: table_stub.PublishBranch,
    }
    before = table_of(backend).metadata.refs
    for request, code in cases:
        err = await refused(methods[type(request)](request))
        assert err.code.name == code, request
    assert table_of(backend).metadata.refs == before

    both = await refused(ids(table_stub, ref="v1", snapshot_id=first))
    assert both.code == grpc.StatusCode.INVALID_ARGUMENT
    assert both.field_violations[0][0] == "ref"


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_duckdb_reads_a_tagged_snapshot_and_a_published_branch(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    python = await asyncio.to_thread(duckdb15_python)
    await write(ingest, 1, 2)
    tag = await table_stub.CreateTag(tpb.CreateTagRequest(namespace="refs", table="t", name="v1"))
    await table_stub.CreateBranch(tpb.CreateBranchRequest(namespace="refs", table="t", name="b"))
    table_of(backend).append(pa.table({"id": pa.array([7], pa.int64())}), branch="b")
    await table_stub.PublishBranch(
        tpb.PublishBranchRequest(namespace="refs", table="t", branch="b")
    )
    location = table_of(backend).metadata_location

    published = await asyncio.to_thread(iceberg_ids, python, location, backend)
    tagged = await asyncio.to_thread(
        iceberg_ids, python, location, backend, "id", tag.ref.snapshot_id
    )

    assert (published, tagged) == ([1, 2, 7], [1, 2])
