"""Read sessions: CreateReadSession and ReadRows(read_session, stream), on real tables.

The streams of a session, read in index order, must return exactly the rows of one ReadRows
of the same selection (same rows, same order), on both backends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from services.test_snapshots_and_reads import make_table, read_arrow, rows

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import append
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.signing_key_store import shared_signing_key
from lakehouse.client.parallel_reads import read_session_table_async
from lakehouse.config import Settings
from lakehouse.core.read_sessions import SessionSigner
from lakehouse.core.signing_key import SigningKey
from lakehouse.domain.read_sessions import SessionClaims, b64decode, b64encode
from lakehouse.server.signing_key import KEY_FILE, local_key
from lakehouse.v1 import rows_pb2
from lakehouse.v1 import table_service_pb2 as pb

CALL_TIMEOUT_SECONDS = 30


def decode(responses: list[Any]) -> pa.Table:
    assert responses[0].WhichOneof("payload") == "arrow_schema"
    schema = pa.ipc.read_schema(pa.py_buffer(responses[0].arrow_schema.serialized_schema))
    batches = [
        pa.ipc.read_record_batch(pa.py_buffer(r.arrow_record_batch.serialized_record_batch), schema)
        for r in responses[1:]
    ]
    return pa.Table.from_batches(batches, schema=schema)


async def create(stub: Any, **kwargs: Any) -> Any:
    request = pb.CreateReadSessionRequest(namespace="r", table="t", **kwargs)
    return (await stub.CreateReadSession(request, timeout=CALL_TIMEOUT_SECONDS)).session


async def read_stream(stub: Any, session: str, index: int) -> pa.Table:
    request = pb.ReadRowsRequest(read_session=session, stream=index)
    return decode([r async for r in stub.ReadRows(request, timeout=CALL_TIMEOUT_SECONDS)])


async def read_session(stub: Any, session: Any) -> pa.Table:
    """Every stream, read at once, concatenated in index order."""
    parts = await asyncio.gather(
        *(read_stream(stub, session.name, s.index) for s in session.streams)
    )
    schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
    for part in parts:
        assert part.schema == schema
    return pa.concat_tables(parts)


def server_key(settings: Settings) -> SigningKey:
    """The key a server on ``settings`` signs with (none configured: the job store's, or the
    data folder's)."""
    store = JobStore(settings.jobs_database_uri)
    try:
        if store.shared:
            return SigningKey(shared_signing_key(store))
    finally:
        store.close()
    return SigningKey(local_key(settings.data_dir / KEY_FILE))


async def failure(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if hasattr(call, "__aiter__"):
            [r async for r in call]
        else:
            await call
    return rpc_error_details(raised.value)


async def test_streams_return_exactly_the_rows_of_one_read_rows(
    table_stub: Any, backend: Settings
) -> None:
    await make_table(table_stub)
    # An empty table: one stream, no rows, the table's schema.
    empty = await create(table_stub, max_streams=4)
    assert len(empty.streams) == 1 and not empty.HasField("snapshot_id")
    assert (await read_session(table_stub, empty)).num_rows == 0

    append(backend, "r", "t", rows(0, 50))
    one_file = await create(table_stub, max_streams=8)
    assert len(one_file.streams) == 1, "never more streams than files"
    assert (await read_session(table_stub, one_file)).equals((await read_arrow(table_stub))[0])

    for start in range(50, 350, 50):
        append(backend, "r", "t", rows(start, 50))
    snapshots = (
        await table_stub.ListSnapshots(pb.ListSnapshotsRequest(namespace="r", table="t"))
    ).snapshots
    third = snapshots[-3]
    as_of = Timestamp()
    as_of.FromMilliseconds(third.commit_time.ToMilliseconds())
    await table_stub.CreateBranch(
        pb.CreateBranchRequest(
            namespace="r", table="t", name="audit", snapshot_id=third.snapshot_id
        )
    )
    append(backend, "r", "t", rows(1000, 10))  # the session must not see it: pinned
    columns = field_mask_pb2.FieldMask(paths=["id", "note", "tags"])
    selections: list[dict[str, Any]] = [
        {},
        {"row_filter": "region = 'eu' AND amount > 20"},
        {"row_filter": "id > 100000"},  # no rows
        {"columns": columns},
        {"columns": columns, "row_filter": "note IS NULL"},
        {"snapshot_id": third.snapshot_id},
        {"as_of_time": as_of},
        {"ref": "audit"},
        {"row_limit": 77},
        {"row_limit": 77, "row_filter": "region = 'us'"},
    ]
    for selection in selections:
        expected, _ = await read_arrow(table_stub, **selection)
        for wanted in (0, 1, 3, 100):
            session = await create(table_stub, max_streams=wanted, **selection)
            count = len(session.streams)
            assert 1 <= count <= 8, (selection, wanted)
            if wanted:
                assert count <= wanted
            if "row_limit" in selection:
                assert count == 1
            got = await read_session(table_stub, session)
            assert got.equals(expected), (selection, wanted, got.num_rows, expected.num_rows)
            if "row_limit" not in selection:
                assert session.estimated_row_count == sum(
                    s.estimated_row_count for s in session.streams
                )
    # Many streams split the files by bytes: 8 files of the current snapshot, 3 streams.
    session = await create(table_stub, max_streams=3)
    assert [s.index for s in session.streams] == [0, 1, 2]
    assert all(s.estimated_total_bytes > 0 for s in session.streams)
    assert session.estimated_row_count == 360
    # A stream is re-readable: the same rows again.
    first = await read_stream(table_stub, session.name, 1)
    assert (await read_stream(table_stub, session.name, 1)).equals(first)


async def test_stream_reads_with_json_and_compression(table_stub: Any, backend: Settings) -> None:
    await make_table(table_stub)
    for start in (0, 10):
        append(backend, "r", "t", rows(start, 10))
    session = await create(table_stub, max_streams=2)
    assert len(session.streams) == 2
    ids = []
    for stream in session.streams:
        request = pb.ReadRowsRequest(
            read_session=session.name, stream=stream.index, format=rows_pb2.ROW_FORMAT_JSON
        )
        async for response in table_stub.ReadRows(request, timeout=CALL_TIMEOUT_SECONDS):
            ids += [int(row["id"]) for row in response.json_rows.rows]
            assert response.snapshot_id == session.snapshot_id
    assert sorted(ids) == list(range(20))
    compressed = pb.ReadRowsRequest(
        read_session=session.name, stream=0, arrow_compression=rows_pb2.ARROW_COMPRESSION_ZSTD
    )
    assert [r async for r in table_stub.ReadRows(compressed, timeout=CALL_TIMEOUT_SECONDS)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_bad_session_reads_are_refused_clearly(table_stub: Any, backend: Settings) -> None:
    await make_table(table_stub)
    for start in (0, 10):
        append(backend, "r", "t", rows(start, 10))
    session = await create(table_stub, max_streams=2)

    # Both a session and a selection.
    both = await failure(
        table_stub.ReadRows(pb.ReadRowsRequest(read_session=session.name, table="t"))
    )
    assert (both.code, both.field_violations[0][0]) == (grpc.StatusCode.INVALID_ARGUMENT, "table")
    limited = await failure(
        table_stub.ReadRows(pb.ReadRowsRequest(read_session=session.name, row_limit=3))
    )
    assert limited.field_violations[0][0] == "row_limit"
    lone = await failure(
        table_stub.ReadRows(pb.ReadRowsRequest(namespace="r", table="t", stream=1))
    )
    assert (lone.code, lone.field_violations[0][0]) == (grpc.StatusCode.INVALID_ARGUMENT, "stream")
    # No such stream.
    for index in (2, -1):
        bad = await failure(
            table_stub.ReadRows(pb.ReadRowsRequest(read_session=session.name, stream=index))
        )
        assert (bad.code, bad.field_violations[0][0]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "stream",
        )
    # Tampered: another table in the claims, the signature kept; garbage; a truncated name.
    payload, _, mac = session.name.partition(".")
    claims = SessionClaims.decode(b64decode(payload))
    forged = SessionClaims(**{**claims.__dict__, "table": "other"})
    for name in (f"{b64encode(forged.encode())}.{mac}", "not a session", session.name[:-3]):
        tampered = await failure(table_stub.ReadRows(pb.ReadRowsRequest(read_session=name)))
        assert (tampered.code, tampered.reason, tampered.field_violations[0][0]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_READ_SESSION",
            "read_session",
        ), name
    # Signed with the server's own key (as another replica would) but for another caller, or
    # expired.
    signer = SessionSigner(await asyncio.to_thread(server_key, backend))
    other = signer.sign(SessionClaims(**{**claims.__dict__, "principal": "someone-else"}))
    denied = await failure(table_stub.ReadRows(pb.ReadRowsRequest(read_session=other)))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    old = signer.sign(SessionClaims(**{**claims.__dict__, "expire_ms": claims.expire_ms - 10**8}))
    expired = await failure(table_stub.ReadRows(pb.ReadRowsRequest(read_session=old)))
    assert (expired.code, expired.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "READ_SESSION_EXPIRED",
    )
    # Bad creation requests.
    for request, field in [
        (pb.CreateReadSessionRequest(namespace="r", table="t", max_streams=-1), "max_streams"),
        (pb.CreateReadSessionRequest(namespace="r", table="t", row_limit=-1), "row_limit"),
        (pb.CreateReadSessionRequest(namespace="r", table="t", row_filter="id >"), "row_filter"),
        (
            pb.CreateReadSessionRequest(
                namespace="r", table="t", columns=field_mask_pb2.FieldMask(paths=["nope"])
            ),
            "columns.paths[0]",
        ),
        (pb.CreateReadSessionRequest(namespace="r", table="t", ref="audit", snapshot_id=1), "ref"),
    ]:
        refused = await failure(table_stub.CreateReadSession(request))
        assert (refused.code, refused.field_violations[0][0]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        ), request
    missing = await failure(
        table_stub.CreateReadSession(pb.CreateReadSessionRequest(namespace="r", table="nope"))
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "TABLE_NOT_FOUND")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_stream_whose_snapshot_was_expired_fails_clearly(
    table_stub: Any, backend: Settings
) -> None:
    await make_table(table_stub)
    append(backend, "r", "t", rows(0, 10))
    session = await create(table_stub)
    table = append(backend, "r", "t", rows(10, 10))
    with table.maintenance.expire_snapshots() as expire:
        expire.by_id(session.snapshot_id)
    gone = await failure(
        table_stub.ReadRows(pb.ReadRowsRequest(read_session=session.name, stream=0))
    )
    assert (gone.code, gone.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SNAPSHOT_EXPIRED")


class _ExpiringAfterCreate:
    """A TableService stub whose first CreateReadSession is followed, before any stream is
    read, by a real expiry of the session's snapshot (maintenance racing a read)."""

    def __init__(self, stub: Any, backend: Settings) -> None:
        self._stub = stub
        self._backend = backend
        self.created = 0
        self.ReadRows = stub.ReadRows

    async def CreateReadSession(self, request: Any, **kwargs: Any) -> Any:
        response = await self._stub.CreateReadSession(request, **kwargs)
        self.created += 1
        if self.created == 1:
            table = append(self._backend, "r", "t", rows(20, 5))  # a newer snapshot
            with table.maintenance.expire_snapshots() as expire:
                expire.by_id(response.session.snapshot_id)
        return response


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_the_read_helper_reads_again_when_its_sessions_snapshot_was_expired(
    table_stub: Any, backend: Settings
) -> None:
    await make_table(table_stub)
    append(backend, "r", "t", rows(0, 10))
    append(backend, "r", "t", rows(10, 10))
    racing = _ExpiringAfterCreate(table_stub, backend)
    request = pb.CreateReadSessionRequest(namespace="r", table="t", max_streams=2)
    got = await read_session_table_async([racing], request, timeout=60)
    # The first session's snapshot went; the second session read the current one, whole.
    assert racing.created == 2
    assert sorted(got.column("id").to_pylist()) == list(range(25))
