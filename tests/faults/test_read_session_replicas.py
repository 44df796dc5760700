"""A read session across real replicas: one is killed mid-session, the helper finishes elsewhere.

Two ``lakehouse serve`` processes share a PostgreSQL catalog, a moto S3 warehouse and a
read-session signing key. ``read_table`` creates the session on replica A and spreads its
streams over A and B; A is killed (SIGKILL) as the first stream read leaves for it. The
streams whose replica is gone are read again from their start on B, which serves them from
the session's name alone (nothing is shared but the key), and the result is exactly the rows
of one ReadRows. With both replicas killed, the helper fails with UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.faults import create_id_kind_table, fault_env
from fixtures.iceberg import append
from fixtures.serve_process import ServeProcess, serve_process
from lakehouse.client.arrow import read_table
from lakehouse.v1 import table_service_pb2_grpc

pytestmark = pytest.mark.faults

NAMESPACE, TABLE = "sessions", "t"
FILES, ROWS_PER_FILE = 6, 500
CALL_TIMEOUT = 60.0
SIGNING_KEY = "fault-test-read-session-key-0123456789"
SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("kind", pa.string())])


class KillOnFirstRead(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Kills replicas as the first ReadRows of a read session's stream leaves the client."""

    def __init__(self, kill: Callable[[], None]) -> None:
        self._kill: Callable[[], None] | None = kill

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.method.endswith("/ReadRows") and request.read_session and self._kill:
            kill, self._kill = self._kill, None
            kill()
        return continuation(details, request)


def _read(targets: list[str], interceptors: list[grpc.UnaryStreamClientInterceptor]) -> pa.Table:
    channels = [grpc.insecure_channel(t) for t in targets]
    try:
        stubs = [
            table_service_pb2_grpc.TableServiceStub(grpc.intercept_channel(c, i))
            for c, i in zip(channels, interceptors, strict=True)
        ]
        return read_table(stubs, NAMESPACE, TABLE, max_streams=FILES, timeout=CALL_TIMEOUT)
    finally:
        for channel in channels:
            channel.close()


@pytest.mark.parametrize("backend", ["postgres_s3"], indirect=True)
def test_a_replica_killed_mid_session_is_read_around_or_fails_clearly(
    backend: Any, tmp_path: Path
) -> None:
    env = fault_env(backend, LAKEHOUSE_AUTH__SIGNING_KEY=SIGNING_KEY)
    with serve_process(tmp_path / "b", env, name="b") as b:
        create_id_kind_table(b.target, NAMESPACE, TABLE)
        for f in range(FILES):
            ids = list(range(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE))
            append(
                backend, NAMESPACE, TABLE, pa.table({"id": ids, "kind": ["k"] * len(ids)}, SCHEMA)
            )
        with grpc.insecure_channel(b.target) as channel:
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            expected = read_table(stub, NAMESPACE, TABLE, max_streams=1, timeout=CALL_TIMEOUT)
        assert expected.num_rows == FILES * ROWS_PER_FILE

        a: ServeProcess
        with serve_process(tmp_path / "a", env, name="a") as a:
            # The session is created on A; streams 0, 2, 4 go to A (killed), 1, 3, 5 to B.
            got = _read([a.target, b.target], [KillOnFirstRead(a.kill), KillOnFirstRead(a.kill)])
            assert a.proc is not None and a.proc.poll() is not None, "A was not killed"
        assert got.equals(expected), b.logs()

        with serve_process(tmp_path / "a2", env, name="a2") as a2:

            def kill_both() -> None:
                a2.kill()
                b.kill()

            with pytest.raises(grpc.RpcError) as failed:
                _read(
                    [a2.target, b.target], [KillOnFirstRead(kill_both), KillOnFirstRead(kill_both)]
                )
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
