"""How the high-level client connects: an API key, mTLS, and a server that goes away and
comes back on the same port (each against a real ``lakehouse serve``)."""

from __future__ import annotations

import decimal
import hashlib
import json
from pathlib import Path

import grpc
import pyarrow as pa
import pytest

from fixtures.certs import TestCA
from fixtures.net import LOOPBACK, free_port
from fixtures.serve_process import ServeProcess, serve_process
from lakehouse.client import Lakehouse
from lakehouse.client.errors import LakehouseError
from lakehouse.client.retry import RetryPolicy

KEY = "lh_high-level-client-test-key"
ROWS = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.decimal128(9, 2))])


def rows(ids: range) -> pa.Table:
    return pa.table({"id": list(ids), "v": [decimal.Decimal(i) for i in ids]}, schema=ROWS)


def test_the_api_key_goes_as_a_bearer_token(tmp_path: Path) -> None:
    key = {"name": "etl", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "role": "admin"}
    env = {"LAKEHOUSE_AUTH__API_KEYS": json.dumps([key])}
    with serve_process(tmp_path / "auth", env) as server:
        with Lakehouse(server.target, api_key=KEY) as lh:
            lh.create_namespace("keyed")
            lh.create_table("keyed.t", ROWS)
            lh.write("keyed.t", rows(range(3)))
            assert lh.read("keyed.t").num_rows == 3
        with Lakehouse(server.target) as anonymous, pytest.raises(LakehouseError) as refused:
            anonymous.read("keyed.t")
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_mutual_tls_with_the_given_certificates(tmp_path: Path) -> None:
    ca = TestCA("client test CA")
    server_cert, server_key = ca.issue("lakehouse", server=True).write(tmp_path / "pki", "server")
    ca_file = ca.write(tmp_path / "pki", "ca")
    client = ca.issue("etl.internal", client=True)
    env = {
        "LAKEHOUSE_TLS__CERT_FILE": str(server_cert),
        "LAKEHOUSE_TLS__KEY_FILE": str(server_key),
        "LAKEHOUSE_TLS__CLIENT_CA_FILE": str(ca_file),
        "LAKEHOUSE_TLS__REQUIRE_CLIENT_CERT": "true",
    }
    creds = grpc.ssl_channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)
    with serve_process(tmp_path / "tls", env, credentials=creds) as server:
        target = f"localhost:{server.grpc_port}"
        with Lakehouse(
            target,
            root_certificates=ca.cert_pem,
            client_certificate=client.cert_pem,
            client_key=client.key_pem,
        ) as lh:
            assert lh.create_namespace("secure").name == "secure"
        # Without a client certificate the handshake fails: UNAVAILABLE, retried, then raised.
        with (
            Lakehouse(
                target, root_certificates=ca.cert_pem, retry=RetryPolicy(max_attempts=2)
            ) as no_cert,
            pytest.raises(LakehouseError) as refused,
        ):
            no_cert.get_table("secure.t")
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_calls_survive_a_server_restart_and_an_append_resumes(tmp_path: Path) -> None:
    port = free_port()
    server = ServeProcess(tmp_path / "restart", {"LAKEHOUSE_GRPC_PORT": str(port)})
    refusals: list[LakehouseError] = []

    def restart_when_down(error: LakehouseError, attempt: int, delay: float) -> None:
        refusals.append(error)
        if server.proc is not None and server.proc.poll() is not None:
            server.start()  # same folder, same catalog: the table and the writer are there

    try:
        server.start()
        policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=0.5)
        with Lakehouse(f"{LOOPBACK}:{port}", retry=policy, on_retry=restart_when_down) as lh:
            lh.create_namespace("r")
            lh.create_table("r.t", ROWS)
            assert lh.append("r.t", rows(range(0, 5)), writer_id="w") == 5
            server.stop()  # really gone: the next call is refused until it is back
            # All ten rows from offset 0: the first attempt meets the stopped server, the
            # retry asks GetWriter (5) and sends rows 5..9 only.
            assert lh.append("r.t", rows(range(0, 10)), writer_id="w", start_offset=0) == 10
            assert sorted(lh.read("r.t").column("id").to_pylist()) == list(range(10))
            assert lh.writer_offset("r.t", "w") == 10
    finally:
        server.kill()
    assert refusals[0].code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("channels", [1, 3])
def test_calls_are_spread_over_the_clients_channels(tmp_path: Path, channels: int) -> None:
    # Each channel is its own connection (its own client port), taken in turn per call.
    with serve_process(tmp_path / "spread", {}) as server:
        with Lakehouse(server.target, channels=channels) as lh:
            lh.create_namespace("spread")
            lh.create_table("spread.t", ROWS)
            for _ in range(2 * channels):
                lh.get_table("spread.t")
        assert len(server.peers("GetTable")) == channels, server.logs()


def test_a_channel_count_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="channels"):
        Lakehouse(f"{LOOPBACK}:1", channels=0)
