"""Circuit breakers against real backing services that go away and come back.

A real server (in process, on PostgreSQL and moto's S3) with one dependency behind a proxy:

- The catalog **hangs** (a stalling proxy: open connections are cut, new ones are accepted
  and never answered, like a host that is gone): calls first wait for PostgreSQL's connect
  timeout, then, once the breaker opened, fail at once with UNAVAILABLE, the catalog's reason,
  ``circuit_breaker: open`` and a RetryInfo; many calls at once do not pile up; the breaker
  state metric says open. When PostgreSQL is back, the health check closes the breaker long
  before its open period ends, and calls succeed.
- The object store **refuses** connections (``fixtures.tcp_proxy``): reads fail fast once its
  breaker opened, while calls that need only the catalog keep working, and it recovers alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pyarrow as pa
import pytest
import sqlalchemy

from fixtures.breakers import breaker_state, wait_breaker_state
from fixtures.grpc_errors import ErrorDetails, rpc_error_details
from fixtures.net import LOOPBACK
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.client.arrow import read_table_async, write_rows_request
from lakehouse.config import CatalogSettings, JobsSettings, ResilienceSettings, S3Settings, Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.v1 import ingest_service_pb2_grpc, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

THRESHOLD = 3
#: Far longer than the test waits for recovery: only a passing health check can close it.
OPEN_SECONDS = 120.0
#: libpq's smallest connect timeout.
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 30.0
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)


# -- A proxy that can play a dead host -----------------------------------------------------------


def _cut(sock: socket.socket) -> None:
    """Closes a socket with an RST (SO_LINGER 0), as a crashed peer would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class StallingProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; :meth:`stall` makes it a host that hangs.

    While stalled, open connections are cut and new ones are accepted but never answered: a
    client waits for its own timeout, which is what a dead host (or a black-holing network)
    costs and what a circuit breaker saves. :meth:`resume` forwards new connections again.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stalled = False
        self._closed = False
        self._open: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def stall(self) -> None:
        with self._lock:
            self._stalled = True
            doomed, self._open = self._open, set()
        for sock in doomed:
            _cut(sock)

    def resume(self) -> None:
        with self._lock:
            self._stalled = False
            held, self._held = self._held, []
        for sock in held:
            _cut(sock)

    def close(self) -> None:
        self.stall()
        self._closed = True
        self.resume()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stalled:
                    self._held.append(client)  # accepted, never answered
                    continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _cut(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed:
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._open -= {a, b}
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def stalling_proxy(upstream: tuple[str, int]) -> Iterator[StallingProxy]:
    proxy = StallingProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


# -- Helpers -------------------------------------------------------------------------------------


def settings_for(backend: Settings, tmp_path: Path, **changes: Any) -> Settings:
    """``backend`` with a quick breaker, and the job store on its own SQLite file (so that
    only the dependency under test is behind the proxy)."""
    jobs = JobsSettings(
        **{**backend.jobs.model_dump(), "database_uri": f"sqlite:///{tmp_path / 'jobs.db'}"}
    )
    resilience = ResilienceSettings(
        breaker_failure_threshold=THRESHOLD,
        breaker_open_seconds=OPEN_SECONDS,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
    )
    return backend.model_copy(update={"jobs": jobs, "resilience": resilience, **changes})


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[LakehouseServer, grpc.aio.Channel]]:
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            yield server, channel
    finally:
        await server.stop()


