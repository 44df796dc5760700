"""The read path of the clients against in-process servers on 127.0.0.1 that misbehave.

Each server here is a real gRPC server serving ``lakehouse.v1.TableService`` through a generic
handler, so a test counts what the server receives: the calls of a read that fails every
time (the retry bound), what is left of the read's deadline at each call, and a server of an
older release that serves ``ReadRows`` but no read sessions.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lakehouse.client import AsyncLakehouse, Lakehouse
from lakehouse.client.arrow import read_table, read_table_async
from lakehouse.client.errors import LakehouseError
from lakehouse.client.parallel_reads import read_rows
from lakehouse.client.read_attempts import AttemptPlan, Deadline, ServerFeatures
from lakehouse.client.retry import RetryPolicy
from lakehouse.v1 import read_session_pb2, rows_pb2, table_service_pb2, table_service_pb2_grpc

SERVICE = "lakehouse.v1.TableService"
#: Short waits: the tests count attempts, they do not time them.
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)


class Recorder:
    """What the server received: each call's method and its time left (None: no deadline)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, float | None]] = []

    def record(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append((method, context.time_remaining()))

    def methods(self) -> list[str]:
        with self._lock:
            return [method for method, _ in self.calls]


def unavailable(reason: str | None, retry_delay: float = 0.01) -> grpc.Status:
    """UNAVAILABLE without details (a replica gone), or with ErrorInfo and RetryInfo."""
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="down")
    if reason is not None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain="lakehouse.v1")
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_delay * 1e9))
        retry = error_details_pb2.RetryInfo(retry_delay=delay)
        status.details.add().Pack(info)
        status.details.add().Pack(retry)
    return rpc_status.to_status(status)


def failing_handler(
    recorder: Recorder, status: grpc.Status, hold: float = 0.0
) -> grpc.GenericRpcHandler:
    """A TableService whose CreateReadSession and ReadRows fail with ``status``, each after
    holding the call ``hold`` seconds (a replica stalling, then dropping the call)."""

    def create(request: Any, context: grpc.ServicerContext) -> Any:
        recorder.record("CreateReadSession", context)
        time.sleep(hold)
        context.abort_with_status(status)

    def read(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        recorder.record("ReadRows", context)
        time.sleep(hold)
        context.abort_with_status(status)

    return table_service(CreateReadSession=create, ReadRows=read)


def table_service(**methods: Callable[..., Any]) -> grpc.GenericRpcHandler:
    """A generic handler serving ``methods`` of lakehouse.v1.TableService (and no other)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    if "CreateReadSession" in methods:
        handlers["CreateReadSession"] = grpc.unary_unary_rpc_method_handler(
            methods["CreateReadSession"],
            request_deserializer=table_service_pb2.CreateReadSessionRequest.FromString,
            response_serializer=table_service_pb2.CreateReadSessionResponse.SerializeToString,
        )
    if "ReadRows" in methods:
        handlers["ReadRows"] = grpc.unary_stream_rpc_method_handler(
            methods["ReadRows"],
            request_deserializer=table_service_pb2.ReadRowsRequest.FromString,
            response_serializer=table_service_pb2.ReadRowsResponse.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Starts in-process servers on 127.0.0.1 with the given handler (and interceptors);
    stops them after."""
    servers: list[grpc.Server] = []

    def start(handler: grpc.GenericRpcHandler, *interceptors: grpc.ServerInterceptor) -> str:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), interceptors=list(interceptors)
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None).wait()


# --- 1. one place bounds a read's retries ----------------------------------------------------


@pytest.mark.parametrize("reason", [None, "OBJECT_STORE_UNAVAILABLE"])
def test_a_failing_read_reaches_the_server_at_most_max_attempts_times(
    serve: Callable[..., str], reason: str | None
) -> None:
    # Four read streams over 2 + 2 channels: failover has four channels to try. A replica
    # that is gone (no ErrorInfo) fails over, a backing service's outage waits its RetryInfo;
    # either way the session's creation is tried FAST.max_attempts times in all.
    recorder = Recorder()
    target = serve(failing_handler(recorder, unavailable(reason)))
    retries: list[int] = []
    with (
        Lakehouse(
            target,
            channels=2,
            read_streams=4,
            retry=FAST,
            on_retry=lambda e, attempt, d: retries.append(attempt),
            timeout=30,
        ) as lh,
        pytest.raises(LakehouseError) as failed,
    ):
        lh.read("s.t")
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert recorder.methods() == ["CreateReadSession"] * FAST.max_attempts
    assert retries == [1, 2]


