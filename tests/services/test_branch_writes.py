"""Writes on a branch over the wire: WriteRows, AppendRows, DeleteRows, GetWriter (both backends).

Rows committed to a branch stay off main until PublishBranch; a writer's offsets are those
of the branch written to; a bad branch is refused and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from lakehouse.client.arrow import read_rows_to_arrow_async
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
TABLE = {"namespace": "br", "table": "t"}


@pytest_asyncio.fixture
async def ingest(channel: grpc.aio.Channel, table_stub: Any) -> AsyncIterator[Any]:
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="br"))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            **TABLE,
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
        )
    )
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


def rows(*ids: int) -> rows_pb2.JsonRows:
    out = []
    for i in ids:
        s = struct_pb2.Struct()
        s.update({"id": i})
        out.append(s)
    return rows_pb2.JsonRows(rows=out)


async def write(ingest: Any, *ids: int, **fields: Any) -> Any:
    reply = await ingest.WriteRows(ipb.WriteRowsRequest(**TABLE, json_rows=rows(*ids), **fields))
    return reply.result


async def append(ingest: Any, writer: str, offset: int, *ids: int, branch: str = "") -> Any:
    """One AppendRows stream of one request; its one acknowledgement."""

    async def stream() -> AsyncIterator[ipb.AppendRowsRequest]:
        yield ipb.AppendRowsRequest(
            **TABLE, writer_id=writer, offset=offset, json_rows=rows(*ids), branch=branch
        )

    acks = [a async for a in ingest.AppendRows(stream())]
    assert len(acks) == 1
    return acks[0]


async def ids(table_stub: Any, ref: str = "") -> list[int]:
    data = await read_rows_to_arrow_async(
        table_stub.ReadRows(tpb.ReadRowsRequest(**TABLE, ref=ref))
    )
    return sorted(data.column("id").to_pylist())


async def branch(table_stub: Any, name: str = "audit") -> int:
    created = await table_stub.CreateBranch(tpb.CreateBranchRequest(**TABLE, name=name))
    snapshot_id: int = created.ref.snapshot_id
    return snapshot_id


async def next_offset(ingest: Any, writer: str, branch: str = "") -> int:
    reply = await ingest.GetWriter(ipb.GetWriterRequest(**TABLE, writer_id=writer, branch=branch))
    offset: int = reply.writer.next_offset
    return offset


async def refused(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return rpc_error_details(caught.value)


async def test_rows_written_to_a_branch_stay_off_main_until_published(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    await write(ingest, 1)
    fork = await branch(table_stub)
    first = await write(ingest, 10, 11, branch="audit", request_id="load-1")
    assert first.rows_written == 2

    catalog = direct_catalog(backend)
    table = catalog.load_table(("br", "t"))
    assert table.metadata.refs["audit"].snapshot_id == first.snapshot_id
    assert table.snapshot_by_id(first.snapshot_id).parent_snapshot_id == fork  # type: ignore[union-attr]
    assert await ids(table_stub) == [1]
    assert await ids(table_stub, ref="audit") == [1, 10, 11]

    # The request id is remembered in the branch's history: a retry writes nothing.
    again = await write(ingest, 10, 11, branch="audit", request_id="load-1")
    assert again.already_written
    assert await ids(table_stub, ref="audit") == [1, 10, 11]

    published = await table_stub.PublishBranch(tpb.PublishBranchRequest(**TABLE, branch="audit"))
    assert published.table.current_snapshot_id == first.snapshot_id
    assert await ids(table_stub) == [1, 10, 11]


async def test_a_writers_offsets_are_per_branch(ingest: Any, table_stub: Any) -> None:
    assert (await append(ingest, "w", 0, 1, 2)).result.rows_written == 2
    await branch(table_stub)  # inherits main's offsets at the fork
    assert await next_offset(ingest, "w", "audit") == 2

    on_branch = await append(ingest, "w", 2, 3, branch="audit")
    assert on_branch.result.rows_written == 1
    assert await next_offset(ingest, "w", "audit") == 3
    assert await next_offset(ingest, "w") == 2

    # A resend on the branch is deduplicated there; main still expects offset 2.
    resent = await append(ingest, "w", 2, 3, branch="audit")
    assert resent.result.already_written
    on_main = await append(ingest, "w", 2, 30)
    assert on_main.result.rows_written == 1
    assert not on_main.result.already_written

    assert await ids(table_stub) == [1, 2, 30]
    assert await ids(table_stub, ref="audit") == [1, 2, 3]
    gap = await append(ingest, "w", 5, 9, branch="audit")
    assert gap.error.code == grpc.StatusCode.OUT_OF_RANGE.value[0]


async def test_row_changes_on_a_branch_leave_main_alone(ingest: Any, table_stub: Any) -> None:
    await write(ingest, 1, 2, 3)
    await branch(table_stub)

    deleted = await table_stub.DeleteRows(
        tpb.DeleteRowsRequest(**TABLE, row_filter="id = 2", branch="audit")
    )
    assert deleted.rows_deleted == 1
    assert await ids(table_stub, ref="audit") == [1, 3]

    replaced = await write(
        ingest,
        30,
        branch="audit",
        write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
        overwrite_filter="id >= 3",
    )
    assert replaced.rows_written == 1
    assert await ids(table_stub, ref="audit") == [1, 30]
    assert await ids(table_stub) == [1, 2, 3]

    # A delete on main does not see the branch's rows either.
    nothing = await table_stub.DeleteRows(tpb.DeleteRowsRequest(**TABLE, row_filter="id = 30"))
    assert nothing.rows_deleted == 0


async def test_concurrent_writes_to_main_and_a_branch_do_not_interfere(
    ingest: Any, table_stub: Any
) -> None:
    await write(ingest, 0)
    await branch(table_stub)
    # Each round commits to both at once: a commit to one may be planned on metadata the
    # other's commit made stale, a lost race to plan again, never an error.
    for round_ in range(3):
        base = round_ * 10
        await asyncio.gather(
            *(write(ingest, base + i) for i in range(1, 6)),
            *(write(ingest, 100 + base + i, branch="audit") for i in range(1, 6)),
        )
    on_main = [r * 10 + i for r in range(3) for i in range(1, 6)]
    assert await ids(table_stub) == [0, *on_main]
    assert await ids(table_stub, ref="audit") == [0, *(100 + i for i in on_main)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_watch_on_main_does_not_report_branch_commits(ingest: Any, table_stub: Any) -> None:
    await write(ingest, 1)
    await branch(table_stub)
    call = table_stub.WatchTable(tpb.WatchTableRequest(**TABLE))
    events: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        async for event in call:
            await events.put(event)

    reader = asyncio.ensure_future(read())
    try:
        await asyncio.sleep(0.3)  # the watch has taken main's head as its cursor
        await write(ingest, 10, branch="audit")
        on_main = await write(ingest, 2)
        event = await asyncio.wait_for(events.get(), 20.0)
        assert event.snapshot.snapshot_id == on_main.snapshot_id
        assert events.empty()
    finally:
        call.cancel()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await reader


async def test_bad_branches_are_refused_and_change_nothing(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    await write(ingest, 1)
    await table_stub.CreateTag(tpb.CreateTagRequest(**TABLE, name="v1"))
    before = direct_catalog(backend).load_table(("br", "t")).metadata_location

    cases = [
        ("nope", grpc.StatusCode.NOT_FOUND, "REF_NOT_FOUND"),
        ("v1", grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_BRANCH"),
        ("a b", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"),
    ]
    for name, code, reason in cases:
        calls = [
            write(ingest, 5, branch=name),
            table_stub.DeleteRows(tpb.DeleteRowsRequest(**TABLE, row_filter="true", branch=name)),
            ingest.GetWriter(ipb.GetWriterRequest(**TABLE, writer_id="w", branch=name)),
        ]
        for call in calls:
            error = await refused(call)
            assert (error.code, error.reason) == (code, reason), (name, error)
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                assert error.violated_fields == ["branch"]
        ack = await append(ingest, "w", 0, 5, branch=name)
        assert ack.error.code == code.value[0], (name, ack)

    assert direct_catalog(backend).load_table(("br", "t")).metadata_location == before
    assert await ids(table_stub) == [1]


def files_of(backend: Any, ref: str) -> int:
    table = direct_catalog(backend).load_table(("br", "t"))
    head = table.metadata.refs[ref].snapshot_id
    return len(list(table.scan(snapshot_id=head).plan_files()))


async def test_compaction_on_a_branch_rewrites_the_branch_only(
    ingest: Any, table_stub: Any, channel: grpc.aio.Channel, backend: Any
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    await write(ingest, 1)
    await write(ingest, 2)
    await branch(table_stub)
    for i in range(3):
        await write(ingest, 10 + i, branch="audit")
    assert (files_of(backend, "main"), files_of(backend, "audit")) == (2, 5)
    main_head = direct_catalog(backend).load_table(("br", "t")).metadata.current_snapshot_id

    spec = job_pb2.JobSpec(
        compact_table=job_pb2.CompactTableJobSpec(namespace="br", table="t", branch="audit")
    )
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    job = await finished(jobs, created.job.id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.result.compact_table.files_before == 5

    table = direct_catalog(backend).load_table(("br", "t"))
    assert table.metadata.refs["audit"].snapshot_id == job.result.compact_table.snapshot_id
    assert table.metadata.current_snapshot_id == main_head
    assert (files_of(backend, "main"), files_of(backend, "audit")) == (2, 1)
    assert await ids(table_stub, ref="audit") == [1, 2, 10, 11, 12]
    assert await ids(table_stub) == [1, 2]

    # A bad name is refused at once; a branch the table does not have fails the job.
    bad = job_pb2.JobSpec(
        compact_table=job_pb2.CompactTableJobSpec(namespace="br", table="t", branch="a b")
    )
    error = await refused(jobs.CreateJob(jpb.CreateJobRequest(spec=bad)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violated_fields == ["spec.compact_table.branch"]
    missing = job_pb2.JobSpec(
        compact_table=job_pb2.CompactTableJobSpec(namespace="br", table="t", branch="nope")
    )
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=missing))
    failed = await finished(jobs, created.job.id)
    assert failed.state == job_pb2.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.NOT_FOUND.value[0]


async def finished(jobs: Any, job_id: str) -> Any:
    last = None

    async def watch() -> None:
        nonlocal last
        async for message in jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id)):
            last = message.job

    await asyncio.wait_for(watch(), 60.0)
    return last


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_invalid_rows_are_not_dead_lettered_for_a_write_to_no_branch(
    ingest: Any, table_stub: Any
) -> None:
    bad = struct_pb2.Struct()
    bad.update({"id": "not a number"})
    good = rows(1).rows[0]
    request = ipb.WriteRowsRequest(
        **TABLE,
        json_rows=rows_pb2.JsonRows(rows=[good, bad]),
        invalid_row_policy=ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER,
    )
    request.branch = "nope"
    error = await refused(ingest.WriteRows(request))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "REF_NOT_FOUND")
    listed = await table_stub.ListTables(tpb.ListTablesRequest(namespace="br"))
    assert "_dead_letters" not in [t.table for t in listed.tables]

    # On a branch that exists, the valid row goes to the branch and the other is dead-lettered.
    await write(ingest, 0)
    await branch(table_stub)
    request.branch = "audit"
    reply = await ingest.WriteRows(request)
    assert reply.result.rows_written == 1
    assert reply.result.rows_dead_lettered == 1
    assert await ids(table_stub, ref="audit") == [0, 1]
    assert await ids(table_stub) == [0]


async def sql(jobs: Any, statement: str) -> Any:
    spec = job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(statement=statement, preview_format=rows_pb2.ROW_FORMAT_JSON)
    )
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    return await finished(jobs, created.job.id)


async def test_a_sql_job_reads_a_branch_or_a_tag_by_table_at_ref(
    ingest: Any, table_stub: Any, channel: grpc.aio.Channel
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    await write(ingest, 1, 2)
    await table_stub.CreateTag(tpb.CreateTagRequest(**TABLE, name="v1"))
    await branch(table_stub)
    await write(ingest, 10, -5, branch="audit")
    await write(ingest, 3)

    job = await sql(
        jobs,
        'SELECT (SELECT count(*) FROM br."t@audit") AS audit, '
        '(SELECT count(*) FROM br."t@audit" WHERE id < 0) AS negative, '
        '(SELECT count(*) FROM br."t@v1") AS tagged, (SELECT count(*) FROM br.t) AS main',
    )
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    row = job.result.sql.preview_json_rows.rows[0]
    assert {k: int(v.number_value) for k, v in row.fields.items()} == {
        "audit": 4,
        "negative": 1,
        "tagged": 2,
        "main": 3,
    }

    missing = await sql(jobs, 'SELECT count(*) FROM br."t@nope"')
    assert missing.state == job_pb2.JOB_STATE_FAILED
    assert missing.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    # A branch is read-only in SQL (its writes go through the branch field of the RPCs):
    # such a statement creates no job.
    for statement in (
        'DELETE FROM br."t@audit" WHERE id < 0',
        'INSERT INTO br."t@audit" VALUES (7)',
    ):
        error = await refused(sql(jobs, statement))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SQL_NOT_ALLOWED")
    # What follows '@' is a ref name: it cannot smuggle a path in.
    error = await refused(sql(jobs, 'SELECT * FROM br."t@../../etc/passwd"'))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SQL_NOT_ALLOWED")
    assert await ids(table_stub, ref="audit") == [-5, 1, 2, 10]


async def test_an_overwrite_stream_replaces_the_branchs_rows_only(
    ingest: Any, table_stub: Any
) -> None:
    await write(ingest, 1, 2)
    await branch(table_stub)

    async def stream() -> AsyncIterator[ipb.AppendRowsRequest]:
        yield ipb.AppendRowsRequest(
            **TABLE,
            branch="audit",
            write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
            overwrite_filter="true",
            json_rows=rows(7),
        )
        yield ipb.AppendRowsRequest(json_rows=rows(8), branch="audit")

    acks = [a async for a in ingest.AppendRows(stream())]
    assert [a.WhichOneof("response") for a in acks] == ["result", "result"]
    assert acks[0].result.snapshot_id == acks[1].result.snapshot_id  # one commit
    assert await ids(table_stub, ref="audit") == [7, 8]
    assert await ids(table_stub) == [1, 2]
