"""Reading a table as a read session: its streams in parallel, over several channels.

``CreateReadSession`` plans the read once and pins its snapshot; each stream is then one
``ReadRows(read_session, stream)`` call, and the streams together hold exactly the rows of
one ``ReadRows``. Reading them at once, over a few channels (separate HTTP/2 connections,
possibly to separate replicas), lifts the cap of one stream through Python's gRPC transport.

A stream that fails with ``UNAVAILABLE`` because its replica went away (the connection
failed, or the replica is shutting down) is read again from its start on the next channel:
its snapshot is pinned, so a re-read returns the same rows, and the rows of the broken
attempt are dropped. With no channel left, the error is raised. How many times a call is
tried, and after which wait, is ``lakehouse.client.read_attempts.AttemptPlan``'s to decide
(with the high-level clients' retry policy in it), and so is the read's shape (a session, a new
session after its snapshot expired, or one plain ``ReadRows``): the sync and async paths here
differ only in their I/O.
The result is in stream order, the order of one ``ReadRows``.

This module needs pyarrow (``pip install './gen[arrow]'``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

import grpc
import pyarrow as pa

from lakehouse.client.read_attempts import (
    AttemptPlan,
    Deadline,
    ReadShape,
    ServerFeatures,
    first_shape,
    next_shape,
)
from lakehouse.v1 import read_session_pb2, rows_pb2, table_service_pb2

if TYPE_CHECKING:
    from lakehouse.v1 import table_service_pb2_grpc

__all__ = [
    "DEFAULT_STREAMS",
    "read_rows",
    "read_rows_async",
    "read_session_request",
    "read_session_table",
    "read_session_table_async",
]

#: Streams read at once by default: a few, so the server's decode and the client's transport
#: overlap; more rarely help on one replica.
DEFAULT_STREAMS = 4

T = TypeVar("T")
S = TypeVar("S")
Metadata = tuple[tuple[str, str | bytes], ...] | None


def _stream_request(
    session: str, index: int, compression: rows_pb2.ArrowCompression.ValueType
) -> table_service_pb2.ReadRowsRequest:
    return table_service_pb2.ReadRowsRequest(
        read_session=session, stream=index, arrow_compression=compression
    )


def _schema(session: read_session_pb2.ReadSession) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))


class _StreamCalls:
    """The ``ReadRows`` calls of one session's streams, read in threads.

    The first stream to fail for good cancels the others' calls at once: they would otherwise
    be read to their end, or to the deadline, before the read could raise.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[grpc.Call] = []
        self._stopped = threading.Event()

    def started(self, call: grpc.Call) -> grpc.Call:
        """Keeps ``call`` to cancel it with the others; cancels it now if they already are."""
        with self._lock:
            self._calls.append(call)
            if self._stopped.is_set():
                call.cancel()
        return call

    def cancel(self) -> None:
        """Cancels every call, and any a stream starts after (its retry ends at once)."""
        with self._lock:
            self._stopped.set()
            for call in self._calls:
                call.cancel()

    def sleep(self, seconds: float) -> None:
        """A stream's wait before its next try, cut short when the streams are cancelled."""
        self._stopped.wait(seconds)


