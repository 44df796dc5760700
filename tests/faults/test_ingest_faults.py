"""IngestService under faults, against real ``lakehouse serve`` processes.

- SIGKILL mid-stream: every acknowledged row is durable, nothing is half-visible, and a resent
  stream ends with each row exactly once (SQLite and PostgreSQL + S3 backends).
- The object store or the catalog goes down mid-ingest (a TCP proxy in front of moto or of
  PostgreSQL is switched off): writes fail with UNAVAILABLE and nothing is acknowledged, health
  and /readyz report it, and after recovery resending the failed requests writes them exactly
  once.
- Two replicas on one PostgreSQL catalog and one S3 bucket receive the same writer's stream
  and the same WriteRows requests: every row lands once.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pyarrow as pa
import pytest
import sqlalchemy
from grpc_health.v1 import health_pb2

from fixtures.faults import create_id_kind_table, run_threads
from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from fixtures.net import LOOPBACK
from fixtures.serve_process import ServeProcess, serve_process, settings_env
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.adapters.iceberg.ingest import WRITERS_KEY
from lakehouse.client.arrow import append_rows_requests, write_rows_request
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc

pytestmark = pytest.mark.faults

NAMESPACE, TABLE = "faults", "events"
REQUESTS, ROWS_PER_REQUEST = 200, 500
KILL_AFTER_ACKS = 30
HEALTH_INTERVAL = 0.5
CALL_TIMEOUT = 30.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- helpers --------------------------------------------------------------------------------


def server_env(settings: Any, commit_delay_ms: int = 20) -> dict[str, str]:
    return {
        **settings_env(settings),
        "LAKEHOUSE_INGEST__COMMIT_DELAY_MS": str(commit_delay_ms),
        "LAKEHOUSE_HEALTH_CHECK_INTERVAL_SECONDS": str(HEALTH_INTERVAL),
        "LAKEHOUSE_HEALTH_CHECK_TIMEOUT_SECONDS": "2",
        "LAKEHOUSE_S3__CONNECT_TIMEOUT_SECONDS": "2",
    }


def rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + count), pa.int64()),
            "kind": pa.array([f"k{i % 7}" for i in range(start, start + count)], pa.string()),
        }
    )


def stream_requests(writer_id: str, count: int = REQUESTS) -> list[ipb.AppendRowsRequest]:
    """``count`` requests of ROWS_PER_REQUEST rows; request i holds ids [i*R, (i+1)*R)."""
    data = pa.Table.from_batches(
        [rows(i * ROWS_PER_REQUEST, ROWS_PER_REQUEST).to_batches()[0] for i in range(count)]
    )
    requests = list(
        append_rows_requests(NAMESPACE, TABLE, data, writer_id=writer_id, max_batch_bytes=1 << 24)
    )
    assert [r.offset for r in requests] == [i * ROWS_PER_REQUEST for i in range(count)]
    return requests


def table_ids(settings: Any) -> list[int]:
    """Every id in the table, read by pyiceberg directly (not through the server)."""
    table = direct_catalog(settings).load_table((NAMESPACE, TABLE))
    return sorted(table.scan(selected_fields=("id",)).to_arrow().column("id").to_pylist())


def table_writer_offset(settings: Any, writer_id: str) -> int:
    """The writer's next offset as the table's current snapshot summary records it."""
    table = direct_catalog(settings).load_table((NAMESPACE, TABLE))
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    raw = snapshot.summary.additional_properties.get(WRITERS_KEY)
    return int(json.loads(raw)[writer_id][0]) if raw else 0


def get_writer(server: ServeProcess, writer_id: str) -> int:
    with grpc.insecure_channel(server.target) as ch:
        reply = ingest_service_pb2_grpc.IngestServiceStub(ch).GetWriter(
            ipb.GetWriterRequest(namespace=NAMESPACE, table=TABLE, writer_id=writer_id),
            timeout=CALL_TIMEOUT,
        )
    return int(reply.writer.next_offset)


def readyz(server: ServeProcess) -> int:
    try:
        with urllib.request.urlopen(f"{server.http_url}/readyz", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def wait_readyz(server: ServeProcess, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = readyz(server)
        if last == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"/readyz is {last}, not {status}, after {timeout:g}s")


def assert_exactly(ids: list[int], expected: set[int]) -> None:
    duplicates = len(ids) - len(set(ids))
    assert duplicates == 0, f"{duplicates} duplicated rows"
    missing, extra = expected - set(ids), set(ids) - expected
    assert not missing and not extra, (
        f"{len(missing)} missing (first {sorted(missing)[:5]}), "
        f"{len(extra)} unexpected (first {sorted(extra)[:5]})"
    )


class Stream:
    """A bidi AppendRows call fed from a queue, so the test decides when each request goes."""

    _END = object()

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        self._call = stub.AppendRows(self._feed(), timeout=120)
        self._responses = iter(self._call)

    def _feed(self) -> Iterator[ipb.AppendRowsRequest]:
        while True:
            item = self._requests.get()
            if item is self._END:
                return
            yield item

    def send(self, request: ipb.AppendRowsRequest) -> ipb.AppendRowsResponse:
        """Sends one request and returns its acknowledgement (the call has a deadline)."""
        self._requests.put(request)
        return next(self._responses)

    def close(self) -> list[ipb.AppendRowsResponse]:
        self._requests.put(self._END)
        return list(self._responses)

    def cancel(self) -> None:
        self._requests.put(self._END)
        self._call.cancel()


# -- 1. SIGKILL mid-stream ------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend", ["local", "postgres_s3"], indirect=True)
def test_sigkill_mid_stream_keeps_every_ack_and_a_resend_is_exact(
    backend: Any, tmp_path: Path
) -> None:
    requests = stream_requests("crash")
    with serve_process(tmp_path / "server", server_env(backend, commit_delay_ms=10)) as server:
        create_id_kind_table(server.target, NAMESPACE, TABLE, CALL_TIMEOUT)

        def paced() -> Iterator[ipb.AppendRowsRequest]:
            for request in requests:
                time.sleep(0.005)  # keep requests in flight when the kill lands
                yield request

        acked: list[ipb.AppendRowsResponse] = []
        killed_at: int | None = None
        with grpc.insecure_channel(server.target) as ch:
            call = ingest_service_pb2_grpc.IngestServiceStub(ch).AppendRows(paced(), timeout=60)
            with pytest.raises(grpc.RpcError) as exc:
                for ack in call:
                    assert ack.WhichOneof("response") == "result", ack
                    acked.append(ack)
                    if len(acked) == KILL_AFTER_ACKS:
                        server.kill()  # SIGKILL, then reap
                        killed_at = len(acked)
        assert killed_at == KILL_AFTER_ACKS
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
        assert len(acked) < REQUESTS, "the stream ended before the kill: nothing was in flight"
        assert [a.offset for a in acked] == [r.offset for r in requests[: len(acked)]]
        acked_end = acked[-1].offset + ROWS_PER_REQUEST

        # What the table holds after the crash, read directly
        ids = table_ids(backend)
        next_offset = table_writer_offset(backend, "crash")
        assert next_offset % ROWS_PER_REQUEST == 0, f"a request is half committed: {next_offset}"
        assert next_offset >= acked_end, "an acknowledged request is not in the writer state"
        # exactly the whole requests the writer state counts: every ack, no half request
        assert_exactly(ids, set(range(next_offset)))

        # Restart on the same catalog and warehouse; the table tells where the writer stopped
        server.start()
        assert get_writer(server, "crash") == next_offset

        with grpc.insecure_channel(server.target) as ch:
            again = list(
                ingest_service_pb2_grpc.IngestServiceStub(ch).AppendRows(iter(requests), timeout=90)
            )
        assert [a.WhichOneof("response") for a in again] == ["result"] * REQUESTS, [
            a.error for a in again if a.HasField("error")
        ][:3]
        already = [a.result.already_written for a in again]
        assert already == [r.offset < next_offset for r in requests]
        assert get_writer(server, "crash") == REQUESTS * ROWS_PER_REQUEST
    assert_exactly(table_ids(backend), set(range(REQUESTS * ROWS_PER_REQUEST)))


# -- 2. The object store or the catalog goes down mid-ingest ----------------------------------


def _outage_target(outage: str, settings: Any) -> tuple[str, int]:
    if outage == "object_store":
        endpoint = urlparse(settings.s3.endpoint_url)
        assert endpoint.hostname and endpoint.port
        return endpoint.hostname, endpoint.port
    url = sqlalchemy.engine.make_url(settings.catalog_uri)
    assert url.host and url.port
    return url.host, url.port


def _through_proxy(outage: str, settings: Any, port: int) -> dict[str, str]:
    """The server's environment with the failing service reached through the proxy."""
    env = server_env(settings)
    if outage == "object_store":
        env["LAKEHOUSE_S3__ENDPOINT_URL"] = f"http://{LOOPBACK}:{port}"
    else:
        url = sqlalchemy.engine.make_url(settings.catalog_uri).set(host=LOOPBACK, port=port)
        env["LAKEHOUSE_CATALOG__URI"] = url.render_as_string(hide_password=False)
    return env


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "outage",
    [
        "object_store",
        "catalog",
    ],
)
def test_backing_service_down_fails_unavailable_and_a_resend_is_exact(
    outage: str, postgres_s3_settings: Any, tmp_path: Path
) -> None:
    with tcp_proxy(*_outage_target(outage, postgres_s3_settings)) as proxy:
        env = _through_proxy(outage, postgres_s3_settings, proxy.port)
        with serve_process(tmp_path / "server", env) as server:
            create_id_kind_table(server.target, NAMESPACE, TABLE, CALL_TIMEOUT)
            with grpc.insecure_channel(server.target) as ch:
                ingest = ingest_service_pb2_grpc.IngestServiceStub(ch)
                base = ingest.WriteRows(
                    write_rows_request(NAMESPACE, TABLE, rows(0, 100), request_id="base"),
                    timeout=CALL_TIMEOUT,
                )
                assert base.result.rows_written == 100
                stream = Stream(ch)
                try:
                    first = stream.send(
                        next(
                            append_rows_requests(NAMESPACE, TABLE, rows(10_000, 100), writer_id="w")
                        )
                    )
                    assert first.WhichOneof("response") == "result", first
                    assert first.result.rows_written == 100
                    two = pa.Table.from_batches(
                        [*rows(10_100, 100).to_batches(), *rows(10_200, 100).to_batches()]
                    )
                    tail = list(
                        append_rows_requests(NAMESPACE, TABLE, two, writer_id="w", start_offset=100)
                    )
                    assert [r.offset for r in tail] == [100, 200]
                    down_requests = [
                        write_rows_request(
                            NAMESPACE, TABLE, rows(1_000 * (i + 1), 100), request_id=f"down-{i}"
                        )
                        for i in range(3)
                    ]

                    # -- the backing service goes away
                    proxy.down()
                    failed_at = time.monotonic()
                    for request in down_requests:
                        with pytest.raises(grpc.RpcError) as exc:
                            ingest.WriteRows(request, timeout=CALL_TIMEOUT)
                        details = rpc_error_details(exc.value)
                        assert details.code == grpc.StatusCode.UNAVAILABLE, (
                            details,
                            server.logs(),
                        )
                    # on the stream: a per-request error, and the stream stays usable
                    ack = stream.send(tail[0])
                    assert ack.WhichOneof("response") == "error", ack
                    assert ack.error.code == grpc.StatusCode.UNAVAILABLE.value[0], ack.error
                    assert ack.offset == 100
                    server.wait_health(NOT_SERVING, timeout=10 * HEALTH_INTERVAL + 5)
                    wait_readyz(server, 503, timeout=5)
                    assert time.monotonic() - failed_at < 60
                    # nothing of it was acknowledged nor committed (read past the proxy)
                    assert_exactly(
                        table_ids(postgres_s3_settings),
                        set(range(100)) | set(range(10_000, 10_100)),
                    )

                    # -- it comes back: health recovers by itself
                    proxy.up()
                    server.wait_health(SERVING, timeout=10 * HEALTH_INTERVAL + 5)
                    wait_readyz(server, 200, timeout=5)

                    # resend what failed: written exactly once
                    for resent in tail:
                        ack = stream.send(resent)
                        assert ack.WhichOneof("response") == "result", ack
                        assert (ack.result.rows_written, ack.result.already_written) == (
                            100,
                            False,
                        )
                    assert stream.close() == []
                finally:
                    stream.cancel()
                for request in down_requests:
                    reply = ingest.WriteRows(request, timeout=CALL_TIMEOUT)
                    assert (reply.result.rows_written, reply.result.already_written) == (100, False)
                for request in down_requests:
                    reply = ingest.WriteRows(request, timeout=CALL_TIMEOUT)
                    assert (reply.result.rows_written, reply.result.already_written) == (100, True)
            assert get_writer(server, "w") == 300
    expected = set(range(100)) | set(range(10_000, 10_300))
    for i in range(3):
        expected |= set(range(1_000 * (i + 1), 1_000 * (i + 1) + 100))
    assert_exactly(table_ids(postgres_s3_settings), expected)


