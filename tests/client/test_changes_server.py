"""lakehouse.client.changes and the write modes of lakehouse.client.arrow against the real
server, on both backends, through sync stubs as a user's service would call them."""

from __future__ import annotations

import asyncio
import decimal
import hashlib
import json
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.serve_process import serve_process
from lakehouse.client import Lakehouse
from lakehouse.client.arrow import append_rows_requests, read_table, write_rows_request
from lakehouse.client.changes import (
    Change,
    changes_to_arrow,
    delete_rows_request,
    writer_next_offset,
)
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2_grpc,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
MONEY = schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=12, scale=2))


async def create_table(stub: Any) -> None:
    await stub.CreateNamespace(pb.CreateNamespaceRequest(name="crm"))
    fields = [
        schema_pb2.Field(name="id", type=LONG, required=True),
        schema_pb2.Field(name="name", type=STRING),
        schema_pb2.Field(name="balance", type=MONEY),
    ]
    await stub.CreateTable(
        pb.CreateTableRequest(
            namespace="crm",
            table="customers",
            schema=schema_pb2.Schema(fields=fields, identifier_field_names=["id"]),
        )
    )


def rows(tables: Any) -> dict[int, tuple[str | None, decimal.Decimal | None]]:
    found = read_table(tables, "crm", "customers").to_pylist()
    return {r["id"]: (r["name"], r["balance"]) for r in found}


def upsert_stream(
    ingest: Any, schema: pa.Schema, changes: list[Change], writer_id: str, max_batch_bytes: int
) -> list[Any]:
    start = writer_next_offset(ingest, "crm", "customers", writer_id)
    data = changes_to_arrow(changes[start:], schema, key_columns=["id"])
    requests = append_rows_requests(
        "crm",
        "customers",
        data,
        writer_id=writer_id,
        start_offset=start,
        write_mode=ingest_pb2.WRITE_MODE_UPSERT,
        max_batch_bytes=max_batch_bytes,
    )
    acks = list(ingest.AppendRows(requests, timeout=60))
    assert not [a for a in acks if a.HasField("error")]
    return acks


