"""Replicas with no signing key configured share one through their PostgreSQL job store.

Two ``lakehouse serve`` processes on one PostgreSQL database and one moto S3 bucket, each with
its own data folder and no ``auth.signing_key``, started together: a session created on one
is read on the other, through ReadRows streams and through Flight ``do_get``, and the key
generated in the database never shows in logs or errors.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2
from server.test_flight import LONG, ROWS, STRING, append_command, plain, put

from fixtures.grpc_errors import rpc_error_details
from fixtures.net import LOOPBACK
from fixtures.serve_process import ServeProcess, settings_env
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.signing_key_store import shared_signing_key
from lakehouse.client.arrow import read_rows_to_arrow
from lakehouse.config import Settings
from lakehouse.core.read_sessions import PURPOSE
from lakehouse.core.signing_key import SigningKey
from lakehouse.v1 import schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as pb


def start_together(tmp_path: Path, settings: Settings) -> list[ServeProcess]:
    servers = []
    for name in ("a", "b"):
        env = settings_env(settings) | {
            "LAKEHOUSE_DATA_DIR": str(tmp_path / name / "data"),  # nothing shared on disk
            "LAKEHOUSE_FLIGHT_HOST": LOOPBACK,
            "LAKEHOUSE_FLIGHT_PORT": "0",
        }
        servers.append(ServeProcess(tmp_path / name, env, name=name))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for started in [pool.submit(s.start) for s in servers]:
            started.result()
    return servers


def test_a_session_made_on_one_replica_is_read_on_another(
    tmp_path: Path, postgres_s3_settings: Settings
) -> None:
    servers = start_together(tmp_path, postgres_s3_settings)
    try:
        a, b = servers
        with (
            grpc.insecure_channel(a.target) as channel_a,
            grpc.insecure_channel(b.target) as channel_b,
        ):
            stub_a = table_service_pb2_grpc.TableServiceStub(channel_a)
            stub_b = table_service_pb2_grpc.TableServiceStub(channel_b)
            stub_a.CreateNamespace(pb.CreateNamespaceRequest(name="sales"))
            fields = [
                schema_pb2.Field(name="id", type=LONG),
                schema_pb2.Field(name="region", type=STRING),
            ]
            stub_a.CreateTable(
                pb.CreateTableRequest(
                    namespace="sales", table="orders", schema=schema_pb2.Schema(fields=fields)
                )
            )
            flight_a = flight.connect(f"grpc://{LOOPBACK}:{a.flight_port}")
            flight_b = flight.connect(f"grpc://{LOOPBACK}:{b.flight_port}")
            for half in (ROWS.slice(0, 500), ROWS.slice(500)):
                put(flight_a, append_command("sales", "orders"), half)
            session = stub_a.CreateReadSession(
                pb.CreateReadSessionRequest(namespace="sales", table="orders")
            ).session
            assert len(session.streams) == 2
            # Streams of A's session, read on B: over gRPC, and with Flight tickets.
            over_grpc = [
                read_rows_to_arrow(
                    stub_b.ReadRows(pb.ReadRowsRequest(read_session=session.name, stream=i))
                )
                for i in range(len(session.streams))
            ]
            over_flight = [
                flight_b.do_get(flight.Ticket(s.flight_ticket)).read_all() for s in session.streams
            ]
            for parts in (over_grpc, over_flight):
                assert plain(pa.concat_tables(parts)).equals(plain(ROWS))
            # And the other way: a session planned by B's Flight port, read on A's.
            packed = any_pb2.Any()
            packed.Pack(pb.CreateReadSessionRequest(namespace="sales", table="orders"))
            info = flight_b.get_flight_info(
                flight.FlightDescriptor.for_command(packed.SerializeToString())
            )
            parts = [flight_a.do_get(e.ticket).read_all() for e in info.endpoints]
            assert plain(pa.concat_tables(parts)).equals(plain(ROWS))
            # A refused session says why without the key.
            with pytest.raises(grpc.RpcError) as caught:
                read_rows_to_arrow(
                    stub_b.ReadRows(pb.ReadRowsRequest(read_session=session.name[:-4] + "AAAA"))
                )
            refused = caught.value
            details = rpc_error_details(refused)
            assert details.reason == "INVALID_READ_SESSION"
        store = JobStore(postgres_s3_settings.jobs_database_uri)
        try:
            key = shared_signing_key(store)
        finally:
            store.close()
        derived = SigningKey(key).for_purpose(PURPOSE)
        said = " ".join(s.logs(lines=100_000) for s in servers) + repr(refused) + str(details)
        for secret in (key.decode(), derived.hex(), key.hex()):
            assert secret not in said
        assert not (tmp_path / "a" / "data" / "signing.key").exists()
    finally:
        for server in servers:
            server.kill()
