"""Readers nobody here wrote read a table after DeleteRows: pyiceberg StaticTable, DuckDB 1.5.5.

Issue 15: the copy-on-write snapshots are plain Iceberg. pyiceberg's ``StaticTable`` reads
from the metadata file alone (no catalog), and DuckDB 1.5.5's ``iceberg_scan`` (its own
Iceberg reader, in its own venv: ``fixtures.duckdb15``) reads the same file; both must see
exactly the rows left, on both backends, also after everything was deleted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pyiceberg.table import StaticTable

from fixtures.duckdb15 import duckdb15_python, iceberg_ids
from fixtures.row_tables import create_table, delete, expected_after, read_ids, write
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.v1 import ingest_service_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest_asyncio.fixture
async def ingest_stub(channel: grpc.aio.Channel) -> AsyncIterator[Any]:
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


@pytest.fixture(scope="module")
def duckdb15() -> Path:
    """DuckDB 1.5.5's venv (made on first use, which takes a minute)."""
    return duckdb15_python()


def static_ids(metadata_location: str, settings: Any) -> list[int]:
    props = {
        k: v
        for k, v in catalog_properties(settings).items()
        if k.startswith("s3.") or k == "warehouse"
    }
    table = StaticTable.from_metadata(metadata_location, properties=props)
    return sorted(table.scan().to_arrow().column("id").to_pylist())


async def test_static_table_and_duckdb_read_the_rows_a_delete_left(
    table_stub: Any, ingest_stub: Any, backend: Any, duckdb15: Path
) -> None:
    await create_table(table_stub, "t", "day")
    for start in range(0, 120, 40):
        await write(ingest_stub, "t", range(start, start + 40))
    expected = list(range(120))
    # A whole partition's files (part b is spread over all days, so rewrites), NULLs, a
    # range: files removed whole and files rewritten.
    steps = [
        ("part = 'b'", lambda r: r["part"] == "b"),
        ("amount IS NULL", lambda r: r["amount"] is None),
        ("ts < TIMESTAMP '2024-01-02'", lambda r: r["ts"].day == 1),
        ("id >= 100", lambda r: r["id"] >= 100),
    ]
    for row_filter, matches in steps:
        reply = await delete(table_stub, "t", row_filter)
        expected = expected_after(expected, matches)
    assert expected and await read_ids(table_stub, "t") == expected

    assert static_ids(reply.etag, backend) == expected
    assert iceberg_ids(duckdb15, reply.etag, backend) == expected

    everything = await delete(table_stub, "t", "true")

    assert everything.rows_deleted == len(expected)
    assert static_ids(everything.etag, backend) == []
    assert iceberg_ids(duckdb15, everything.etag, backend) == []
    # The snapshot before is still readable by both (time travel readers keep working).
    assert iceberg_ids(duckdb15, reply.etag, backend) == expected
