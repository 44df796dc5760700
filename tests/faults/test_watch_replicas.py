"""WatchTable across real processes: another replica's commits, and a resume after SIGKILL.

Two ``lakehouse serve`` processes share one catalog and warehouse. Replica A takes every
write; a client watches the table on replica B, which learns of A's commits only by polling
the table's metadata. Midway, B is killed with SIGKILL; a new B starts, and the client
reconnects with the last snapshot id it got. At the end the client has seen every snapshot of
the table's lineage exactly once, in commit order: nothing missed, nothing twice.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from fixtures.faults import create_id_kind_table, fault_env
from fixtures.iceberg import direct_catalog
from fixtures.serve_process import serve_process
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc, rows_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

pytestmark = pytest.mark.faults

NAMESPACE, TABLE = "watched", "t"
WRITES_BEFORE, WRITES_WHILE_DOWN, WRITES_AFTER = 5, 4, 3
CALL_TIMEOUT = 60.0


def _write(target: str, i: int) -> int:
    row = struct_pb2.Struct()
    row.update({"id": i, "kind": "w"})
    with grpc.insecure_channel(target) as ch:
        reply = ingest_service_pb2_grpc.IngestServiceStub(ch).WriteRows(
            ipb.WriteRowsRequest(
                namespace=NAMESPACE, table=TABLE, json_rows=rows_pb2.JsonRows(rows=[row])
            ),
            timeout=CALL_TIMEOUT,
        )
    snapshot_id: int = reply.result.snapshot_id
    return snapshot_id


def _watch(target: str, after: int, wanted: int, seen: list[int]) -> None:
    """Appends to ``seen`` the ids of the next ``wanted`` events after ``after``."""
    with grpc.insecure_channel(target) as ch:
        stub = table_service_pb2_grpc.TableServiceStub(ch)
        call = stub.WatchTable(
            tpb.WatchTableRequest(namespace=NAMESPACE, table=TABLE, after_snapshot_id=after),
            timeout=CALL_TIMEOUT,
        )
        try:
            for message in call:
                seen.append(message.snapshot.snapshot_id)
                if len(seen) >= wanted:
                    return
        finally:
            call.cancel()


def test_a_watch_on_another_replica_resumes_after_a_kill_with_nothing_missed_or_twice(
    backend: Any, tmp_path: Path
) -> None:
    env = fault_env(backend)
    with serve_process(tmp_path / "a", env, name="a") as a:
        create_id_kind_table(a.target, NAMESPACE, TABLE)
        start = _write(a.target, 0)
        seen: list[int] = []
        with serve_process(tmp_path / "b1", env, name="b1") as b:
            watcher = threading.Thread(
                target=_watch, args=(b.target, start, WRITES_BEFORE, seen), daemon=True
            )
            watcher.start()
            for i in range(1, WRITES_BEFORE + 1):
                _write(a.target, i)
            watcher.join(CALL_TIMEOUT)
            assert len(seen) == WRITES_BEFORE, b.logs()
            b.kill()
        # Commits go on while no replica serves the watcher.
        for i in range(WRITES_BEFORE + 1, WRITES_BEFORE + WRITES_WHILE_DOWN + 1):
            _write(a.target, i)
        total = WRITES_BEFORE + WRITES_WHILE_DOWN + WRITES_AFTER
        with serve_process(tmp_path / "b2", env, name="b2") as b:
            resumed: list[int] = []
            watcher = threading.Thread(
                target=_watch,
                args=(b.target, seen[-1], total - WRITES_BEFORE, resumed),
                daemon=True,
            )
            watcher.start()
            for i in range(WRITES_BEFORE + WRITES_WHILE_DOWN + 1, total + 1):
                _write(a.target, i)
            watcher.join(CALL_TIMEOUT)
            seen.extend(resumed)

    table = direct_catalog(backend).load_table((NAMESPACE, TABLE))
    lineage = []
    snapshot = table.current_snapshot()
    while snapshot is not None and snapshot.snapshot_id != start:
        lineage.append(snapshot.snapshot_id)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    assert seen == list(reversed(lineage))
    assert len(seen) == total
