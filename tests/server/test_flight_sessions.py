"""Read sessions on the Flight port: one endpoint per stream, each read with do_get.

Against a real in-process server and pyarrow's Flight client; client calls run in threads
(the server's core needs the test's event loop).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2, field_mask_pb2
from server import test_flight
from server.test_flight import (
    DELIBERATE,
    KEYS,
    SECRET,
    bearer,
    create_table,
    create_table_as,
    grpc_read,
    mutations,
    off_loop,
    plain,
    read,
)

from fixtures.net import LOOPBACK
from lakehouse.core.read_sessions import SessionSigner
from lakehouse.core.signing_key import SigningKey
from lakehouse.domain.read_sessions import SessionClaims
from lakehouse.server.flight.sessions import parse_stream_payload, stream_payload
from lakehouse.server.flight.tickets import TicketSigner
from lakehouse.v1 import table_service_pb2 as pb
from lakehouse.v1 import table_service_pb2_grpc

#: The Flight tests' server fixture (a server with Flight on each backend).
start_server = test_flight.start_server


def session_descriptor(request: pb.CreateReadSessionRequest) -> flight.FlightDescriptor:
    """The documented command of a session: the request packed in a google.protobuf.Any."""
    packed = any_pb2.Any()
    packed.Pack(request)
    return flight.FlightDescriptor.for_command(packed.SerializeToString())


def read_endpoints(
    client: flight.FlightClient,
    info: flight.FlightInfo,
    options: flight.FlightCallOptions | None = None,
) -> pa.Table:
    parts = [client.do_get(e.ticket, options).read_all() for e in info.endpoints]
    return pa.concat_tables(parts) if parts else info.schema.empty_table()


SELECTIONS = [
    {},
    {"columns": field_mask_pb2.FieldMask(paths=["id"])},
    {"row_filter": "id < 100 or region = 'us'"},
    {"row_filter": "id >= 990", "columns": field_mask_pb2.FieldMask(paths=["region", "id"])},
    {"row_limit": 7},
]


async def test_a_sessions_endpoints_return_the_rows_of_one_read_rows(
    start_server: Callable[..., Any],
) -> None:
    server = await start_server()
    await create_table(server)  # two data files
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    for selection in SELECTIONS:
        request = pb.CreateReadSessionRequest(
            namespace="sales", table="orders", max_streams=4, **selection
        )
        info = await off_loop(
            lambda request=request: client.get_flight_info(session_descriptor(request))
        )
        # One endpoint per stream: a file each here, fewer once pruned, one with a limit.
        assert len(info.endpoints) == (2 if not selection else len(info.endpoints)), selection
        assert 1 <= len(info.endpoints) <= (1 if "row_limit" in selection else 2), selection
        got = await off_loop(lambda info=info: read_endpoints(client, info))
        expected = await grpc_read(
            server, pb.ReadRowsRequest(namespace="sales", table="orders", **selection)
        )
        if "row_limit" in selection:
            assert got.num_rows == expected.num_rows == 7
        else:
            assert plain(got).equals(plain(expected)), selection
        assert got.schema.names == expected.schema.names
    # The bare ReadRowsRequest command, and the same packed in an Any, still read one stream.
    read_rows = pb.ReadRowsRequest(namespace="sales", table="orders", row_filter="id < 10")
    packed = any_pb2.Any()
    packed.Pack(read_rows)
    for command in (read_rows.SerializeToString(), packed.SerializeToString()):
        descriptor = flight.FlightDescriptor.for_command(command)
        info = await off_loop(lambda d=descriptor: client.get_flight_info(d))
        assert len(info.endpoints) == 1
        assert (await off_loop(lambda i=info: read_endpoints(client, i))).num_rows == 10
    # An Any of another type, and a bad selection: INVALID_ARGUMENT naming the field.
    other = any_pb2.Any()
    other.Pack(pb.GetTableRequest(namespace="sales", table="orders"))
    bad = pb.CreateReadSessionRequest(namespace="sales", table="orders", max_streams=-1)
    for descriptor, text in (
        (flight.FlightDescriptor.for_command(other.SerializeToString()), "descriptor.cmd"),
        (session_descriptor(bad), "max_streams"),
    ):
        with pytest.raises(pa.ArrowInvalid, match=text):
            await off_loop(lambda d=descriptor: client.get_flight_info(d))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_session_tickets_are_the_callers_and_expire_with_the_session(
    start_server: Callable[..., Any],
) -> None:
    server = await start_server(auth=KEYS.auth.model_dump() | {"signing_key": SECRET})
    developer, other = bearer(KEYS.developer), bearer(KEYS.other)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    await create_table_as(server, client, KEYS.developer)
    request = pb.CreateReadSessionRequest(namespace="sales", table="orders")
    info = await off_loop(lambda: client.get_flight_info(session_descriptor(request), developer))
    ticket = info.endpoints[0].ticket
    with pytest.raises(flight.FlightUnauthorizedError, match="FLIGHT_TICKET_OTHER_PRINCIPAL"):
        await off_loop(lambda: client.do_get(ticket, other).read_all())
    with pytest.raises(flight.FlightUnauthorizedError, match="namespace"):  # grants apply
        await off_loop(
            lambda: client.get_flight_info(session_descriptor(request), bearer(KEYS.limited))
        )
    assert (await off_loop(lambda: read_endpoints(client, info, developer))).num_rows == 1000
    # An expired session: refused even with a ticket still valid (both carry an expiry).
    claims, _ = ticket_claims(ticket.ticket, "developer-key")
    stale = SessionClaims(**{**claims.__dict__, "expire_ms": int(time.time() * 1000) - 1})
    far = int(time.time() * 1000) + 60_000
    forged = TicketSigner(SigningKey(SECRET.encode()), 60).sign(
        "developer-key", b"c" + stream_payload(stale, 0), expires_ms=far
    )
    with pytest.raises(pa.ArrowInvalid, match="READ_SESSION_EXPIRED"):
        await off_loop(lambda: client.do_get(flight.Ticket(forged), developer).read_all())


def ticket_claims(ticket: bytes, principal: str) -> tuple[SessionClaims, int]:
    """The claims and stream index a session ticket carries (tests look inside; clients never
    need to)."""
    content = TicketSigner(SigningKey(SECRET.encode()), 60).open(ticket, principal)
    assert content.payload[:1] == b"c"
    return parse_stream_payload(content.payload[1:])


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_session_ticket_is_signed_once_and_an_older_one_is_refused(
    start_server: Callable[..., Any],
) -> None:
    """A session stream's ticket carries the session's claims under the ticket's one signature
    (its principal and expiry are the session's), not a signed session name inside a signed
    ticket; a ticket of the earlier layout is refused with a clear error."""
    server = await start_server()
    await create_table(server)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    request = pb.CreateReadSessionRequest(namespace="sales", table="orders", max_streams=2)
    info = await off_loop(lambda: client.get_flight_info(session_descriptor(request)))
    assert len(info.endpoints) == 2
    key = SigningKey(SECRET.encode())
    for index, endpoint in enumerate(info.endpoints):
        claims, stream = ticket_claims(endpoint.ticket.ticket, "anonymous")
        content = TicketSigner(key, 60).open(endpoint.ticket.ticket, "anonymous")
        assert (stream, claims.streams, claims.table) == (index, 2, "orders")
        assert (claims.principal, claims.expire_ms) == ("anonymous", content.expires_ms)
    # The earlier layout: source "s", the index, then a signed session name.
    name = SessionSigner(key).sign(claims)
    older = TicketSigner(key, 60).sign(
        "anonymous", b"s" + (0).to_bytes(4, "big") + name.encode("ascii")
    )
    with pytest.raises(pa.ArrowInvalid, match="plan again"):
        await off_loop(lambda: client.do_get(flight.Ticket(older)).read_all())


async def test_a_session_created_on_the_grpc_port_is_read_with_flight(
    start_server: Callable[..., Any],
) -> None:
    server = await start_server()
    await create_table(server)
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        response = await stub.CreateReadSession(
            pb.CreateReadSessionRequest(namespace="sales", table="orders", row_filter="id > 10")
        )
    streams = response.session.streams
    assert len(streams) == 2 and all(s.flight_ticket for s in streams)
    assert all(list(s.flight_locations) == [] for s in streams)  # no advertised host
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    parts = [
        await off_loop(lambda s=s: client.do_get(flight.Ticket(s.flight_ticket)).read_all())
        for s in streams
    ]
    assert plain(pa.concat_tables(parts)).column("id").to_pylist() == list(range(11, 1000))
    # Without a Flight port, streams carry no ticket.
    bare = await start_server(flight_port=None)
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{bare.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        response = await stub.CreateReadSession(
            pb.CreateReadSessionRequest(namespace="sales", table="orders")
        )
    assert [s.flight_ticket for s in response.session.streams] == [b"", b""]
    # With an advertised host, each stream names where to redeem its ticket.
    named = await start_server(flight_advertised_host="replica-3.example")
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{named.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        response = await stub.CreateReadSession(
            pb.CreateReadSessionRequest(namespace="sales", table="orders")
        )
    expected = [f"grpc+tcp://replica-3.example:{named.flight_port}"]
    assert [list(s.flight_locations) for s in response.session.streams] == [expected] * 2


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_fuzzed_session_commands_and_tickets_get_deliberate_answers(
    start_server: Callable[..., Any],
) -> None:
    """Mutated Any-packed session commands and session tickets: INVALID_ARGUMENT, NOT_FOUND or
    a refusal, never INTERNAL/UNKNOWN; the server still serves after them."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    server = await start_server()
    await create_table(server)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    request = pb.CreateReadSessionRequest(namespace="sales", table="orders", row_filter="id < 9")
    command = session_descriptor(request).command
    info = await off_loop(lambda: client.get_flight_info(session_descriptor(request)))
    ticket = info.endpoints[0].ticket.ticket
    calls: list[Callable[[], Any]] = [
        lambda c=c: client.get_flight_info(flight.FlightDescriptor.for_command(c))
        for c in mutations(rng, command, 100)
    ]
    calls += [
        lambda t=t: client.do_get(flight.Ticket(t)).read_all() for t in mutations(rng, ticket, 100)
    ]
    for call in calls:
        try:
            await off_loop(call)
        except DELIBERATE:
            pass
        except Exception as exc:
            raise AssertionError(f"FLIGHT_FUZZ_SEED={seed}: {type(exc).__name__}: {exc}") from exc
    assert (await read_all_endpoints(client, request)).num_rows == 9


async def read_all_endpoints(
    client: flight.FlightClient, request: pb.CreateReadSessionRequest
) -> pa.Table:
    info = await off_loop(lambda: client.get_flight_info(session_descriptor(request)))
    return await off_loop(lambda: read_endpoints(client, info))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_read_rows_plan_leaves_the_session_plan_cache_as_it_was(
    start_server: Callable[..., Any],
) -> None:
    """get_flight_info of a ReadRowsRequest plans as a one-stream session but its do_get does
    not read by share: its plans are not kept, so they push no session's plan out."""
    server = await start_server()
    await create_table(server)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    plans = server.catalog._sessions._cache._plans
    session = pb.CreateReadSessionRequest(namespace="sales", table="orders", max_streams=2)
    await off_loop(lambda: client.get_flight_info(session_descriptor(session)))
    kept = list(plans)
    assert len(kept) == 1  # a session's plan is kept for its streams
    for bound in (10, 500, 900):
        request = pb.ReadRowsRequest(namespace="sales", table="orders", row_filter=f"id < {bound}")
        assert (await off_loop(lambda request=request: read(client, request))).num_rows == bound
    assert list(plans) == kept
