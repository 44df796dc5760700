"""The sidecar /metrics endpoint: valid Prometheus text, go-grpc-prometheus names."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lakehouse.v1 import table_service_pb2 as pb

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)


async def scrape(http_url: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session, session.get(f"{http_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text(), resp.headers["Content-Type"]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_pass_promtool_and_count_rpcs_by_code(
    table_stub: Any, http_url: str, promtool: Path
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="m"))
    for _ in range(3):
        await table_stub.GetNamespace(pb.GetNamespaceRequest(name="m"))
    with pytest.raises(grpc.aio.AioRpcError):
        await table_stub.GetNamespace(pb.GetNamespaceRequest(name="missing"))

    text, content_type = await scrape(http_url)
    assert content_type.startswith("text/plain")

    proc = await asyncio.create_subprocess_exec(
        str(promtool),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(text.encode()), 30)
    assert proc.returncode == 0, (out + err).decode()

    got = samples(text)
    labels = {
        "grpc_type": "unary",
        "grpc_service": "lakehouse.v1.TableService",
        "grpc_method": "GetNamespace",
    }
    assert got[("grpc_server_started_total", frozenset(labels.items()))] >= 4
    assert got[("grpc_server_handled_total", frozenset({**labels, "grpc_code": "OK"}.items()))] >= 3
    assert (
        got[("grpc_server_handled_total", frozenset({**labels, "grpc_code": "NotFound"}.items()))]
        >= 1
    )
    assert got[("grpc_server_msg_received_total", frozenset(labels.items()))] >= 4
    assert got[("grpc_server_msg_sent_total", frozenset(labels.items()))] >= 3
    assert got[("grpc_server_handling_seconds_count", frozenset(labels.items()))] >= 4
    names = {name for name, _ in got}
    for expected in (
        "lakehouse_grpc_server_in_flight_requests",
        "lakehouse_uptime_seconds",
        "lakehouse_dependency_up",
        "process_resident_memory_bytes",
    ):
        assert expected in names, expected
    assert got[("lakehouse_dependency_up", frozenset({"dependency": "catalog"}.items()))] == 1
