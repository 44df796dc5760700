"""The Arrow Flight port against a real in-process server and pyarrow's Flight client.

Flight's client blocks, and the server's handlers hand their core calls to the event loop the
test runs on: every client call here runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import random
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import pytest_asyncio
from google.protobuf import any_pb2, field_mask_pb2
from prometheus_client.parser import text_string_to_metric_families

from fixtures.certs import TestCA
from fixtures.net import LOOPBACK
from fixtures.serve_process import serve_process
from lakehouse.client.arrow import read_rows_to_arrow_async
from lakehouse.config import AuthSettings, Settings
from lakehouse.core.signing_key import SigningKey
from lakehouse.domain.errors import DeadlineExceeded, PermissionDenied
from lakehouse.domain.read_sessions import b64encode
from lakehouse.server.app import LakehouseServer
from lakehouse.server.credentials import Principal, new_api_key
from lakehouse.server.flight.auth import APPEND_METHOD, READ_METHOD, WRITE_METHOD
from lakehouse.server.flight.server import wait_for
from lakehouse.server.flight.sessions import CREATE_SESSION_METHOD
from lakehouse.server.flight.tickets import TicketError, TicketSigner
from lakehouse.server.permissions import check
from lakehouse.v1 import ingest_pb2, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import ingest_service_pb2 as ingest_pb
from lakehouse.v1 import table_service_pb2 as pb

T = TypeVar("T")
SECRET = "flight-test-secret-of-at-least-32-bytes"
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
ROWS = pa.table(
    {
        "id": pa.array(range(1000), pa.int64()),
        "region": pa.array(["eu" if i % 3 else "us" for i in range(1000)], pa.string()),
    }
)
#: A stop of the test's servers never takes longer than this.
STOP_TIMEOUT_SECONDS = 30.0


async def off_loop(call: Callable[[], T]) -> T:
    """A blocking Flight client call, in a thread (the server's core needs this loop)."""
    return await asyncio.to_thread(call)


@dataclasses.dataclass
class Keys:
    """API keys of three principals, and the auth settings accepting them."""

    viewer: str
    developer: str
    other: str
    limited: str
    auth: AuthSettings


def make_keys() -> Keys:
    plain: dict[str, str] = {}
    entries = []
    for label, role, namespaces in (
        ("viewer", "viewer", None),
        ("developer", "developer", None),
        ("other", "developer", None),
        ("limited", "admin", ["elsewhere"]),
    ):
        plain[label], entry = new_api_key(f"{label}-key", role, namespaces)  # type: ignore[arg-type]
        entries.append(entry)
    return Keys(**plain, auth=AuthSettings(api_keys=tuple(entries)))


def flight_settings(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` with a Flight port on 127.0.0.1 and a ticket key."""
    values = settings.model_dump()
    auth = values.pop("auth") | {"signing_key": SECRET}
    return Settings(
        **values | {"flight_host": LOOPBACK, "flight_port": 0, "auth": auth} | overrides
    )


@pytest_asyncio.fixture
async def start_server(backend: Settings) -> AsyncIterator[Callable[..., Any]]:
    """Starts a server with Flight on ``backend`` and the given settings; stops it after."""
    servers: list[LakehouseServer] = []

    async def start(**overrides: Any) -> LakehouseServer:
        server = LakehouseServer(flight_settings(backend, **overrides))
        await server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await asyncio.wait_for(server.stop(), STOP_TIMEOUT_SECONDS)


@pytest_asyncio.fixture
async def started(start_server: Callable[..., Any]) -> Any:
    """A server with Flight, authentication off."""
    return await start_server()


async def create_table(
    server: Any,
    namespace: str = "sales",
    table: str = "orders",
    *,
    channel: grpc.aio.Channel | None = None,
    client: flight.FlightClient | None = None,
) -> None:
    """A table of ROWS, written in two commits (two data files): created through the gRPC API,
    written through Flight."""
    async with channel or grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as ch:
        stub = table_service_pb2_grpc.TableServiceStub(ch)
        await stub.CreateNamespace(pb.CreateNamespaceRequest(name=namespace))
        fields = [
            schema_pb2.Field(name="id", type=LONG, required=False),
            schema_pb2.Field(name="region", type=STRING),
        ]
        await stub.CreateTable(
            pb.CreateTableRequest(
                namespace=namespace, table=table, schema=schema_pb2.Schema(fields=fields)
            )
        )
    client = client or flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    for half in (ROWS.slice(0, 500), ROWS.slice(500)):
        await off_loop(lambda half=half: put(client, append_command(namespace, table), half))


async def create_table_as(server: Any, client: flight.FlightClient, key: str) -> None:
    """ROWS in sales.orders (one commit), created and written with the API key ``key``."""
    metadata = [("authorization", f"Bearer {key}")]
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        await stub.CreateNamespace(pb.CreateNamespaceRequest(name="sales"), metadata=metadata)
        fields = [
            schema_pb2.Field(name="id", type=LONG),
            schema_pb2.Field(name="region", type=STRING),
        ]
        schema = schema_pb2.Schema(fields=fields)
        await stub.CreateTable(
            pb.CreateTableRequest(namespace="sales", table="orders", schema=schema),
            metadata=metadata,
        )
    await off_loop(lambda: put(client, append_command("sales", "orders"), ROWS, bearer(key)))


def append_command(namespace: str, table: str, **fields: Any) -> bytes:
    return ingest_pb.AppendRowsRequest(
        namespace=namespace, table=table, **fields
    ).SerializeToString()


def put(
    client: flight.FlightClient,
    command: bytes,
    data: pa.Table,
    options: flight.FlightCallOptions | None = None,
) -> list[ingest_pb.AppendRowsResponse]:
    """do_put of ``data``'s batches; the acknowledgements read back."""
    descriptor = flight.FlightDescriptor.for_command(command)
    writer, reader = client.do_put(descriptor, data.schema, options=options)
    acks = []
    with writer:
        for batch in data.to_batches():
            writer.write_batch(batch)
        writer.done_writing()
        while (ack := reader.read()) is not None:
            acks.append(ingest_pb.AppendRowsResponse.FromString(ack.to_pybytes()))
    return acks


def read(
    client: flight.FlightClient,
    request: pb.ReadRowsRequest,
    options: flight.FlightCallOptions | None = None,
) -> pa.Table:
    """get_flight_info, then do_get of every endpoint."""
    descriptor = flight.FlightDescriptor.for_command(request.SerializeToString())
    info = client.get_flight_info(descriptor, options)
    parts = [client.do_get(e.ticket, options).read_all() for e in info.endpoints]
    return pa.concat_tables(parts) if parts else info.schema.empty_table()


async def grpc_read(server: Any, request: pb.ReadRowsRequest) -> pa.Table:
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        return await read_rows_to_arrow_async(stub.ReadRows(request))


def plain(table: pa.Table) -> pa.Table:
    """Rows to compare: field metadata dropped, sorted by id."""
    schema = pa.schema([pa.field(f.name, f.type, f.nullable) for f in table.schema])
    return table.cast(schema).sort_by("id") if "id" in table.column_names else table.cast(schema)


async def test_reads_return_read_rows_rows_for_each_selection(started: Any) -> None:
    await create_table(started)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    first = await grpc_read(started, pb.ReadRowsRequest(namespace="sales", table="orders"))
    assert first.num_rows == 1000
    selections = [
        pb.ReadRowsRequest(namespace="sales", table="orders"),
        pb.ReadRowsRequest(
            namespace="sales", table="orders", columns=field_mask_pb2.FieldMask(paths=["id"])
        ),
        pb.ReadRowsRequest(
            namespace="sales", table="orders", row_filter="region = 'us' and id < 600"
        ),
        pb.ReadRowsRequest(namespace="sales", table="orders", row_filter="id >= 990"),
    ]
    for request in selections:
        got = await off_loop(lambda request=request: read(client, request))
        expected = await grpc_read(started, request)
        assert plain(got).equals(plain(expected)), request
        assert got.num_rows > 0
    # A row limit: as many rows as ReadRows gives.
    limited = pb.ReadRowsRequest(namespace="sales", table="orders", row_limit=7)
    assert (await off_loop(lambda: read(client, limited))).num_rows == 7
    # The plan's schema is the one do_get streams (the plan does not open the read).
    for request in [*selections, limited]:
        descriptor = flight.FlightDescriptor.for_command(request.SerializeToString())
        info = await off_loop(lambda d=descriptor: client.get_flight_info(d))
        streamed = await off_loop(lambda i=info: client.do_get(i.endpoints[0].ticket).read_all())
        assert info.schema.equals(streamed.schema, check_metadata=True), request


async def test_versions_and_incremental_ranges_read_as_read_rows(started: Any) -> None:
    """A snapshot, a time, a ref and an incremental range: the rows ReadRows returns (the plan
    pins the version, which do_get reads)."""
    await create_table(started)  # two appends: two snapshots
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{started.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        listed = await stub.ListSnapshots(
            pb.ListSnapshotsRequest(namespace="sales", table="orders")
        )
    snapshots = sorted(listed.snapshots, key=lambda s: s.commit_time.ToMilliseconds())
    first = snapshots[0]
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    table = {"namespace": "sales", "table": "orders"}
    requests = [
        pb.ReadRowsRequest(**table, snapshot_id=first.snapshot_id),
        pb.ReadRowsRequest(**table, as_of_time=first.commit_time),
        pb.ReadRowsRequest(**table, ref="main"),
        pb.ReadRowsRequest(**table, start_snapshot_id=first.snapshot_id),
    ]
    counts = []
    for request in requests:
        got = await off_loop(lambda request=request: read(client, request))
        expected = await grpc_read(started, request)
        assert plain(got).equals(plain(expected)), request
        counts.append(got.num_rows)
    assert counts == [500, 500, 1000, 500]


async def test_a_ticket_reads_the_snapshot_planned(started: Any) -> None:
    """A ticket is pinned: a commit after get_flight_info does not change what do_get reads."""
    await create_table(started)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    request = pb.ReadRowsRequest(namespace="sales", table="orders")
    descriptor = flight.FlightDescriptor.for_command(request.SerializeToString())
    info = await off_loop(lambda: client.get_flight_info(descriptor))
    await off_loop(lambda: put(client, append_command("sales", "orders"), ROWS.slice(0, 10)))
    got = await off_loop(lambda: client.do_get(info.endpoints[0].ticket).read_all())
    assert got.num_rows == 1000
    assert (await off_loop(lambda: read(client, request))).num_rows == 1010


async def test_bad_descriptors_and_tickets_are_clear_errors(started: Any) -> None:
    await create_table(started)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")

    def info(descriptor: flight.FlightDescriptor) -> Any:
        return client.get_flight_info(descriptor)

    cases = [
        (
            flight.FlightDescriptor.for_path("sales", "orders"),
            pa.ArrowInvalid,
            "[MALFORMED_REQUEST] descriptor",
        ),
        (
            flight.FlightDescriptor.for_command(b"\xff\xff"),
            pa.ArrowInvalid,
            "[MALFORMED_REQUEST] descriptor.cmd",
        ),
        (
            flight.FlightDescriptor.for_command(
                pb.ReadRowsRequest(
                    namespace="sales",
                    table="orders",
                    columns=field_mask_pb2.FieldMask(paths=["nope"]),
                ).SerializeToString()
            ),
            pa.ArrowInvalid,
            "[UNKNOWN_COLUMN] columns.paths[0]",
        ),
        (
            flight.FlightDescriptor.for_command(
                pb.ReadRowsRequest(
                    namespace="sales", table="orders", row_filter="id >"
                ).SerializeToString()
            ),
            pa.ArrowInvalid,
            "row_filter",
        ),
        (
            flight.FlightDescriptor.for_command(
                pb.ReadRowsRequest(namespace="sales", table="missing").SerializeToString()
            ),
            KeyError,
            "[TABLE_NOT_FOUND]",
        ),
    ]
    for descriptor, kind, text in cases:
        with pytest.raises(kind) as caught:
            await off_loop(lambda descriptor=descriptor: info(descriptor))
        assert text in str(caught.value), str(caught.value)
    with pytest.raises(flight.FlightUnauthenticatedError, match=r"\[FLIGHT_TICKET_INVALID\]"):
        await off_loop(lambda: client.do_get(flight.Ticket(b"not a ticket")).read_all())


def bearer(key: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {key}".encode())])


KEYS = make_keys()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_auth_on_the_flight_port(start_server: Callable[..., Any]) -> None:
    auth = KEYS.auth.model_dump() | {"signing_key": SECRET}
    started = await start_server(auth=auth)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    developer, viewer, other = bearer(KEYS.developer), bearer(KEYS.viewer), bearer(KEYS.other)
    command = append_command("sales", "orders", writer_id="w1", offset=0)
    request = pb.ReadRowsRequest(namespace="sales", table="orders")
    descriptor = flight.FlightDescriptor.for_command(request.SerializeToString())
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{started.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        metadata = [("authorization", f"Bearer {KEYS.developer}")]
        await stub.CreateNamespace(pb.CreateNamespaceRequest(name="sales"), metadata=metadata)
        fields = [
            schema_pb2.Field(name="id", type=LONG),
            schema_pb2.Field(name="region", type=STRING),
        ]
        await stub.CreateTable(
            pb.CreateTableRequest(
                namespace="sales", table="orders", schema=schema_pb2.Schema(fields=fields)
            ),
            metadata=metadata,
        )
    # No credentials, or a wrong key: UNAUTHENTICATED before anything is read or written.
    for options in (None, bearer("lh_" + "x" * 40)):
        with pytest.raises(flight.FlightUnauthenticatedError):
            await off_loop(lambda options=options: client.get_flight_info(descriptor, options))
        with pytest.raises(flight.FlightUnauthenticatedError):
            await off_loop(lambda options=options: put(client, command, ROWS, options))
    # A viewer reads but may not append (ingest.write), and nothing is written.
    with pytest.raises(flight.FlightUnauthorizedError, match=r"ingest\.write"):
        await off_loop(lambda: put(client, command, ROWS, viewer))
    acks = await off_loop(lambda: put(client, command, ROWS, developer))
    assert [a.offset for a in acks] == [0]
    # A namespace-limited admin may not read another namespace.
    with pytest.raises(flight.FlightUnauthorizedError, match="namespace"):
        await off_loop(lambda: client.get_flight_info(descriptor, bearer(KEYS.limited)))
    info = await off_loop(lambda: client.get_flight_info(descriptor, viewer))
    ticket = info.endpoints[0].ticket
    # Another principal's ticket: PERMISSION_DENIED; a tampered one: UNAUTHENTICATED.
    with pytest.raises(flight.FlightUnauthorizedError, match="FLIGHT_TICKET_OTHER_PRINCIPAL"):
        await off_loop(lambda: client.do_get(ticket, other).read_all())
    tampered = bytearray(ticket.ticket)
    tampered[12] ^= 1
    with pytest.raises(flight.FlightUnauthenticatedError, match="FLIGHT_TICKET_INVALID"):
        await off_loop(lambda: client.do_get(flight.Ticket(bytes(tampered)), viewer).read_all())
    assert (await off_loop(lambda: client.do_get(ticket, viewer).read_all())).num_rows == 1000
    # Past its TTL, a ticket is refused even to its own principal: a replica (same catalog,
    # same key) whose tickets live 1 ms, so that each is expired by the time it comes back.
    brief = await start_server(auth=auth, flight_ticket_ttl_seconds=0.001)
    brief_client = flight.connect(f"grpc://{LOOPBACK}:{brief.flight_port}")
    info = await off_loop(lambda: brief_client.get_flight_info(descriptor, viewer))
    with pytest.raises(flight.FlightUnauthenticatedError, match="FLIGHT_TICKET_EXPIRED"):
        await off_loop(lambda: brief_client.do_get(info.endpoints[0].ticket, viewer).read_all())


def test_a_ticket_expires_after_its_ttl_and_not_before() -> None:
    now = [1_000.0]
    signer = TicketSigner(SigningKey(SECRET.encode()), 300, clock=lambda: now[0])
    ticket = signer.sign("reader", b"payload")
    now[0] += 299.9
    assert signer.open(ticket, "reader").payload == b"payload"
    now[0] += 0.1
    with pytest.raises(TicketError) as caught:
        signer.open(ticket, "reader")
    assert caught.value.reason == "FLIGHT_TICKET_EXPIRED"


async def row_count(client: flight.FlightClient) -> int:
    request = pb.ReadRowsRequest(namespace="sales", table="orders")
    return int((await off_loop(lambda: read(client, request))).num_rows)


async def test_do_put_is_exactly_once_with_offsets(started: Any) -> None:
    await create_table(started)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    batches = pa.Table.from_batches(ROWS.slice(0, 30).to_batches(max_chunksize=10))
    command = append_command("sales", "orders", writer_id="loader", offset=0)
    acks = await off_loop(lambda: put(client, command, batches))
    assert [(a.offset, a.result.rows_written, a.result.already_written) for a in acks] == [
        (0, 10, False),
        (10, 10, False),
        (20, 10, False),
    ]
    assert all(a.result.snapshot_id for a in acks)
    assert await row_count(client) == 1030
    # The writer resends from offset 10 (it lost the last two acknowledgements) and goes on.
    resend = pa.Table.from_batches(ROWS.slice(10, 30).to_batches(max_chunksize=10))
    command = append_command("sales", "orders", writer_id="loader", offset=10)
    acks = await off_loop(lambda: put(client, command, resend))
    assert [(a.offset, a.result.already_written) for a in acks] == [
        (10, True),
        (20, True),
        (30, False),
    ]
    assert await row_count(client) == 1040
    # A gap in the writer's offsets is refused, and nothing is written.
    command = append_command("sales", "orders", writer_id="loader", offset=100)
    with pytest.raises(pa.ArrowInvalid, match="offset"):
        await off_loop(lambda: put(client, command, ROWS.slice(0, 5)))
    assert await row_count(client) == 1040


async def test_bad_do_put_is_a_clear_error_and_writes_nothing(started: Any) -> None:
    await create_table(started)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    wrong = pa.table({"id": pa.array(["a", "b"]), "region": pa.array(["eu", "us"])})
    cases = [
        (append_command("sales", "orders"), wrong, "id"),
        (b"\xff\xff", ROWS.slice(0, 2), "[MALFORMED_REQUEST] descriptor.cmd"),
        (append_command("sales", ""), ROWS.slice(0, 2), "table"),
        (
            append_command("sales", "orders", write_mode=ingest_pb2.WRITE_MODE_UPSERT),
            ROWS.slice(0, 2),
            "write_mode",
        ),
    ]
    for command, data, text in cases:
        with pytest.raises(pa.ArrowInvalid) as caught:
            await off_loop(lambda command=command, data=data: put(client, command, data))
        assert text in str(caught.value), str(caught.value)
    assert await row_count(client) == 1000


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_tls_and_mtls_as_on_the_grpc_port(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    ca = TestCA("flight test CA")
    cert_file, key_file = ca.issue("lakehouse", server=True).write(tmp_path, "server")
    ca_file = ca.write(tmp_path, "ca")
    client_cert = ca.issue("etl.internal", client=True)
    stranger = TestCA("another CA").issue("stranger", client=True)
    request = pb.ReadRowsRequest(namespace="sales", table="orders")
    # TLS: the gRPC port's certificate; a plaintext client gets no answer.
    server = await start_server(tls={"cert_file": cert_file, "key_file": key_file})
    client = flight.connect(
        f"grpc+tls://localhost:{server.flight_port}", tls_root_certs=ca.cert_pem
    )
    channel = grpc.aio.secure_channel(
        f"localhost:{server.grpc_port}", grpc.ssl_channel_credentials(ca.cert_pem)
    )
    await create_table(server, channel=channel, client=client)
    assert (await off_loop(lambda: read(client, request))).num_rows == 1000
    plaintext = flight.connect(f"grpc://localhost:{server.flight_port}")
    with pytest.raises(flight.FlightUnavailableError):
        await off_loop(lambda: read(plaintext, request, flight.FlightCallOptions(timeout=30)))
    # mTLS: a client certificate from the configured CA is required.
    tls = {
        "cert_file": cert_file,
        "key_file": key_file,
        "client_ca_file": ca_file,
        "require_client_cert": True,
    }
    server = await start_server(tls=tls)
    location = f"grpc+tls://localhost:{server.flight_port}"
    channel = grpc.aio.secure_channel(
        f"localhost:{server.grpc_port}",
        grpc.ssl_channel_credentials(ca.cert_pem, client_cert.key_pem, client_cert.cert_pem),
    )
    trusted = flight.connect(
        location,
        tls_root_certs=ca.cert_pem,
        cert_chain=client_cert.cert_pem,
        private_key=client_cert.key_pem,
    )
    await create_table(server, "mtls", channel=channel, client=trusted)  # same catalog
    request = pb.ReadRowsRequest(namespace="mtls", table="orders")
    assert (await off_loop(lambda: read(trusted, request))).num_rows == 1000
    for certificate in (None, stranger):
        keys = (
            {}
            if certificate is None
            else {"cert_chain": certificate.cert_pem, "private_key": certificate.key_pem}
        )
        refused = flight.connect(location, tls_root_certs=ca.cert_pem, **keys)
        with pytest.raises(flight.FlightUnavailableError):
            await off_loop(
                lambda refused=refused: read(refused, request, flight.FlightCallOptions(timeout=30))
            )


async def test_metrics_count_flight_calls_by_method_and_code(started: Any) -> None:
    await create_table(started)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    await off_loop(lambda: read(client, pb.ReadRowsRequest(namespace="sales", table="orders")))
    with pytest.raises(flight.FlightUnauthenticatedError):
        await off_loop(lambda: client.do_get(flight.Ticket(b"x")).read_all())
    url = f"http://{LOOPBACK}:{started.http_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in text_string_to_metric_families(text)
        for s in m.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    handled = "lakehouse_flight_server_handled_total"
    assert value(handled, flight_method="do_put", grpc_code="OK") >= 2
    assert value(handled, flight_method="get_flight_info", grpc_code="OK") >= 1
    assert value(handled, flight_method="do_get", grpc_code="OK") >= 1
    assert value(handled, flight_method="do_get", grpc_code="Unauthenticated") >= 1
    assert value("lakehouse_flight_server_sent_bytes_total", flight_method="do_get") >= ROWS.nbytes
    assert (
        value("lakehouse_flight_server_received_bytes_total", flight_method="do_put") >= ROWS.nbytes
    )


def _big_table(server: Any, client: flight.FlightClient) -> bytes:
    """sales.orders of 1,000,000 rows in five files, far more than the transport buffers (so
    a server is still sending when a signal comes); the command that reads it all."""
    with grpc.insecure_channel(server.target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        stub.CreateNamespace(pb.CreateNamespaceRequest(name="sales"), timeout=30)
        fields = [
            schema_pb2.Field(name="id", type=LONG),
            schema_pb2.Field(name="region", type=STRING),
        ]
        schema = schema_pb2.Schema(fields=fields)
        stub.CreateTable(
            pb.CreateTableRequest(namespace="sales", table="orders", schema=schema), timeout=30
        )
    part = pa.table(
        {
            "id": pa.array(range(200_000), pa.int64()),
            "region": pa.array(["region-" + str(i % 97) for i in range(200_000)]),
        }
    )
    for _ in range(5):
        put(client, append_command("sales", "orders"), part)
    return pb.ReadRowsRequest(namespace="sales", table="orders").SerializeToString()


def test_sigterm_lets_a_running_do_get_finish(tmp_path: Path) -> None:
    """A rolling update: SIGTERM while a do_get streams; the stream ends whole, exit 0."""
    # A grace period the stream always fits in, however loaded the machine: what is checked
    # is that a running stream is let finish, not how fast.
    env = {
        "LAKEHOUSE_FLIGHT_HOST": LOOPBACK,
        "LAKEHOUSE_FLIGHT_PORT": "0",
        "LAKEHOUSE_SHUTDOWN_GRACE_SECONDS": "60",
    }
    with serve_process(tmp_path / "server", env) as server:
        client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
        command = _big_table(server, client)
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
        reader = client.do_get(info.endpoints[0].ticket)
        first = reader.read_chunk()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        rest = reader.read_all()
        assert first.data.num_rows + rest.num_rows == 1_000_000
        assert server.proc.wait(timeout=60) == 0
        # The port is closed: a new call finds nobody.
        with pytest.raises(flight.FlightUnavailableError):
            client.get_flight_info(
                flight.FlightDescriptor.for_command(command), flight.FlightCallOptions(timeout=30)
            )


#: Answers a Flight call may end with: deliberate ones (never INTERNAL or UNKNOWN).
DELIBERATE = (
    pa.ArrowInvalid,
    KeyError,
    flight.FlightUnauthenticatedError,
    flight.FlightUnauthorizedError,
)


def mutations(rng: random.Random, valid: bytes, count: int) -> list[bytes]:
    """Random bytes, and ``valid`` flipped, truncated, spliced or extended."""
    out = []
    for _ in range(count):
        kind = rng.randrange(5)
        data = bytearray(valid)
        if kind == 0:
            data = bytearray(rng.randbytes(rng.randrange(0, 64)))
        elif kind == 1 and data:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == 3:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 16))
        else:
            data += rng.randbytes(rng.randrange(1, 32))
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_fuzzed_descriptors_commands_and_tickets_get_deliberate_answers(
    started: Any,
) -> None:
    """400 mutated descriptors, do_put commands and tickets: each answer is OK or chosen."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    await create_table(started)
    client = flight.connect(f"grpc://{LOOPBACK}:{started.flight_port}")
    read_command = pb.ReadRowsRequest(
        namespace="sales", table="orders", row_filter="id < 10", row_limit=5
    ).SerializeToString()
    info = await off_loop(
        lambda: client.get_flight_info(flight.FlightDescriptor.for_command(read_command))
    )
    ticket = info.endpoints[0].ticket.ticket
    put_command = append_command("sales", "orders", writer_id="fuzz", offset=0)
    packed_write = any_pb2.Any()
    packed_write.Pack(
        ingest_pb.WriteRowsRequest(
            namespace="sales",
            table="orders",
            write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
            overwrite_filter="id > 5000",
            request_id="fuzz",
        )
    )
    write_command = packed_write.SerializeToString()
    calls: list[Callable[[], Any]] = []
    for command in mutations(rng, read_command, 200):
        descriptor = flight.FlightDescriptor.for_command(command)
        calls.append(lambda d=descriptor: client.get_flight_info(d))
    for raw in mutations(rng, ticket, 150):
        calls.append(lambda r=raw: client.do_get(flight.Ticket(r)).read_all())
    for command in mutations(rng, put_command, 25):
        calls.append(lambda c=command: put(client, c, ROWS.slice(0, 3)))
    for command in mutations(rng, write_command, 25):
        calls.append(lambda c=command: put(client, c, ROWS.slice(0, 3)))
    answers: dict[str, int] = {}
    for call in calls:
        try:
            await off_loop(call)
            outcome = "OK"
        except DELIBERATE as exc:
            outcome = type(exc).__name__
        except Exception as exc:
            raise AssertionError(f"FLIGHT_FUZZ_SEED={seed}: {type(exc).__name__}: {exc}") from exc
        answers[outcome] = answers.get(outcome, 0) + 1
    assert sum(answers.values()) == 400, answers
    assert answers.get("FlightUnauthenticatedError", 0) > 0, answers  # bad tickets, at least
    # Still serving: a valid read answers.
    assert (await off_loop(lambda: client.do_get(flight.Ticket(ticket)).read_all())).num_rows == 5


async def test_replicas_with_one_ticket_key_redeem_each_others_tickets(
    start_server: Callable[..., Any],
) -> None:
    """Two replicas on one catalog with the same key: a ticket from one reads on the other;
    a replica with another key refuses it as invalid."""
    first = await start_server()
    await create_table(first)
    second = await start_server()
    stranger = await start_server(auth={"signing_key": "another-key-of-at-least-32-bytes!!"})
    request = pb.ReadRowsRequest(namespace="sales", table="orders", row_filter="id < 100")
    descriptor = flight.FlightDescriptor.for_command(request.SerializeToString())
    planner = flight.connect(f"grpc://{LOOPBACK}:{first.flight_port}")
    info = await off_loop(lambda: planner.get_flight_info(descriptor))
    ticket = info.endpoints[0].ticket
    other = flight.connect(f"grpc://{LOOPBACK}:{second.flight_port}")
    assert (await off_loop(lambda: other.do_get(ticket).read_all())).num_rows == 100
    foreign = flight.connect(f"grpc://{LOOPBACK}:{stranger.flight_port}")
    with pytest.raises(flight.FlightUnauthenticatedError, match="FLIGHT_TICKET_INVALID"):
        await off_loop(lambda: foreign.do_get(ticket).read_all())


def expected_refusal(role: str, method: str, request: Any) -> str | None:
    """The permission ``permissions.check`` (the gRPC port's decision) refuses, or None."""
    try:
        check(Principal(f"{role}-key", role, None, "api_key"), method, request)  # type: ignore[arg-type]
    except PermissionDenied as exc:
        return exc.permission
    return None


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_role_matrix_on_the_flight_port(start_server: Callable[..., Any]) -> None:
    """Each Flight action is allowed exactly when the gRPC method it stands for is, by the
    one permission table (RULES): reads as ReadRows and CreateReadSession (tables.read),
    do_put as AppendRows (ingest.write; a write mode that removes rows also needs
    tables.change_rows, and only then is refused as not an append), and do_put of a packed
    WriteRowsRequest as WriteRows (the same two permissions)."""
    plain: dict[str, str] = {}
    entries = []
    for role in ("viewer", "developer", "admin"):
        plain[role], entry = new_api_key(f"{role}-key", role)  # type: ignore[arg-type]
        entries.append(entry)
    auth = {"api_keys": [e.model_dump() for e in entries], "signing_key": SECRET}
    server = await start_server(auth=auth)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    await create_table_as(server, client, plain["admin"])
    request = pb.ReadRowsRequest(namespace="sales", table="orders")
    session = pb.CreateReadSessionRequest(namespace="sales", table="orders")
    packed = any_pb2.Any()
    packed.Pack(session)
    append = ingest_pb.AppendRowsRequest(namespace="sales", table="orders")
    overwrite = ingest_pb.AppendRowsRequest(
        namespace="sales", table="orders", write_mode=ingest_pb2.WRITE_MODE_OVERWRITE
    )
    write = ingest_pb.WriteRowsRequest(namespace="sales", table="orders")
    packed_write = any_pb2.Any()
    packed_write.Pack(write)
    replace = ingest_pb.WriteRowsRequest(
        namespace="sales",
        table="orders",
        write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
        overwrite_filter="id < 0",
    )
    packed_replace = any_pb2.Any()
    packed_replace.Pack(replace)
    refusals = {}
    for role in plain:
        options = bearer(plain[role])
        actions: dict[str, tuple[str, Any, Callable[[], Any]]] = {
            "read": (READ_METHOD, request, lambda o=options: read(client, request, o)),
            "session": (
                CREATE_SESSION_METHOD,
                session,
                lambda o=options: client.get_flight_info(
                    flight.FlightDescriptor.for_command(packed.SerializeToString()), o
                ),
            ),
            "append": (
                APPEND_METHOD,
                append,
                lambda o=options: put(client, append.SerializeToString(), ROWS.slice(0, 1), o),
            ),
            "overwrite": (
                APPEND_METHOD,
                overwrite,
                lambda o=options: put(client, overwrite.SerializeToString(), ROWS.slice(0, 1), o),
            ),
            "write": (
                WRITE_METHOD,
                write,
                lambda o=options: put(
                    client, packed_write.SerializeToString(), ROWS.slice(0, 1), o
                ),
            ),
            "write_overwrite": (
                WRITE_METHOD,
                replace,
                lambda o=options: put(
                    client, packed_replace.SerializeToString(), ROWS.slice(0, 1), o
                ),
            ),
        }
        for action, (method, message, call) in actions.items():
            refused = expected_refusal(role, method, message)
            refusals[role, action] = refused
            if refused is not None:
                with pytest.raises(flight.FlightUnauthorizedError, match=f"needs {refused}"):
                    await off_loop(call)
            elif action == "overwrite":  # allowed by the rules, then refused: do_put appends
                with pytest.raises(pa.ArrowInvalid, match="write_mode"):
                    await off_loop(call)
            else:
                await off_loop(call)
    # What the table says today, so a change to it is a visible change here too.
    assert refusals == {
        ("viewer", "read"): None,
        ("viewer", "session"): None,
        ("viewer", "append"): "ingest.write",
        ("viewer", "overwrite"): "ingest.write",
        ("viewer", "write"): "ingest.write",
        ("viewer", "write_overwrite"): "ingest.write",
        ("developer", "read"): None,
        ("developer", "session"): None,
        ("developer", "append"): None,
        ("developer", "overwrite"): "tables.change_rows",
        ("developer", "write"): None,
        ("developer", "write_overwrite"): "tables.change_rows",
        ("admin", "read"): None,
        ("admin", "session"): None,
        ("admin", "append"): None,
        ("admin", "overwrite"): None,
        ("admin", "write"): None,
        ("admin", "write_overwrite"): None,
    }


def test_a_replica_killed_mid_do_get_fails_the_read_clearly(tmp_path: Path) -> None:
    """SIGKILL while a do_get streams: the client's read ends with UNAVAILABLE, promptly."""
    env = {"LAKEHOUSE_FLIGHT_HOST": LOOPBACK, "LAKEHOUSE_FLIGHT_PORT": "0"}
    with serve_process(tmp_path / "server", env) as server:
        client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
        command = _big_table(server, client)
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
        reader = client.do_get(info.endpoints[0].ticket, flight.FlightCallOptions(timeout=60))
        reader.read_chunk()
        assert server.proc is not None
        server.proc.kill()
        with pytest.raises(flight.FlightUnavailableError):
            reader.read_all()


def test_a_stalled_do_get_does_not_hold_shutdown_past_the_grace_period(tmp_path: Path) -> None:
    """SIGTERM while a client holds a do_get open without reading: exit 0 after the grace
    period (2 s here) and 2 s more, not whenever the client lets go."""
    env = {"LAKEHOUSE_FLIGHT_HOST": LOOPBACK, "LAKEHOUSE_FLIGHT_PORT": "0"}
    with serve_process(tmp_path / "server", env) as server:
        client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
        command = _big_table(server, client)
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
        reader = client.do_get(info.endpoints[0].ticket)
        reader.read_chunk()  # then reads nothing more: the server's sends fill the window
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        # The client still holds the stream: without the abandon the process never exits.
        assert server.proc.wait(timeout=60) == 0
        with pytest.raises(flight.FlightError):
            reader.read_all()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_endpoints_name_the_advertised_host_or_no_location(
    start_server: Callable[..., Any],
) -> None:
    quiet = await start_server()
    await create_table(quiet)
    advertising = await start_server(flight_advertised_host="replica-1.flight.example")
    descriptor = flight.FlightDescriptor.for_command(
        pb.ReadRowsRequest(namespace="sales", table="orders").SerializeToString()
    )
    for server, expected in (
        (quiet, []),
        (advertising, [f"grpc+tcp://replica-1.flight.example:{advertising.flight_port}"]),
    ):
        client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
        info = await off_loop(lambda client=client: client.get_flight_info(descriptor))
        assert [loc.uri.decode() for loc in info.endpoints[0].locations] == expected


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_do_get_checks_grants_again_even_for_a_well_signed_ticket(
    start_server: Callable[..., Any],
) -> None:
    """A ticket forged with a leaked key for a table outside the caller's grants is refused."""
    server = await start_server(auth=KEYS.auth.model_dump() | {"signing_key": SECRET})
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    # A ReadRows ticket's payload: the source tag "r", then the pinned request.
    payload = b"r" + pb.ReadRowsRequest(namespace="sales", table="orders").SerializeToString()
    forged = TicketSigner(SigningKey(SECRET.encode()), 60).sign("limited-key", payload)
    with pytest.raises(flight.FlightUnauthorizedError, match="namespace 'sales'"):
        await off_loop(
            lambda: client.do_get(flight.Ticket(forged), bearer(KEYS.limited)).read_all()
        )


def test_a_short_ticket_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"auth.signing_key must be at least 32 bytes"):
        AuthSettings(signing_key="too short")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_read_session_claim_does_not_open_another_namespace(
    start_server: Callable[..., Any],
) -> None:
    """A key granted only ``elsewhere`` names sales.orders beside a forged session name that
    claims ``elsewhere``: refused on both ports, and no row is read."""
    server = await start_server(auth=KEYS.auth.model_dump() | {"signing_key": SECRET})
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    await create_table_as(server, client, KEYS.developer)
    claim = b64encode(b'{"namespace":"elsewhere","table":"x"}') + ".AAAA"
    request = pb.ReadRowsRequest(namespace="sales", table="orders", read_session=claim)
    limited = bearer(KEYS.limited)
    with pytest.raises(flight.FlightUnauthorizedError, match="namespace 'sales'"):
        await off_loop(lambda: read(client, request, limited))
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        metadata = [("authorization", f"Bearer {KEYS.limited}")]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read_rows_to_arrow_async(stub.ReadRows(request, metadata=metadata))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A session's stream in a ReadRowsRequest command is refused by Flight whoever asks:
    # sessions are CreateReadSessionRequests packed in an Any there.
    for field, alone in (
        ("read_session", pb.ReadRowsRequest(read_session=claim)),
        ("stream", pb.ReadRowsRequest(namespace="sales", table="orders", stream=1)),
    ):
        with pytest.raises(pa.ArrowInvalid, match=rf"\] {field}: not in a Flight"):
            await off_loop(lambda alone=alone: read(client, alone, bearer(KEYS.developer)))


class LateFuture(concurrent.futures.Future[str]):
    """A core call that comes back just as the wait on it times out: the race of a result
    set between ``result(timeout)`` giving up and the waiter's next look."""

    def result(self, timeout: float | None = None) -> str:
        if timeout is not None and not self.done():
            self.set_result("an open scan")
            raise TimeoutError
        return super().result(timeout)


def test_a_core_call_that_comes_back_as_its_wait_times_out_is_its_result() -> None:
    assert wait_for(LateFuture(), 0.01) == "an open scan"
    late_error: concurrent.futures.Future[str] = concurrent.futures.Future()
    late_error.set_exception(TimeoutError("the core's own"))
    with pytest.raises(TimeoutError, match="the core's own"):
        wait_for(late_error, 0.01)
    with pytest.raises(DeadlineExceeded):
        wait_for(concurrent.futures.Future(), 0.01)