def _failover(
    stubs: Sequence[S],
    first: int,
    call: Callable[[S], T],
    plan: AttemptPlan,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``call`` on ``stubs[first]``, then as ``plan`` says while it fails."""
    for attempt in itertools.count(1):
        try:
            return call(stubs[plan.channel(first, attempt)])
        except grpc.RpcError as e:
            delay = plan.wait(e, attempt)
        sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - itertools.count never ends


async def _failover_async(
    stubs: Sequence[S], first: int, call: Callable[[S], Awaitable[T]], plan: AttemptPlan
) -> T:
    """``_failover`` for grpc.aio stubs."""
    for attempt in itertools.count(1):
        try:
            return await call(stubs[plan.channel(first, attempt)])
        except grpc.RpcError as e:
            delay = plan.wait(e, attempt)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - itertools.count never ends


def read_session_request(
    request: table_service_pb2.ReadRowsRequest, max_streams: int
) -> table_service_pb2.CreateReadSessionRequest:
    """The ``CreateReadSessionRequest`` of a ``ReadRowsRequest``'s selection."""
    session = table_service_pb2.CreateReadSessionRequest(
        namespace=request.namespace,
        table=request.table,
        row_filter=request.row_filter,
        row_limit=request.row_limit,
        ref=request.ref,
        max_streams=max_streams,
    )
    if request.HasField("columns"):
        session.columns.CopyFrom(request.columns)
    if request.HasField("snapshot_id"):
        session.snapshot_id = request.snapshot_id
    if request.HasField("as_of_time"):
        session.as_of_time.CopyFrom(request.as_of_time)
    return session


def read_rows(
    stubs: Sequence[table_service_pb2_grpc.TableServiceStub],
    request: table_service_pb2.ReadRowsRequest,
    max_streams: int,
    plan: AttemptPlan,
    metadata: Metadata,
    server: ServerFeatures,
) -> pa.Table:
    """The rows of ``request``: a read session over ``max_streams`` streams, or one ReadRows.

    Its shape (``first_shape``, ``next_shape``) and each call's tries and deadline (``plan``)
    are decided in ``lakehouse.client.read_attempts``; a server without read sessions is read
    with one plain ``ReadRows``, and ``server`` remembers it a while (``ServerFeatures``).
    """
    session = read_session_request(request, max_streams)
    shape = first_shape(request.row_limit, max_streams, server)
    while True:
        try:
            if shape is ReadShape.PLAIN:
                return _read_plain(stubs, request, plan, metadata)
            return _read_session(stubs, session, plan, request.arrow_compression, metadata)
        except grpc.RpcError as e:
            shape = next_shape(e, shape, server, can_read_plain=True)


async def read_rows_async(
    stubs: Sequence[table_service_pb2_grpc.TableServiceAsyncStub],
    request: table_service_pb2.ReadRowsRequest,
    max_streams: int,
    plan: AttemptPlan,
    metadata: Metadata,
    server: ServerFeatures,
) -> pa.Table:
    """``read_rows`` over grpc.aio channels."""
    session = read_session_request(request, max_streams)
    shape = first_shape(request.row_limit, max_streams, server)
    while True:
        try:
            if shape is ReadShape.PLAIN:
                return await _read_plain_async(stubs, request, plan, metadata)
            compression = request.arrow_compression
            return await _read_session_async(stubs, session, plan, compression, metadata)
        except grpc.RpcError as e:
            shape = next_shape(e, shape, server, can_read_plain=True)


def read_session_table(
    stubs: Sequence[table_service_pb2_grpc.TableServiceStub],
    request: table_service_pb2.CreateReadSessionRequest,
    *,
    compression: rows_pb2.ArrowCompression.ValueType = rows_pb2.ARROW_COMPRESSION_UNSPECIFIED,
    timeout: float | None = None,
    metadata: Metadata = None,
) -> pa.Table:
    """Creates a read session and reads its streams at once, one thread per stream.

    A session whose snapshot maintenance expired meanwhile (``SNAPSHOT_EXPIRED``: on a table
    under ingest the default policy keeps only its newest snapshots) is read once more as a
    new session, of the table's current snapshot: the rows still all come from one snapshot.

    Args:
        stubs: ``TableServiceStub`` s on sync channels; stream ``i`` is read on
            ``stubs[i % len(stubs)]``, and again on the next one if it fails with
            ``UNAVAILABLE``.
        request: The session's selection and ``max_streams``.
        compression: Arrow buffer compression of the streams.
        timeout: The deadline of the whole read, in seconds: each call gets the time left.
        metadata: gRPC metadata sent with each call.

    Returns:
        The rows of the streams in stream order, with the session's schema.

    Raises:
        grpc.RpcError: A call failed on every channel tried, or with another code;
            ``DEADLINE_EXCEEDED`` when the read did not finish within ``timeout``.
        ReadRowsStreamError: A stream breaks the wire format.
    """
    plan = _session_plan(stubs, timeout, "read_session_table")
    shape = ReadShape.SESSION
    while True:
        try:
            return _read_session(stubs, request, plan, compression, metadata)
        except grpc.RpcError as e:
            shape = next_shape(e, shape, ServerFeatures(), can_read_plain=False)


async def read_session_table_async(
    stubs: Sequence[table_service_pb2_grpc.TableServiceAsyncStub],
    request: table_service_pb2.CreateReadSessionRequest,
    *,
    compression: rows_pb2.ArrowCompression.ValueType = rows_pb2.ARROW_COMPRESSION_UNSPECIFIED,
    timeout: float | None = None,
    metadata: Metadata = None,
) -> pa.Table:
    """``read_session_table`` over grpc.aio channels: the streams are read concurrently.

    Raises:
        grpc.aio.AioRpcError: A call failed on every channel tried, or with another code;
            ``DEADLINE_EXCEEDED`` when the read did not finish within ``timeout``.
        ReadRowsStreamError: A stream breaks the wire format.
    """
    plan = _session_plan(stubs, timeout, "read_session_table_async")
    shape = ReadShape.SESSION
    while True:
        try:
            return await _read_session_async(stubs, request, plan, compression, metadata)
        except grpc.RpcError as e:
            shape = next_shape(e, shape, ServerFeatures(), can_read_plain=False)


def _session_plan(stubs: Sequence[object], timeout: float | None, caller: str) -> AttemptPlan:
    """The failover-only plan of the public session helpers, once their stubs are checked."""
    if not stubs:
        raise ValueError(f"{caller} needs at least one stub")
    return AttemptPlan(len(stubs), deadline=Deadline.after(timeout))


def _read_plain(
    stubs: Sequence[table_service_pb2_grpc.TableServiceStub],
    request: table_service_pb2.ReadRowsRequest,
    plan: AttemptPlan,
    metadata: Metadata,
    first: int = 0,
    calls: _StreamCalls | None = None,
) -> pa.Table:
    """One ``ReadRows``, a plain one or a session's stream, from ``stubs[first]`` on.

    Its tries are as ``plan`` says; a session's stream keeps its calls in ``calls``.
    """
    from lakehouse.client.arrow import read_rows_to_arrow

    def read(stub: table_service_pb2_grpc.TableServiceStub) -> pa.Table:
        timeout = plan.deadline.remaining()
        call = stub.ReadRows(request, timeout=timeout, metadata=metadata)
        if calls is not None:
            calls.started(call)
        return read_rows_to_arrow(call)

    if calls is None:
        return _failover(stubs, first, read, plan)
    return _failover(stubs, first, read, plan, calls.sleep)


async def _read_plain_async(
    stubs: Sequence[table_service_pb2_grpc.TableServiceAsyncStub],
    request: table_service_pb2.ReadRowsRequest,
    plan: AttemptPlan,
    metadata: Metadata,
    first: int = 0,
) -> pa.Table:
    from lakehouse.client.arrow import read_rows_to_arrow_async

    async def read(stub: table_service_pb2_grpc.TableServiceAsyncStub) -> pa.Table:
        timeout = plan.deadline.remaining()
        call = stub.ReadRows(request, timeout=timeout, metadata=metadata)
        return await read_rows_to_arrow_async(call)

    return await _failover_async(stubs, first, read, plan)


def _read_session(
    stubs: Sequence[table_service_pb2_grpc.TableServiceStub],
    request: table_service_pb2.CreateReadSessionRequest,
    plan: AttemptPlan,
    compression: rows_pb2.ArrowCompression.ValueType,
    metadata: Metadata,
) -> pa.Table:
    """One read session: created, then its streams read at once, one thread each.

    The first stream to fail for good cancels the others' calls, and its error is raised.
    """

    def create(stub: table_service_pb2_grpc.TableServiceStub) -> read_session_pb2.ReadSession:
        timeout = plan.deadline.remaining()
        return stub.CreateReadSession(request, timeout=timeout, metadata=metadata).session

    session = _failover(stubs, 0, create, plan)

    calls = _StreamCalls()

    def read(index: int) -> pa.Table:
        stream = _stream_request(session.name, index, compression)
        return _read_plain(stubs, stream, plan, metadata, first=index, calls=calls)

    parts = _all_or_first_error(read, len(session.streams), calls)
    return pa.concat_tables([_schema(session).empty_table(), *parts])


def _all_or_first_error(
    read: Callable[[int], pa.Table], count: int, calls: _StreamCalls
) -> list[pa.Table]:
    """``read(0)`` .. ``read(count - 1)``, in threads; the first to raise cancels the others.

    Raises:
        Exception: The error of the first stream that failed (not a sibling's ``CANCELLED``).
    """
    if count == 1:
        return [read(0)]
    with ThreadPoolExecutor(count, thread_name_prefix="lakehouse-read") as pool:
        futures = [pool.submit(read, index) for index in range(count)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            calls.cancel()
            failed[0].result()  # raises it, once the pool's threads are done
    return [future.result() for future in futures]


async def _read_session_async(
    stubs: Sequence[table_service_pb2_grpc.TableServiceAsyncStub],
    request: table_service_pb2.CreateReadSessionRequest,
    plan: AttemptPlan,
    compression: rows_pb2.ArrowCompression.ValueType,
    metadata: Metadata,
) -> pa.Table:
    """``_read_session`` over grpc.aio channels: the streams are read concurrently."""

    async def create(
        stub: table_service_pb2_grpc.TableServiceAsyncStub,
    ) -> read_session_pb2.ReadSession:
        timeout = plan.deadline.remaining()
        response = await stub.CreateReadSession(request, timeout=timeout, metadata=metadata)
        return response.session

    session = await _failover_async(stubs, 0, create, plan)

    async def read(index: int) -> pa.Table:
        stream = _stream_request(session.name, index, compression)
        return await _read_plain_async(stubs, stream, plan, metadata, first=index)

    tasks = [asyncio.ensure_future(read(i)) for i in range(len(session.streams))]
    try:
        parts = await asyncio.gather(*tasks)
    finally:  # one stream failed: stop the others' calls
        for task in tasks:
            task.cancel()
    return pa.concat_tables([_schema(session).empty_table(), *parts])
