"""DeleteRows on a table several times larger than a memory budget: the server's peak RSS.

Issue 15, "Tables larger than memory": a delete rewrites only the files holding matching
rows, file by file. Here 1% of the rows, spread over every file, are deleted from a table
whose decoded size is over 4x ``BUDGET``: every file is rewritten, and the peak RSS of the
``lakehouse serve`` process (``VmHWM``, a real child process, local backend) may grow by at
most ``2 * BUDGET``, half the table: reading the table at once fails it.

What the engine holds is about two of its files decoded (the kept rows of the file being
rewritten, gathered into one output file, and that file's Parquet row group) plus ~25 MiB:
measured, growth 58 MiB with 16 files of 17 MiB, 90 MiB with 8 of 33 MiB, 159 MiB with 4 of
67 MiB (the table 267 MiB decoded each time). The bound is therefore per file, not per batch;
with files near the default target size (512 MiB) a rewrite would hold about 1 GiB.
The address space of the server is capped too, so that a regression fails an allocation
there instead of taking a shared machine's memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fixtures.iceberg import append
from fixtures.process_memory import MIB, cap_address_space, peak_rss
from fixtures.serve_process import ServeProcess, serve_process, settings_env
from lakehouse.v1 import schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NS, TABLE = "mem", "wide"
FILES, ROWS_PER_FILE, VALUE_BYTES = 16, 65_536, 256  # ~17 MiB decoded per file
#: The memory budget; the table decodes to over 4x of it, and the delete's growth stays
#: under twice it (half the table).
BUDGET = 64 * MIB
ADDRESS_SPACE_HEADROOM = 4 * 1024 * MIB
CALL_TIMEOUT = 180.0
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("bucket", pa.int32()),
        pa.field("blob", pa.string()),
    ]
)


def file_rows(index: int) -> pa.Table:
    """Rows of one file: unique strings (no dictionary to shrink them), buckets 0..99."""
    ids = pa.array(range(index * ROWS_PER_FILE, (index + 1) * ROWS_PER_FILE), pa.int64())
    padding = "x" * (VALUE_BYTES - 12)
    blob = pc.binary_join_element_wise(pc.cast(ids, pa.string()), padding, "-")
    bucket = pc.cast(pc.remainder(ids, 100), pa.int32())
    return pa.table([ids, bucket, blob], schema=SCHEMA)


@pytest.fixture
def server(local_settings: Any, tmp_path: Path) -> Iterator[tuple[ServeProcess, int]]:
    """A ``lakehouse serve`` process and a table of ``FILES`` files; and its decoded bytes."""
    with serve_process(tmp_path / "server", settings_env(local_settings)) as server:
        long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
        integer = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_INT)
        string = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
        with grpc.insecure_channel(server.target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            tables.CreateNamespace(tpb.CreateNamespaceRequest(name=NS), timeout=CALL_TIMEOUT)
            fields = [
                schema_pb2.Field(name="id", type=long, required=True),
                schema_pb2.Field(name="bucket", type=integer),
                schema_pb2.Field(name="blob", type=string),
            ]
            tables.CreateTable(
                tpb.CreateTableRequest(
                    namespace=NS, table=TABLE, schema=schema_pb2.Schema(fields=fields)
                ),
                timeout=CALL_TIMEOUT,
            )
        decoded = 0
        for i in range(FILES):
            data = file_rows(i)
            decoded += data.nbytes
            append(local_settings, NS, TABLE, data)
        cap_address_space(server.pid, ADDRESS_SPACE_HEADROOM)
        yield server, decoded


def test_deleting_one_percent_from_every_file_stays_within_the_budget(
    server: tuple[ServeProcess, int],
) -> None:
    process, decoded = server
    assert decoded >= 4 * BUDGET
    with grpc.insecure_channel(process.target) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        tables.GetTable(tpb.GetTableRequest(namespace=NS, table=TABLE), timeout=CALL_TIMEOUT)
        before = peak_rss(process.pid)

        reply = tables.DeleteRows(
            tpb.DeleteRowsRequest(namespace=NS, table=TABLE, row_filter="bucket = 7"),
            timeout=CALL_TIMEOUT,
        )

        growth = peak_rss(process.pid) - before
        got = tables.GetTable(tpb.GetTableRequest(namespace=NS, table=TABLE), timeout=CALL_TIMEOUT)
    rows = FILES * ROWS_PER_FILE
    doomed = len(range(7, rows, 100))
    assert (reply.rows_deleted, reply.files_rewritten, reply.files_removed) == (doomed, FILES, 0)
    assert got.table.stats.row_count == rows - doomed
    assert growth < 2 * BUDGET < decoded / 2, (
        f"peak RSS grew by {growth / MIB:.0f} MiB deleting from a table of "
        f"{decoded / MIB:.0f} MiB decoded (bound {2 * BUDGET / MIB:.0f} MiB)"
    )
