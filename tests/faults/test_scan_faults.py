"""ReadRows under faults, against a real ``lakehouse serve`` process on PostgreSQL + S3.

The object store goes down in the middle of a ReadRows stream (a TCP proxy in front of moto
is switched off after the first message): the stream ends with UNAVAILABLE (never UNKNOWN or
INTERNAL), reads started during the outage fail the same way, gRPC health and /readyz report
it, and once the store is back health recovers by itself and the same read returns exactly
the table's content.

(TableService has no separate scan-planning call; ReadRows plans and streams in one.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2

from fixtures.faults import fault_env, s3_address, s3_through, wait_readyz
from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from fixtures.serve_process import serve_process
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.client.arrow import read_rows_request, read_rows_to_arrow
from lakehouse.v1 import table_service_pb2_grpc

pytestmark = pytest.mark.faults

NAMESPACE, TABLE = "faults", "scanned"
FILES, ROWS_PER_FILE = 24, 8_000
#: The smallest message budget the settings allow: each data file streams as several messages.
READ_MESSAGE_BYTES = 64 * 1024
HEALTH_TIMEOUT = 15.0
CALL_TIMEOUT = 60.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: What a failed backing service may never surface as.
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def file_rows(index: int) -> pa.Table:
    start = index * ROWS_PER_FILE
    ids = range(start, start + ROWS_PER_FILE)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "kind": pa.array([f"kind-{i % 13}-{i * 7919 % 100_003:06d}" for i in ids]),
        }
    )


def make_table(settings: Any) -> pa.Table:
    """A table of FILES data files (one append each), written past the server; its rows."""
    catalog = direct_catalog(settings)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    parts = [file_rows(i) for i in range(FILES)]
    table = catalog.create_table((NAMESPACE, TABLE), schema=parts[0].schema)
    for part in parts:
        table.append(part)
    assert sum(1 for _ in table.scan().plan_files()) == FILES
    return pa.concat_tables(parts)


def by_id(data: pa.Table) -> pa.Table:
    return data.select(["id", "kind"]).sort_by("id").combine_chunks()


@pytest.mark.timeout(150)
def test_object_store_down_mid_read_rows_fails_unavailable_then_reads_exactly(
    postgres_s3_settings: Any, tmp_path: Path
) -> None:
    expected = by_id(make_table(postgres_s3_settings))
    request = read_rows_request(NAMESPACE, TABLE)
    with tcp_proxy(*s3_address(postgres_s3_settings)) as proxy:
        env = fault_env(
            postgres_s3_settings,
            LAKEHOUSE_READ_MESSAGE_BYTES=str(READ_MESSAGE_BYTES),
            **s3_through(proxy.port),
        )
        with (
            serve_process(tmp_path / "server", env) as server,
            grpc.insecure_channel(server.target) as channel,
        ):
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            # A whole read streams many messages (so "mid-scan" means something).
            whole = list(stub.ReadRows(request, timeout=CALL_TIMEOUT))
            assert len(whole) > 2 * FILES, len(whole)
            assert by_id(read_rows_to_arrow(whole)).equals(expected)

            # -- the object store goes away once a read has sent its schema and first rows
            call = stub.ReadRows(request, timeout=CALL_TIMEOUT)
            first, second = next(call), next(call)
            assert first.HasField("arrow_schema"), first
            assert second.HasField("arrow_record_batch"), second
            proxy.down()
            down_at = time.monotonic()
            received = 2
            with pytest.raises(grpc.RpcError) as exc:
                for _ in call:
                    received += 1
            details = rpc_error_details(exc.value)
            assert details.code == grpc.StatusCode.UNAVAILABLE, (details, server.logs())
            assert details.error_info_count == 1, details
            assert received < len(whole), "the whole table came through: nothing was mid-scan"

            # a read started during the outage fails the same way
            with pytest.raises(grpc.RpcError) as during:
                list(stub.ReadRows(request, timeout=CALL_TIMEOUT))
            assert during.value.code() == grpc.StatusCode.UNAVAILABLE, (
                rpc_error_details(during.value),
                server.logs(),
            )
            server.wait_health(NOT_SERVING, timeout=HEALTH_TIMEOUT)
            wait_readyz(server, 503, timeout=HEALTH_TIMEOUT)
            assert time.monotonic() - down_at < 60

            # -- it comes back: health recovers by itself, and the same read is exact
            proxy.up()
            server.wait_health(SERVING, timeout=HEALTH_TIMEOUT)
            wait_readyz(server, 200, timeout=HEALTH_TIMEOUT)
            again = list(stub.ReadRows(request, timeout=CALL_TIMEOUT))
            assert by_id(read_rows_to_arrow(again)).equals(expected)
            assert again[0].snapshot_id == whole[0].snapshot_id