# -- 3. Two replicas, one catalog -------------------------------------------------------------


@pytest.mark.timeout(150)
def test_two_replicas_write_each_row_once(postgres_s3_settings: Any, tmp_path: Path) -> None:
    env = server_env(postgres_s3_settings, commit_delay_ms=30)
    stream_count = 60
    requests = stream_requests("twin", stream_count)
    with (
        serve_process(tmp_path / "a", env, name="a") as a,
        serve_process(tmp_path / "b", env, name="b") as b,
    ):
        create_id_kind_table(a.target, NAMESPACE, TABLE, CALL_TIMEOUT)
        acks: dict[str, list[ipb.AppendRowsResponse]] = {}
        barrier = threading.Barrier(2, timeout=30)

        def stream_to(server: ServeProcess) -> None:
            with grpc.insecure_channel(server.target) as ch:
                stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
                barrier.wait()
                acks[server.name] = list(stub.AppendRows(iter(requests), timeout=90))

        run_threads([(stream_to, (a,)), (stream_to, (b,))], timeout=100)
        for name in ("a", "b"):
            got = acks[name]
            errors = [x.error for x in got if x.HasField("error")]
            assert not errors, f"replica {name}: {errors[:3]}"
            assert [x.offset for x in got] == [r.offset for r in requests]
        # each request was written fresh by exactly one replica
        fresh = [
            [not acks[n][i].result.already_written for n in ("a", "b")].count(True)
            for i in range(stream_count)
        ]
        assert fresh == [1] * stream_count, fresh
        stream_rows = stream_count * ROWS_PER_REQUEST
        assert get_writer(a, "twin") == get_writer(b, "twin") == stream_rows
        assert_exactly(table_ids(postgres_s3_settings), set(range(stream_rows)))

        # concurrent WriteRows: plain ones to each replica, and the same request ids to both
        per_thread, threads_per_replica, size = 8, 3, 100
        shared = [
            write_rows_request(
                NAMESPACE, TABLE, rows(200_000 + i * size, size), request_id=f"shared-{i}"
            )
            for i in range(per_thread * threads_per_replica)
        ]
        replies: dict[str, list[ipb.WriteRowsResponse]] = {"a": [], "b": []}
        lock = threading.Lock()

        def write_to(server: ServeProcess, worker: int) -> None:
            base = 100_000 + (0 if server.name == "a" else 50_000) + worker * per_thread * size
            with grpc.insecure_channel(server.target) as ch:
                stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
                for i in range(per_thread):
                    stub.WriteRows(
                        write_rows_request(NAMESPACE, TABLE, rows(base + i * size, size)),
                        timeout=CALL_TIMEOUT,
                    )
                    reply = stub.WriteRows(shared[worker * per_thread + i], timeout=CALL_TIMEOUT)
                    with lock:
                        replies[server.name].append(reply)

        run_threads(
            [(write_to, (s, w)) for s in (a, b) for w in range(threads_per_replica)], timeout=100
        )
    total = per_thread * threads_per_replica
    assert len(replies["a"]) == len(replies["b"]) == total
    assert all(r.result.rows_written == size for r in replies["a"] + replies["b"])
    assert sum(not r.result.already_written for r in replies["a"] + replies["b"]) == total
    expected = set(range(stream_rows)) | set(range(200_000, 200_000 + total * size))
    for replica_base in (100_000, 150_000):
        expected |= set(range(replica_base, replica_base + total * size))
    assert_exactly(table_ids(postgres_s3_settings), expected)
