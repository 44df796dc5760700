"""IngestService over the wire: WriteRows, AppendRows and GetWriter against a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyarrow as pa
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, struct_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from lakehouse.client.arrow import append_rows_requests, write_rows_request
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
)
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
DOUBLE = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_DOUBLE)


@pytest_asyncio.fixture
async def ingest_stub(channel: grpc.aio.Channel, table_stub: Any) -> AsyncIterator[Any]:
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="ing"))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="ing",
            table="events",
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(name="id", type=LONG, required=True),
                    schema_pb2.Field(name="kind", type=STRING),
                    schema_pb2.Field(name="amount", type=DOUBLE),
                ]
            ),
        )
    )
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


def arrow_rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + count), pa.int32()),  # cast safely to long
            "kind": [f"k{i % 3}" for i in range(count)],
        }
    )  # "amount" is optional and missing: filled with nulls


def ids(settings: Any) -> list[int]:
    table = direct_catalog(settings).load_table(("ing", "events"))
    return sorted(table.scan().to_arrow().column("id").to_pylist())


def json_rows(*rows: dict[str, Any]) -> rows_pb2.JsonRows:
    structs = []
    for row in rows:
        s = struct_pb2.Struct()
        s.update(row)
        structs.append(s)
    return rows_pb2.JsonRows(rows=structs)


async def test_write_rows_json_and_arrow_with_request_id(ingest_stub: Any, backend: Any) -> None:
    reply = await ingest_stub.WriteRows(
        ipb.WriteRowsRequest(
            namespace="ing",
            table="events",
            json_rows=json_rows({"id": 1, "kind": "a", "amount": 2.5}, {"id": 2}),
            request_id="req-json",
        )
    )
    assert reply.result.rows_written == 2
    assert reply.result.snapshot_id != 0
    assert not reply.result.already_written

    request = write_rows_request("ing", "events", arrow_rows(10, 5), request_id="req-arrow")
    first = await ingest_stub.WriteRows(request)
    second = await ingest_stub.WriteRows(request)
    assert first.result.rows_written == 5 and not first.result.already_written
    assert second.result.already_written and second.result.rows_written == 5
    assert ids(backend) == [1, 2, 10, 11, 12, 13, 14]


async def test_a_resend_after_its_snapshot_expired_is_still_already_written(
    ingest_stub: Any, channel: grpc.aio.Channel, backend: Any
) -> None:
    request = write_rows_request("ing", "events", arrow_rows(0, 4), request_id="req-keep")
    first = await ingest_stub.WriteRows(request)
    for i in range(3):
        await ingest_stub.WriteRows(write_rows_request("ing", "events", arrow_rows(10 + i, 1)))
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    created = await jobs.CreateJob(
        jpb.CreateJobRequest(
            spec=job_pb2.JobSpec(
                expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
                    namespace="ing",
                    table="events",
                    retain_last=1,
                    max_snapshot_age=duration_pb2.Duration(seconds=0),
                )
            )
        )
    )
    job = created.job
    async for message in jobs.WatchJob(jpb.WatchJobRequest(job_id=job.id), timeout=60):
        job = message.job
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.result.expire_snapshots.snapshots_expired == 3
    table = direct_catalog(backend).load_table(("ing", "events"))
    assert len(table.metadata.snapshots) == 1

    again = await ingest_stub.WriteRows(request)

    assert again.result.already_written
    assert again.result.rows_written == first.result.rows_written == 4
    assert ids(backend) == [0, 1, 2, 3, 10, 11, 12]


async def test_append_rows_stream_exactly_once_and_resume(ingest_stub: Any, backend: Any) -> None:
    data = arrow_rows(0, 3000)
    requests = list(
        append_rows_requests("ing", "events", data, writer_id="w-1", max_batch_bytes=4096)
    )
    assert len(requests) > 3
    acks = [a async for a in ingest_stub.AppendRows(iter(requests))]
    assert len(acks) == len(requests)
    assert all(a.WhichOneof("response") == "result" for a in acks), acks[0]
    assert [a.offset for a in acks] == [r.offset for r in requests]
    assert sum(a.result.rows_written for a in acks) == 3000

    writer = (
        await ingest_stub.GetWriter(
            ipb.GetWriterRequest(namespace="ing", table="events", writer_id="w-1")
        )
    ).writer
    assert writer.next_offset == 3000
    assert writer.last_snapshot_id == acks[-1].result.snapshot_id
    assert writer.last_commit_time.seconds > 0

    # a crashed client resends the whole stream: every request is already written
    again = [a async for a in ingest_stub.AppendRows(iter(requests))]
    assert all(a.result.already_written for a in again)
    assert ids(backend) == list(range(3000))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_stream_errors_are_per_request_and_the_stream_goes_on(
    ingest_stub: Any, backend: Any
) -> None:
    good = list(append_rows_requests("ing", "events", arrow_rows(0, 10), writer_id="w-2"))
    bad_json = ipb.AppendRowsRequest(
        json_rows=json_rows({"id": "not a number"}, {"kind": "no id"}), offset=10
    )
    gap = ipb.AppendRowsRequest(json_rows=json_rows({"id": 500}), offset=500)
    fixed = ipb.AppendRowsRequest(json_rows=json_rows({"id": 10}, {"id": 11}), offset=10)
    corrupt = ipb.AppendRowsRequest(
        arrow_record_batch=rows_pb2.ArrowRecordBatch(serialized_record_batch=b"garbage"),
        offset=12,
    )
    acks = [a async for a in ingest_stub.AppendRows(iter([*good, bad_json, gap, fixed, corrupt]))]
    kinds = [a.WhichOneof("response") for a in acks]
    assert kinds == ["result"] * len(good) + ["error", "error", "result", "error"]
    invalid = acks[len(good)]
    assert invalid.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "rows[0].id" in invalid.error.message or "rows[0]" in invalid.error.message
    out_of_range = acks[len(good) + 1]
    assert out_of_range.error.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    assert acks[len(good) + 2].result.rows_written == 2
    assert acks[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert ids(backend) == list(range(12))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_write_rows_rejects_bad_rows_with_row_and_column(
    ingest_stub: Any, backend: Any
) -> None:
    cases = [
        json_rows({"id": 1}, {"id": 2, "unknown": 1}),
        json_rows({"id": 1}, {"kind": "x"}),
        json_rows({"id": 1.5}),
    ]
    for rows in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await ingest_stub.WriteRows(
                ipb.WriteRowsRequest(namespace="ing", table="events", json_rows=rows)
            )
        details = rpc_error_details(exc.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.reason == "INVALID_ROWS"
        assert details.violated_fields[0].startswith("rows[")
    assert ids(backend) == []
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await ingest_stub.WriteRows(
            ipb.WriteRowsRequest(namespace="ing", table="nope", json_rows=json_rows({"id": 1}))
        )
    assert rpc_error_details(exc.value).reason == "TABLE_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await ingest_stub.GetWriter(
            ipb.GetWriterRequest(namespace="ing", table="events", writer_id="ghost")
        )
    assert rpc_error_details(exc.value).reason == "WRITER_NOT_FOUND"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_dead_letters_keep_valid_rows_and_record_invalid_ones(
    ingest_stub: Any, table_stub: Any, backend: Any
) -> None:
    rows = json_rows({"id": 1}, {"id": "two"}, {"id": 3, "extra": True})
    reply = await ingest_stub.WriteRows(
        ipb.WriteRowsRequest(
            namespace="ing",
            table="events",
            json_rows=rows,
            invalid_row_policy=ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER,
        )
    )
    assert reply.result.rows_written == 1
    assert reply.result.rows_dead_lettered == 2
    assert (reply.result.dead_letter_table.namespace, reply.result.dead_letter_table.table) == (
        "ing",
        "_dead_letters",
    )
    assert [(e.row_index, e.column) for e in reply.row_errors] == [(1, "id"), (2, "extra")]
    assert ids(backend) == [1]
    letters = direct_catalog(backend).load_table(("ing", "_dead_letters")).scan().to_arrow()
    got = sorted(zip(letters["row_index"].to_pylist(), letters["reason"].to_pylist(), strict=True))
    assert got == [(1, "TYPE_MISMATCH"), (2, "UNKNOWN_COLUMN")]
    assert set(letters["table"].to_pylist()) == {"events"}
    assert '"two"' in letters["payload"].to_pylist()[letters["row_index"].to_pylist().index(1)]

    # the table's own default, and offsets that count dead-lettered rows too
    await table_stub.UpdateTable(
        tpb.UpdateTableRequest(
            namespace="ing",
            table="events",
            changes=[
                tpb.TableChange(
                    set_properties=tpb.SetProperties(
                        properties={"lakehouse.ingest.invalid-row-policy": "dead-letter"}
                    )
                )
            ],
        )
    )
    stream = [
        ipb.AppendRowsRequest(
            namespace="ing",
            table="events",
            writer_id="dl",
            offset=0,
            json_rows=json_rows({"id": 10}, {"id": None}, {"id": 12}),
        ),
        ipb.AppendRowsRequest(offset=3, json_rows=json_rows({"id": 13})),
    ]
    acks = [a async for a in ingest_stub.AppendRows(iter(stream))]
    assert [(a.offset, a.result.rows_written, a.result.rows_dead_lettered) for a in acks] == [
        (0, 2, 1),
        (3, 1, 0),
    ]
    writer = await ingest_stub.GetWriter(
        ipb.GetWriterRequest(namespace="ing", table="events", writer_id="dl")
    )
    assert writer.writer.next_offset == 4
    assert ids(backend) == [1, 10, 12, 13]