async def test_change_streams_overwrites_and_deletes_through_the_helpers(
    table_stub: Any, grpc_target: str
) -> None:
    await create_table(table_stub)

    def scenario() -> None:
        with grpc.insecure_channel(grpc_target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            schema = read_table(tables, "crm", "customers", row_limit=1).schema
            assert writer_next_offset(ingest, "crm", "customers", "cdc") == 0  # a new writer
            with pytest.raises(grpc.RpcError) as missing:
                writer_next_offset(ingest, "crm", "nope", "cdc")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # the table, not the writer

            changes = [
                Change.upsert({"id": i, "name": f"n{i}", "balance": decimal.Decimal(i)}, i)
                for i in range(1, 40)
            ]
            changes += [
                Change.delete({"id": 999}, 99),  # a key that is not there: fine
                Change.delete({"id": 3}, 100),
                Change.upsert({"id": 4, "name": "four"}, 101),
            ]
            # Several requests, each its own commit.
            upsert_stream(ingest, schema, changes[:20], "cdc", max_batch_bytes=512)
            assert writer_next_offset(ingest, "crm", "customers", "cdc") == 20
            # A restarted writer sends everything again; the helper resumes at offset 20.
            acks = upsert_stream(ingest, schema, changes, "cdc", max_batch_bytes=1 << 20)
            assert [a.offset for a in acks] == [20]
            assert writer_next_offset(ingest, "crm", "customers", "cdc") == len(changes)
            expected = {i: (f"n{i}", decimal.Decimal(i)) for i in range(1, 40) if i != 3}
            expected[4] = ("four", None)
            assert rows(tables) == expected

            # OVERWRITE by filter, through write_rows_request.
            replacement = pa.table({"id": [500], "name": ["big"]})
            result = ingest.WriteRows(
                write_rows_request(
                    "crm",
                    "customers",
                    replacement,
                    write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
                    overwrite_filter="id >= 30",
                ),
                timeout=60,
            ).result
            assert (result.rows_written, result.rows_deleted) == (1, 10)
            assert max(rows(tables)) == 500 and 30 not in rows(tables)

            # DeleteRows, retried with its request id, and refused on a stale etag.
            etag = tables.GetTable(pb.GetTableRequest(namespace="crm", table="customers"))
            request = delete_rows_request(
                "crm", "customers", "id < 10", request_id="gdpr-1", expected_etag=etag.table.etag
            )
            first = tables.DeleteRows(request, timeout=60)
            # The retry of a delete that went through: its etag is stale now (that delete
            # changed the table), so it goes without one.
            retry = delete_rows_request("crm", "customers", "id < 10", request_id="gdpr-1")
            again = tables.DeleteRows(retry, timeout=60)
            assert first.rows_deleted == again.rows_deleted == 8  # 1..9 without 3
            assert again.already_applied
            stale = delete_rows_request(
                "crm", "customers", "id = 500", expected_etag=etag.table.etag
            )
            with pytest.raises(grpc.RpcError) as aborted:
                tables.DeleteRows(stale, timeout=60)
            assert aborted.value.code() == grpc.StatusCode.ABORTED
            assert min(rows(tables)) == 10

    await asyncio.to_thread(scenario)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_upsert_request_that_changes_nothing_still_moves_the_writer_on(
    table_stub: Any, backend: Any, grpc_target: str
) -> None:
    await create_table(table_stub)

    def scenario() -> int:
        with grpc.insecure_channel(grpc_target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            schema = read_table(tables, "crm", "customers", row_limit=1).schema
            upsert_stream(ingest, schema, [Change.delete({"id": 1}, 1)], "w", 1 << 20)
            return writer_next_offset(ingest, "crm", "customers", "w")

    assert await asyncio.to_thread(scenario) == 1


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_the_retry_of_a_conditional_delete_is_already_applied(
    table_stub: Any, backend: Any, grpc_target: str
) -> None:
    await create_table(table_stub)

    def scenario() -> bool:
        with grpc.insecure_channel(grpc_target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            schema = read_table(tables, "crm", "customers", row_limit=1).schema
            upsert_stream(ingest, schema, [Change.upsert({"id": 1}, 1)], "w", 1 << 20)
            etag = tables.GetTable(pb.GetTableRequest(namespace="crm", table="customers"))
            request = delete_rows_request(
                "crm", "customers", "id = 1", request_id="r1", expected_etag=etag.table.etag
            )
            tables.DeleteRows(request, timeout=60)
            return bool(tables.DeleteRows(request, timeout=60).already_applied)

    assert await asyncio.to_thread(scenario)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_delete_change_needs_only_the_key_even_with_required_columns(
    table_stub: Any, backend: Any, grpc_target: str
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="crm"))
    fields = [
        schema_pb2.Field(name="id", type=LONG, required=True),
        schema_pb2.Field(name="name", type=STRING, required=True),
    ]
    await table_stub.CreateTable(
        pb.CreateTableRequest(
            namespace="crm",
            table="customers",
            schema=schema_pb2.Schema(fields=fields, identifier_field_names=["id"]),
        )
    )

    def scenario() -> list[Any]:
        with grpc.insecure_channel(grpc_target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            schema = read_table(tables, "crm", "customers", row_limit=1).schema
            # The writer's whole sequence each time: the helper resends from GetWriter's offset.
            history = [Change.upsert({"id": 1, "name": "a"}, 1)]
            upsert_stream(ingest, schema, history, "w", 1 << 20)
            history.append(Change.delete({"id": 1}, 2))
            upsert_stream(ingest, schema, history, "w", 1 << 20)
            return list(read_table(tables, "crm", "customers").to_pylist())

    assert await asyncio.to_thread(scenario) == []


KEY = "lh_changes-helpers-test-key"


def test_writer_next_offset_sends_credentials_and_reads_the_offsets_of_a_branch(
    tmp_path: Path,
) -> None:
    key = {"name": "cdc", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "role": "admin"}
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False)])
    with serve_process(tmp_path, {"LAKEHOUSE_AUTH__API_KEYS": json.dumps([key])}) as server:
        with Lakehouse(server.target, api_key=KEY) as lh:
            lh.create_namespace("crm")
            lh.create_table("crm.t", schema)
            lh.write("crm.t", pa.table({"id": [0]}, schema=schema))
        metadata = [("authorization", f"Bearer {KEY}")]
        with grpc.insecure_channel(server.target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            tables.CreateBranch(
                pb.CreateBranchRequest(namespace="crm", table="t", name="audit"),
                metadata=metadata,
                timeout=60,
            )
            requests = list(
                append_rows_requests(
                    "crm", "t", pa.table({"id": range(1, 6)}, schema=schema), writer_id="w"
                )
            )
            requests[0].branch = "audit"
            acks = list(ingest.AppendRows(iter(requests), metadata=metadata, timeout=60))
            assert not [a for a in acks if a.HasField("error")]

            assert (
                writer_next_offset(ingest, "crm", "t", "w", branch="audit", metadata=metadata) == 5
            )
            assert writer_next_offset(ingest, "crm", "t", "w", metadata=metadata) == 0  # main's
            with pytest.raises(grpc.RpcError) as anonymous:
                writer_next_offset(ingest, "crm", "t", "w", branch="audit")
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