async def failure(call: Any) -> tuple[ErrorDetails, float]:
    """Awaits a call that must fail; its decoded error and how long it took."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return rpc_error_details(caught.value), time.monotonic() - started


def is_fast_fail(details: ErrorDetails) -> bool:
    return details.metadata.get("circuit_breaker") == "open"


def assert_fast_fail(details: ErrorDetails, dependency: str, reason: str) -> None:
    assert details.code == grpc.StatusCode.UNAVAILABLE, details
    assert details.reason == reason, details
    assert details.metadata["dependency"] == dependency, details
    assert details.metadata["circuit_breaker"] == "open", details
    assert details.retry_delay_seconds is not None, details
    assert 0 < details.retry_delay_seconds <= OPEN_SECONDS, details


# -- The catalog hangs ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres_s3"], indirect=True)
async def test_a_hanging_catalog_fails_fast_once_its_breaker_opens_and_recovers_by_itself(
    backend: Settings, tmp_path: Path
) -> None:
    url = sqlalchemy.engine.make_url(backend.catalog_uri)
    assert url.host and url.port
    with stalling_proxy((url.host, url.port)) as proxy:
        proxied = url.set(host=LOOPBACK, port=proxy.port).update_query_dict(
            {"connect_timeout": str(int(CONNECT_TIMEOUT))}
        )
        catalog = CatalogSettings(
            uri=proxied.render_as_string(hide_password=False), warehouse=backend.warehouse
        )
        async with running(settings_for(backend, tmp_path, catalog=catalog)) as (server, ch):
            tables = table_service_pb2_grpc.TableServiceStub(ch)
            await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="cb"))
            get = tpb.GetNamespaceRequest(name="cb")
            assert await breaker_state(server, "catalog") == 0

            proxy.stall()
            # Until the breaker opens, calls wait for PostgreSQL's connect timeout (a read is
            # attempted several times, each attempt counting against the breaker).
            slow: list[float] = []
            while True:
                details, took = await failure(tables.GetNamespace(get, timeout=CALL_TIMEOUT))
                assert details.code == grpc.StatusCode.UNAVAILABLE, details
                assert details.reason == "CATALOG_UNAVAILABLE", details
                if is_fast_fail(details):
                    break
                slow.append(took)
                assert len(slow) < THRESHOLD, "the breaker did not open after its threshold"
            assert slow and max(slow) >= CONNECT_TIMEOUT * 0.9, slow  # what the breaker saves
            assert_fast_fail(details, "catalog", "CATALOG_UNAVAILABLE")
            assert took < CONNECT_TIMEOUT / 2, f"a fast fail took {took:.2f}s"

            # Many callers at once: none waits for the dead catalog, nothing piles up.
            started = time.monotonic()
            results = await asyncio.gather(
                *(failure(tables.GetNamespace(get, timeout=CALL_TIMEOUT)) for _ in range(20)),
                failure(tables.CreateNamespace(tpb.CreateNamespaceRequest(name="cb2"), timeout=30)),
            )
            assert time.monotonic() - started < CONNECT_TIMEOUT
            for details, _ in results:
                assert_fast_fail(details, "catalog", "CATALOG_UNAVAILABLE")
            assert await breaker_state(server, "catalog") == 1
            assert await breaker_state(server, "object_store") == 0

            # PostgreSQL is back: the next health check closes the breaker, long before its
            # open period (OPEN_SECONDS) would have let a trial call through.
            proxy.resume()
            await wait_breaker_state(server, "catalog", 0, timeout=20)
            reply = await tables.GetNamespace(get, timeout=CALL_TIMEOUT)
            assert reply.namespace.name == "cb"
            await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="cb2"))


# -- The object store refuses connections -----------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres_s3"], indirect=True)
async def test_reads_fail_fast_on_a_dead_object_store_while_catalog_calls_go_on(
    backend: Settings, tmp_path: Path
) -> None:
    endpoint = urlparse(backend.s3.endpoint_url or "")
    with tcp_proxy(endpoint.hostname or LOOPBACK, endpoint.port or 80) as proxy:
        s3 = S3Settings(
            **{
                **backend.s3.model_dump(),
                "endpoint_url": proxy.endpoint,
                "connect_timeout_seconds": 2,
            }
        )
        async with running(settings_for(backend, tmp_path, s3=s3)) as (server, ch):
            tables = table_service_pb2_grpc.TableServiceStub(ch)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(ch)
            await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="cb"))
            await tables.CreateTable(
                tpb.CreateTableRequest(
                    namespace="cb",
                    table="t",
                    schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
                )
            )
            await ingest.WriteRows(write_rows_request("cb", "t", pa.table({"id": range(100)})))

            proxy.down()
            slow = 0
            while True:
                details, took = await failure(read_table_async(tables, "cb", "t", timeout=60))
                assert details.code == grpc.StatusCode.UNAVAILABLE, details
                assert details.reason == "OBJECT_STORE_UNAVAILABLE", details
                if is_fast_fail(details):
                    break
                slow += 1
                assert slow < THRESHOLD, "the breaker did not open after its threshold"
            assert_fast_fail(details, "object_store", "OBJECT_STORE_UNAVAILABLE")
            assert took < 1.0, f"a fast fail took {took:.2f}s"
            # A write needs the object store too: refused at once, nothing written.
            details, _ = await failure(
                ingest.WriteRows(write_rows_request("cb", "t", pa.table({"id": [7]})), timeout=30)
            )
            assert_fast_fail(details, "object_store", "OBJECT_STORE_UNAVAILABLE")
            # Calls that need only the catalog are not held by the object store's breaker.
            got = await tables.GetTable(tpb.GetTableRequest(namespace="cb", table="t"))
            assert got.table.name == "t"
            listed = await tables.ListTables(tpb.ListTablesRequest(namespace="cb"))
            assert [t.table for t in listed.tables] == ["t"]
            assert await breaker_state(server, "object_store") == 1
            assert await breaker_state(server, "catalog") == 0

            proxy.up()
            await wait_breaker_state(server, "object_store", 0, timeout=20)
            back = await read_table_async(tables, "cb", "t", timeout=60)
            assert sorted(back.column("id").to_pylist()) == list(range(100))