async def test_a_failing_async_read_reaches_the_server_at_most_max_attempts_times(
    serve: Callable[..., str],
) -> None:
    recorder = Recorder()
    target = serve(failing_handler(recorder, unavailable(None)))
    async with AsyncLakehouse(target, channels=2, read_streams=4, retry=FAST, timeout=30) as lh:
        with pytest.raises(LakehouseError) as failed:
            await lh.read("s.t")
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert recorder.methods() == ["CreateReadSession"] * FAST.max_attempts


def failing_streams_handler(recorder: Recorder, streams: int, status: grpc.Status) -> Any:
    """A session of ``streams`` streams whose every ``ReadRows`` fails with ``status``."""

    def create(request: Any, context: grpc.ServicerContext) -> Any:
        recorder.record("CreateReadSession", context)
        session = read_session_pb2.ReadSession(
            name="s1",
            arrow_schema=rows_pb2.ArrowSchema(
                serialized_schema=ROWS.schema.serialize().to_pybytes()
            ),
            streams=[read_session_pb2.ReadStream(index=i) for i in range(streams)],
        )
        return table_service_pb2.CreateReadSessionResponse(session=session)

    def read(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        recorder.record(f"ReadRows {request.stream}", context)
        context.abort_with_status(status)

    return table_service(CreateReadSession=create, ReadRows=read)


@pytest.mark.parametrize("reason", [None, "OBJECT_STORE_UNAVAILABLE"])
def test_a_read_whose_streams_fail_every_time_stays_within_the_documented_bound(
    serve: Callable[..., str], reason: str | None
) -> None:
    # The session is created; then every stream's ReadRows fails, a replica gone (failover)
    # or a backing service down (RetryInfo). Lakehouse.read documents at most
    # (1 + streams) x max_attempts calls: each stream is tried max_attempts times at most.
    streams, recorder = 4, Recorder()
    target = serve(failing_streams_handler(recorder, streams, unavailable(reason)))
    with (
        Lakehouse(target, channels=2, read_streams=streams, retry=FAST, timeout=30) as lh,
        pytest.raises(LakehouseError) as failed,
    ):
        lh.read("s.t")
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    methods = recorder.methods()
    assert len(methods) <= (1 + streams) * FAST.max_attempts
    assert methods.count("CreateReadSession") == 1
    per_stream = [methods.count(f"ReadRows {i}") for i in range(streams)]
    assert max(per_stream) == FAST.max_attempts  # the stream that failed for good
    assert all(count <= FAST.max_attempts for count in per_stream)


def test_the_arrow_helper_tries_each_channel_once_without_a_policy(
    serve: Callable[..., str],
) -> None:
    # read_table has no retry policy: failover only, every channel once (a single one twice).
    recorder = Recorder()
    target = serve(failing_handler(recorder, unavailable(None)))
    channels = [grpc.insecure_channel(target) for _ in range(3)]
    try:
        stubs = [table_service_pb2_grpc.TableServiceStub(c) for c in channels]
        with pytest.raises(grpc.RpcError) as failed:
            read_table(stubs, "s", "t", timeout=30)
        with pytest.raises(grpc.RpcError):
            read_table(stubs[:1], "s", "t", timeout=30)
    finally:
        for channel in channels:
            channel.close()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert recorder.methods() == ["CreateReadSession"] * (3 + 2)


# --- 2. timeout is the deadline of the whole read ---------------------------------------------


def time_left(recorder: Recorder) -> list[float]:
    left = [remaining for _, remaining in recorder.calls]
    assert all(r is not None for r in left), "a call came without a deadline"
    return [r for r in left if r is not None]


def test_a_reads_timeout_bounds_all_its_calls_and_waits(
    serve: Callable[..., str],
) -> None:
    # Every call is held 0.2 s, then dropped as by a replica going away. With a timeout per
    # call, 8 attempts of 0.2 s each would take 1.6 s and end UNAVAILABLE; as the deadline of
    # the read, each call gets what is left and the read ends DEADLINE_EXCEEDED.
    hold, timeout = 0.2, 1.0
    recorder = Recorder()
    target = serve(failing_handler(recorder, unavailable(None), hold))
    policy = RetryPolicy(max_attempts=8, initial_backoff=0.01, max_backoff=0.02)
    with (
        Lakehouse(target, channels=1, read_streams=2, retry=policy, timeout=timeout) as lh,
        pytest.raises(LakehouseError) as failed,
    ):
        lh.read("s.t")
    assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    left = time_left(recorder)
    assert 1 < len(left) < policy.max_attempts
    # each call was given what the previous ones left: at least the hold less each time
    assert all(later <= earlier - hold / 2 for earlier, later in itertools.pairwise(left))


def test_a_retry_wait_beyond_the_deadline_raises_the_servers_error_at_once(
    serve: Callable[..., str],
) -> None:
    # The backing service is down and the server says to come back in 3 s; the read has 1 s.
    # Waiting what is left and failing DEADLINE_EXCEEDED would hide why; the client raises the
    # server's error at once, and announces no retry that will not happen.
    recorder = Recorder()
    target = serve(failing_handler(recorder, unavailable("OBJECT_STORE_UNAVAILABLE", 3.0)))
    retries: list[float] = []
    with (
        Lakehouse(
            target,
            read_streams=2,
            retry=RetryPolicy(max_attempts=3),
            on_retry=lambda e, attempt, delay: retries.append(delay),
            timeout=1,
        ) as lh,
        pytest.raises(LakehouseError) as failed,
    ):
        lh.read("s.t")
    assert (failed.value.code, failed.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "OBJECT_STORE_UNAVAILABLE",
    )
    assert failed.value.retry_delay == 3.0
    assert retries == []
    assert recorder.methods() == ["CreateReadSession"]


async def test_the_async_helpers_timeout_is_the_whole_reads(
    serve: Callable[..., str],
) -> None:
    # read_table_async fails over to each of three channels; each call is held 0.4 s. The
    # third call gets the 0.2 s left of the read's second (none when the machine is slow, and
    # the read does not make it), and the read ends DEADLINE_EXCEEDED; with a timeout per
    # call it ended UNAVAILABLE after 1.2 s.
    hold, timeout = 0.4, 1.0
    recorder = Recorder()
    target = serve(failing_handler(recorder, unavailable(None), hold))
    channels = [grpc.aio.insecure_channel(target) for _ in range(3)]
    try:
        stubs = [table_service_pb2_grpc.TableServiceStub(c) for c in channels]
        with pytest.raises(grpc.RpcError) as failed:
            await read_table_async(stubs, "s", "t", timeout=timeout)
    finally:
        for channel in channels:
            await channel.close()
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    left = time_left(recorder)
    assert len(left) in (2, 3)
    assert all(later <= earlier - hold / 2 for earlier, later in itertools.pairwise(left))


# --- 3. a stream that fails stops its siblings -------------------------------------------------


def two_stream_handler(slow_stream_ended: list[str], recorded: threading.Event) -> Any:
    """A session of two streams: stream 0 sends its schema then stalls until its call ends
    (recording whether the client cancelled it), stream 1 fails with INVALID_ARGUMENT as
    soon as stream 0 is being served (earlier, the client could cancel stream 0's call before
    its handler ran, and there would be nothing to record)."""
    schema = rows_pb2.ArrowSchema(serialized_schema=ROWS.schema.serialize().to_pybytes())
    slow_stream_served = threading.Event()

    def create(request: Any, context: grpc.ServicerContext) -> Any:
        streams = [read_session_pb2.ReadStream(index=i) for i in range(2)]
        session = read_session_pb2.ReadSession(name="s1", arrow_schema=schema, streams=streams)
        return table_service_pb2.CreateReadSessionResponse(session=session)

    def read(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if request.stream == 1:
            slow_stream_served.wait(30)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stream 1 is bad")
        finished = threading.Event()

        def ended() -> None:
            # on the call's end, whatever ends it: a cancelled call's generator is dropped
            # at its yield, so nothing after the yield may run
            slow_stream_ended.append("read to its end" if finished.is_set() else "cancelled")
            recorded.set()

        if not context.add_callback(ended):
            ended()  # the call has already ended
        slow_stream_served.set()
        yield table_service_pb2.ReadRowsResponse(arrow_schema=schema)
        # bounded: without a cancel, the stream ends by itself (and the test fails)
        recorded.wait(20)
        finished.set()

    return table_service(CreateReadSession=create, ReadRows=read)


def test_a_failing_stream_cancels_the_other_streams_calls(serve: Callable[..., str]) -> None:
    # One stream fails for good while another is still being read: the read raises that
    # error at once, and cancels the other stream's call instead of reading it to its end.
    slow_stream_ended: list[str] = []
    recorded = threading.Event()
    target = serve(two_stream_handler(slow_stream_ended, recorded))
    with (
        Lakehouse(target, read_streams=2, retry=FAST, timeout=60) as lh,
        pytest.raises(LakehouseError) as failed,
    ):
        lh.read("s.t")
    assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert recorded.wait(30), "the slow stream's call never ended"
    assert slow_stream_ended == ["cancelled"]


# --- 4. a server without read sessions ---------------------------------------------------------

ROWS = pa.table({"id": pa.array(range(100), pa.int64()), "name": [f"n{i}" for i in range(100)]})


class CountCalls(grpc.ServerInterceptor):
    """Counts every call the server receives, the methods it does not serve included."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.methods.append(details.method.rsplit("/", 1)[-1])
        return continuation(details)


def read_rows_only_handler() -> grpc.GenericRpcHandler:
    """A TableService of a release before read sessions: ReadRows, no CreateReadSession."""

    def read(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        schema = rows_pb2.ArrowSchema(serialized_schema=ROWS.schema.serialize().to_pybytes())
        yield table_service_pb2.ReadRowsResponse(arrow_schema=schema)
        for batch in ROWS.to_batches(max_chunksize=30):
            serialized = batch.serialize().to_pybytes()
            yield table_service_pb2.ReadRowsResponse(
                arrow_record_batch=rows_pb2.ArrowRecordBatch(
                    serialized_record_batch=serialized, row_count=batch.num_rows
                )
            )

    return table_service(ReadRows=read)


@pytest.fixture
def old_server(serve: Callable[..., str]) -> tuple[CountCalls, str]:
    counter = CountCalls()
    return counter, serve(read_rows_only_handler(), counter)


def test_the_client_reads_a_server_without_read_sessions_with_read_rows(
    old_server: tuple[CountCalls, str],
) -> None:
    counter, target = old_server
    with Lakehouse(target, read_streams=4, timeout=30) as lh:
        assert lh.read("s.t").equals(ROWS)
        assert lh.read("s.t", columns=["id"]).equals(ROWS)  # the fake ignores columns
    # asked once; the client remembers the server has no read sessions
    assert counter.methods == ["CreateReadSession", "ReadRows", "ReadRows"]


async def test_the_async_client_and_helper_fall_back_to_read_rows(
    old_server: tuple[CountCalls, str],
) -> None:
    counter, target = old_server
    async with AsyncLakehouse(target, read_streams=4, timeout=30) as lh:
        assert (await lh.read("s.t")).equals(ROWS)
        assert (await lh.read("s.t")).equals(ROWS)
    assert counter.methods == ["CreateReadSession", "ReadRows", "ReadRows"]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        assert (await read_table_async(stub, "s", "t", timeout=30)).equals(ROWS)
    assert counter.methods[3:] == ["CreateReadSession", "ReadRows"]


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_client_asks_for_read_sessions_again_after_a_while(
    old_server: tuple[CountCalls, str],
) -> None:
    # During a rolling upgrade one old replica's UNIMPLEMENTED must not turn read sessions
    # off for the client's lifetime: it holds recheck_seconds, then the client asks again.
    counter, target = old_server
    clock = Clock()
    server = ServerFeatures(recheck_seconds=300, clock=clock)
    request = table_service_pb2.ReadRowsRequest(namespace="s", table="t")
    with grpc.insecure_channel(target) as channel:
        stubs = [table_service_pb2_grpc.TableServiceStub(channel)]

        def read() -> pa.Table:
            plan = AttemptPlan(1, policy=FAST, deadline=Deadline.after(30))
            return read_rows(stubs, request, 4, plan, None, server)

        assert read().equals(ROWS)
        clock.now = 299
        assert read().equals(ROWS)
        assert counter.methods == ["CreateReadSession", "ReadRows", "ReadRows"]
        clock.now = 300
        assert read().equals(ROWS)
        assert counter.methods[3:] == ["CreateReadSession", "ReadRows"]
        assert read().equals(ROWS)  # and remembered again
        assert counter.methods[5:] == ["ReadRows"]


def test_the_sync_helper_falls_back_to_read_rows(old_server: tuple[CountCalls, str]) -> None:
    counter, target = old_server
    with grpc.insecure_channel(target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        assert read_table(stub, "s", "t", timeout=30).equals(ROWS)
    assert counter.methods == ["CreateReadSession", "ReadRows"]
