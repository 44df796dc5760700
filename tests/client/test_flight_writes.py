"""``write`` over the Flight port (``Lakehouse(..., flight=...)``), and its gRPC fallback.

A real in-process server with a Flight port; which path a write took is read from the
server's own call counters (Flight ``do_put`` and gRPC ``WriteRows``), the rows from the
table as pyiceberg reads it on the same catalog.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY
from server.test_flight import start_server, started

from fixtures.iceberg import direct_catalog
from fixtures.net import LOOPBACK, free_port
from lakehouse.client.errors import LakehouseError
from lakehouse.client.high_level import Lakehouse
from lakehouse.client.high_level_async import AsyncLakehouse

__all__ = ["start_server", "started"]  # fixtures, used by name

EVENTS = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("day", pa.date32(), nullable=False),
    ]
)
DAY1, DAY2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def events(ids: range, day: dt.date, name: str = "x") -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "name": name, "day": day} for i in ids], schema=EVENTS)


def calls() -> tuple[float, float]:
    """Flight do_put calls and gRPC WriteRows calls the process answered OK so far."""
    flight = REGISTRY.get_sample_value(
        "lakehouse_flight_server_handled_total", {"flight_method": "do_put", "grpc_code": "OK"}
    )
    grpc_labels = {
        "grpc_type": "unary",
        "grpc_service": "lakehouse.v1.IngestService",
        "grpc_method": "WriteRows",
        "grpc_code": "OK",
    }
    unary = REGISTRY.get_sample_value("grpc_server_handled_total", grpc_labels)
    return flight or 0.0, unary or 0.0


def rows_by_day(server: Any) -> dict[dt.date, set[str]]:
    table = direct_catalog(server.settings).load_table(("rc", "events"))
    found: dict[dt.date, set[str]] = {}
    for row in table.scan().to_arrow().to_pylist():
        found.setdefault(row["day"], set()).add(row["name"])
    return found


async def test_write_takes_flight_and_answers_as_write_rows(started: Any) -> None:
    flight = f"{LOOPBACK}:{started.flight_port}"
    async with AsyncLakehouse(f"{LOOPBACK}:{started.grpc_port}", flight=flight) as lh:
        await lh.create_namespace("rc")
        await lh.create_table("rc.events", EVENTS, partition_by={"day": "identity"})
        before = calls()
        await lh.write(
            "rc.events", pa.concat_tables([events(range(100), DAY1), events(range(100, 150), DAY2)])
        )
        reload = events(range(1000, 1080), DAY1, "reloaded")
        result = await lh.write(
            "rc.events", reload, mode="overwrite_partitions", request_id="reload-day1"
        )
        assert (result.rows_written, result.rows_deleted) == (80, 100)
        again = await lh.write(
            "rc.events", reload, mode="overwrite_partitions", request_id="reload-day1"
        )
        assert again.already_written and again.snapshot_id == result.snapshot_id
        after = calls()
        assert (after[0] - before[0], after[1] - before[1]) == (3, 0)  # all on Flight
        assert rows_by_day(started) == {DAY1: {"reloaded"}, DAY2: {"x"}}
        # Refusals decode as the gRPC port's would: code, reason, field.
        with pytest.raises(LakehouseError) as caught:
            await lh.write("rc.events", reload, mode="overwrite", overwrite_filter="nope = 1")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == "INVALID_ROW_FILTER"
        assert caught.value.violated_fields == ["overwrite_filter"]
        with pytest.raises(LakehouseError) as missing:
            await lh.write("rc.nowhere", reload)
        assert (missing.value.code, missing.value.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "TABLE_NOT_FOUND",
        )


async def test_without_a_flight_port_write_falls_back_to_write_rows(started: Any) -> None:
    """A Flight address where nothing listens: the write goes over gRPC WriteRows, and the
    client stops trying Flight for a while; the sync client shares the code."""
    closed = f"{LOOPBACK}:{free_port()}"
    target = f"{LOOPBACK}:{started.grpc_port}"
    async with AsyncLakehouse(target, flight=closed) as lh:
        await lh.create_namespace("rc")
        await lh.create_table("rc.events", EVENTS, partition_by={"day": "identity"})
        before = calls()
        await lh.write("rc.events", events(range(10), DAY1))
        assert not lh._flight.usable  # remembered: the next writes go straight to gRPC
        await lh.write("rc.events", events(range(10, 20), DAY1, "y"), mode="overwrite_partitions")
        after = calls()
        assert (after[0] - before[0], after[1] - before[1]) == (0, 2)
    assert rows_by_day(started) == {DAY1: {"y"}}

    def sync_write() -> Any:
        with Lakehouse(target, flight=closed) as client:
            return client.write(
                "rc.events", events(range(20, 25), DAY2), mode="overwrite_partitions"
            )

    result = await asyncio.to_thread(sync_write)
    assert result.rows_written == 5
    assert rows_by_day(started) == {DAY1: {"y"}, DAY2: {"x"}}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_the_sync_client_writes_over_flight(started: Any) -> None:
    target, flight = f"{LOOPBACK}:{started.grpc_port}", f"{LOOPBACK}:{started.flight_port}"

    def run() -> Any:
        with Lakehouse(target, flight=flight) as lh:
            lh.create_namespace("rc")
            lh.create_table("rc.events", EVENTS, partition_by={"day": "identity"})
            lh.write("rc.events", events(range(10), DAY1))
            return lh.write(
                "rc.events", events(range(10, 13), DAY1, "z"), mode="overwrite_partitions"
            )

    before = calls()
    result = await asyncio.to_thread(run)
    after = calls()
    assert (result.rows_written, result.rows_deleted) == (3, 10)
    assert (after[0] - before[0], after[1] - before[1]) == (2, 0)
    assert rows_by_day(started) == {DAY1: {"z"}}
