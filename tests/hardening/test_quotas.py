"""Quotas on namespaces and tables, and the per-caller rate limit (issue 13).

7,475 namespaces and thousands of calls were accepted in seconds from one caller: nothing
bounded what a caller could create or how fast it could call. Now namespaces and tables per
namespace are counted in the catalog (``quotas.max_namespaces``,
``quotas.max_tables_per_namespace``) and each principal (each client address when
authentication is off) has a token bucket (``quotas.calls_per_second``, ``burst_calls``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from fixtures.grpc_errors import ErrorDetails, rpc_error_details
from fixtures.net import LOOPBACK
from lakehouse.config import AuthSettings, QuotaSettings, Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.server.credentials import new_api_key
from lakehouse.server.rate_limit import TokenBuckets, caller_key
from lakehouse.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
SCHEMA = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG, required=True)])
STOP_TIMEOUT_SECONDS = 30
#: A rate so slow that no token comes back during a test: only the burst counts.
NO_REFILL = 0.001


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Any]:
    """A server on ``settings`` and a TableService stub (its channel as ``stub.channel``)."""
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            stub.channel = channel  # type: ignore[attr-defined]
            yield stub
    finally:
        await asyncio.wait_for(server.stop(), STOP_TIMEOUT_SECONDS)


def with_quotas(settings: Settings, **quotas: Any) -> Settings:
    return settings.model_copy(update={"quotas": QuotaSettings(**quotas)})


async def refused(call: Any) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return rpc_error_details(exc.value)


def refusals(quota: str) -> float:
    return REGISTRY.get_sample_value("lakehouse_quota_refusals_total", {"quota": quota}) or 0.0


async def namespaces(stub: Any) -> list[str]:
    listed = await stub.ListNamespaces(pb.ListNamespacesRequest(page_size=1000))
    return [n.name for n in listed.namespaces]


async def tables(stub: Any, namespace: str) -> list[str]:
    listed = await stub.ListTables(pb.ListTablesRequest(namespace=namespace))
    return [t.table for t in listed.tables]


# --- namespaces and tables --------------------------------------------------------------------


async def test_the_fourth_namespace_over_a_quota_of_3_is_refused(backend: Settings) -> None:
    before = refusals("namespaces")
    async with started(with_quotas(backend, max_namespaces=3)) as stub:
        for name in ("a", "b", "c"):
            await stub.CreateNamespace(pb.CreateNamespaceRequest(name=name))
        details = await refused(stub.CreateNamespace(pb.CreateNamespaceRequest(name="d")))
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.reason == "NAMESPACE_QUOTA_EXCEEDED"
        assert details.metadata["limit"] == "3"
        assert details.retry_delay_seconds is None  # waiting does not help
        assert await namespaces(stub) == ["a", "b", "c"]  # nothing created
        assert refusals("namespaces") == before + 1
        # Room again after a delete: the count is the catalog's, not a counter of creates.
        await stub.DeleteNamespace(pb.DeleteNamespaceRequest(name="a"))
        await stub.CreateNamespace(pb.CreateNamespaceRequest(name="d"))
        assert await namespaces(stub) == ["b", "c", "d"]


async def test_a_full_namespace_takes_no_more_tables(backend: Settings) -> None:
    before = refusals("tables")
    async with started(with_quotas(backend, max_tables_per_namespace=2)) as stub:
        for namespace in ("full", "other"):
            await stub.CreateNamespace(pb.CreateNamespaceRequest(name=namespace))
        for table in ("t1", "t2"):
            await stub.CreateTable(
                pb.CreateTableRequest(namespace="full", table=table, schema=SCHEMA)
            )
        created = await stub.CreateTable(
            pb.CreateTableRequest(namespace="other", table="t3", schema=SCHEMA)
        )

        details = await refused(
            stub.CreateTable(pb.CreateTableRequest(namespace="full", table="t4", schema=SCHEMA))
        )
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.reason == "TABLE_QUOTA_EXCEEDED"
        assert details.metadata["limit"] == "2"
        assert details.metadata["namespace"] == "full"

        # Moving a table in, or registering one, adds a table too.
        details = await refused(
            stub.RenameTable(
                pb.RenameTableRequest(
                    namespace="other", table="t3", new_namespace="full", new_table="t3"
                )
            )
        )
        assert details.reason == "TABLE_QUOTA_EXCEEDED"
        details = await refused(
            stub.RegisterTable(
                pb.RegisterTableRequest(
                    namespace="full",
                    table="t5",
                    metadata_location=created.table.metadata_location,
                )
            )
        )
        assert details.reason == "TABLE_QUOTA_EXCEEDED"
        assert sorted(await tables(stub, "full")) == ["t1", "t2"]  # nothing created
        assert await tables(stub, "other") == ["t3"]
        assert refusals("tables") == before + 3

        # A rename inside a full namespace adds nothing.
        await stub.RenameTable(pb.RenameTableRequest(namespace="full", table="t1", new_table="t1b"))
        assert sorted(await tables(stub, "full")) == ["t1b", "t2"]


async def test_a_sql_job_cannot_create_its_destination_in_a_full_namespace(
    backend: Settings,
) -> None:
    async with started(with_quotas(backend, max_tables_per_namespace=1)) as stub:
        await stub.CreateNamespace(pb.CreateNamespaceRequest(name="crowded"))
        await stub.CreateTable(
            pb.CreateTableRequest(namespace="crowded", table="t1", schema=SCHEMA)
        )
        jobs = job_service_pb2_grpc.JobServiceStub(stub.channel)
        sql = job_pb2.SqlJobSpec(
            statement="SELECT id FROM crowded.t1",
            destination_namespace="crowded",
            destination_table="copy",
        )
        details = await refused(
            jobs.CreateJob(job_service_pb2.CreateJobRequest(spec=job_pb2.JobSpec(sql=sql)))
        )
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.reason == "TABLE_QUOTA_EXCEEDED"
        assert details.metadata["namespace"] == "crowded"
        listed = await jobs.ListJobs(job_service_pb2.ListJobsRequest())
        assert list(listed.jobs) == []  # no job was created
        assert await tables(stub, "crowded") == ["t1"]


# --- the rate limit ---------------------------------------------------------------------------


def test_token_bucket_delay_is_the_time_until_a_token() -> None:
    now = [100.0]
    buckets = TokenBuckets(2.0, 3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # 2 tokens/s: one in 0.5 s
    assert buckets.take("b") == 0.0  # another caller has its own bucket
    now[0] += 0.25
    assert buckets.take("a") == pytest.approx(0.25)
    now[0] += 0.25
    assert buckets.take("a") == 0.0
    now[0] += 1000
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills only up to the burst


def test_buckets_stay_bounded_under_a_flood_of_callers() -> None:
    now = [0.0]
    buckets = TokenBuckets(1.0, 1, clock=lambda: now[0], max_buckets=100)
    for i in range(10_000):
        buckets.take(f"peer:{i}")
        now[0] += 0.001
    assert len(buckets) <= 100


def test_caller_keys() -> None:
    assert caller_key("alice", "ipv4:10.0.0.7:5123", by_peer=False) == "principal:alice"
    assert caller_key("anonymous", "ipv4:10.0.0.7:5123", by_peer=True) == "peer:10.0.0.7"
    assert caller_key("anonymous", "ipv6:[::1]:5123", by_peer=True) == "peer:[::1]"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_calls_beyond_the_burst_are_rate_limited_but_health_answers(
    backend: Settings,
) -> None:
    before = refusals("rate")
    settings = with_quotas(backend, calls_per_second=NO_REFILL, burst_calls=3)
    async with started(settings) as stub:
        for _ in range(3):
            await stub.ListNamespaces(pb.ListNamespacesRequest())
        details = await refused(stub.CreateNamespace(pb.CreateNamespaceRequest(name="x")))
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.reason == "RATE_LIMITED"
        assert details.metadata["calls_per_second"] == f"{NO_REFILL:g}"
        assert details.metadata["burst_calls"] == "3"
        # The time until a token: 1 / 0.001 calls per second.
        assert details.retry_delay_seconds == pytest.approx(1000, rel=0.01)
        # A streaming call counts as a call too.
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in stub.ReadRows(pb.ReadRowsRequest(namespace="x", table="t")):
                pass
        assert rpc_error_details(exc.value).reason == "RATE_LIMITED"
        assert refusals("rate") == before + 2

        # Health (and reflection) are exempt: probes and operators still get their answer.
        health = health_pb2_grpc.HealthStub(stub.channel)
        for _ in range(10):
            answer = await health.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # The refused call created nothing.
    async with started(backend) as stub:
        assert await namespaces(stub) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_the_rate_limit_is_per_principal(backend: Settings) -> None:
    busy_key, busy = new_api_key("busy", "admin", None)
    calm_key, calm = new_api_key("calm", "viewer", None)
    settings = backend.model_copy(
        update={
            "auth": AuthSettings(api_keys=(busy, calm)),
            "quotas": QuotaSettings(calls_per_second=NO_REFILL, burst_calls=2),
        }
    )

    def as_(key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key}"),)

    async with started(settings) as stub:
        request = pb.ListNamespacesRequest()
        for _ in range(2):
            await stub.ListNamespaces(request, metadata=as_(busy_key))
        details = await refused(stub.ListNamespaces(request, metadata=as_(busy_key)))
        assert details.reason == "RATE_LIMITED"
        # Same connection, same address, another principal: its own bucket.
        for _ in range(2):
            await stub.ListNamespaces(request, metadata=as_(calm_key))
        # A caller refused by authentication takes no token from anyone.
        details = await refused(stub.ListNamespaces(request, metadata=as_("lh_wrong")))
        assert details.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_without_authentication_each_client_address_has_a_bucket(
    backend: Settings,
) -> None:
    settings = with_quotas(backend, calls_per_second=NO_REFILL, burst_calls=2)
    async with started(settings) as stub:
        for _ in range(2):
            await stub.ListNamespaces(pb.ListNamespacesRequest())
        details = await refused(stub.ListNamespaces(pb.ListNamespacesRequest()))
        assert details.reason == "RATE_LIMITED"


async def test_the_default_quotas_let_ordinary_use_through(backend: Settings) -> None:
    assert backend.quotas.max_namespaces == 10_000
    assert backend.quotas.max_tables_per_namespace == 10_000
    assert backend.quotas.calls_per_second == 1000
    assert backend.quotas.burst_calls == 2000
    async with started(backend) as stub:
        await stub.CreateNamespace(pb.CreateNamespaceRequest(name="n"))
        await asyncio.gather(
            *(
                stub.CreateTable(pb.CreateTableRequest(namespace="n", table=f"t{i}", schema=SCHEMA))
                for i in range(20)
            )
        )
        assert len(await tables(stub, "n")) == 20
