"""The Arrow Flight port against a real in-process server and pyarrow's Flight client.

Flight's client blocks, and the server's handlers hand their core calls to the event loop the
test runs on: every client call here runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import pytest_asyncio

from fixtures.net import LOOPBACK
from lakehouse.client.arrow import read_table_async
from lakehouse.config import AuthSettings, Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.server.credentials import new_api_key
from lakehouse.v1 import ingest_service_pb2 as ingest_pb
from lakehouse.v1 import rows_pb2, schema_pb2, table_service_pb2_grpc
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
    values = {
        "flight_host": LOOPBACK,
        "flight_port": 0,
        "flight_ticket_secret": SECRET,
        **overrides,
    }
    return settings.model_copy(update=values)


@pytest_asyncio.fixture
async def started(request: pytest.FixtureRequest, backend: Settings) -> AsyncIterator[Any]:
    marker = request.node.get_closest_marker("flight_settings")
    overrides = dict(marker.kwargs) if marker is not None else {}
    settings = Settings(**(flight_settings(backend).model_dump() | overrides))
    server = LakehouseServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), STOP_TIMEOUT_SECONDS)
