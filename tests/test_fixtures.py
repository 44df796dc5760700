"""The test infrastructure itself works: real PostgreSQL, real S3 over HTTP, real tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
import sqlalchemy
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from fixtures.grpc_errors import rpc_error_details
from fixtures.s3 import create_bucket
from fixtures.tools import run_tool

# -- environment isolation ---------------------------------------------------------------------


def test_environment_is_isolated() -> None:
    leaked = [k for k in os.environ if k.startswith(("LAKEHOUSE_", "PYICEBERG_"))]
    assert leaked == []
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    assert aws.pop("AWS_EC2_METADATA_DISABLED") == "true"
    assert set(aws) <= {"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"}
    assert not any(Path(p).exists() for p in aws.values())
    assert list(Path.home().iterdir()) == []


def test_isolation_is_per_test_even_after_a_test_sets_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAKEHOUSE_GRPC_PORT", "1")
    from lakehouse.config import Settings

    assert Settings().grpc_port == 1


def test_a_following_test_does_not_see_it() -> None:
    assert "LAKEHOUSE_GRPC_PORT" not in os.environ


# -- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_url_connects_over_loopback_tcp(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg2://")
    assert "@127.0.0.1:" in postgres_url
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one()
            addr = conn.execute(sqlalchemy.text("SELECT inet_server_addr()::text")).scalar_one()
            listen = conn.execute(sqlalchemy.text("SHOW listen_addresses")).scalar_one()
    finally:
        engine.dispose()
    assert int(str(version).split(".")[0]) >= 13
    assert str(addr).startswith("127.0.0.1")
    assert listen == "127.0.0.1"


def test_postgres_requires_the_password(postgres_url: str) -> None:
    wrong = sqlalchemy.engine.make_url(postgres_url).set(password="wrong")
    engine = sqlalchemy.create_engine(wrong)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication"):
            engine.connect()
    finally:
        engine.dispose()


def _write_and_read(url: str) -> list[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE IF NOT EXISTS probe (name text)"))
            conn.execute(sqlalchemy.text("INSERT INTO probe VALUES ('x')"))
        with engine.connect() as conn:
            return list(conn.execute(sqlalchemy.text("SELECT name FROM probe")).scalars())
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_postgres_database_per_test_is_fresh(postgres_database_url: str, run: int) -> None:
    # Both runs see exactly their own row: the database is new for each test.
    assert _write_and_read(postgres_database_url) == ["x"]


def test_postgres_database_is_dropped_even_with_open_connections(
    postgres_cluster: object,
) -> None:
    from fixtures.postgres import PostgresCluster

    assert isinstance(postgres_cluster, PostgresCluster)
    name = postgres_cluster.create_database()
    engine = sqlalchemy.create_engine(postgres_cluster.url(name))
    conn = engine.connect()  # left open on purpose
    try:
        postgres_cluster.drop_database(name)
        admin = sqlalchemy.create_engine(postgres_cluster.url())
        try:
            with admin.connect() as c:
                names = c.execute(sqlalchemy.text("SELECT datname FROM pg_database")).scalars()
                assert name not in list(names)
        finally:
            admin.dispose()
    finally:
        conn.invalidate()
        engine.dispose()


# -- S3 (moto server over HTTP) ----------------------------------------------------------------


def test_s3_put_and_get_over_http(s3_endpoint: str, s3_bucket: str, s3_client: object) -> None:
    assert s3_endpoint.startswith("http://127.0.0.1:")
    client = s3_client
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")  # type: ignore[attr-defined]
    body = client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read()  # type: ignore[attr-defined]
    assert body == b"hello"
    listed = client.list_objects_v2(Bucket=s3_bucket)  # type: ignore[attr-defined]
    assert [o["Key"] for o in listed["Contents"]] == ["a/b.txt"]


def test_s3_buckets_are_fresh_per_test(s3_endpoint: str, s3_bucket: str, s3_client: object) -> None:
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0  # type: ignore[attr-defined]
    other = create_bucket(s3_endpoint)
    assert other != s3_bucket


async def test_s3_is_reachable_with_aioboto3(s3_endpoint: str, s3_bucket: str) -> None:
    import aioboto3

    session = aioboto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    async with session.client("s3", endpoint_url=s3_endpoint) as client:
        await client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
        resp = await client.get_object(Bucket=s3_bucket, Key="k")
        async with resp["Body"] as stream:
            assert await stream.read() == b"v"


# -- backends ----------------------------------------------------------------------------------


def test_backend_settings(backend: object, request: pytest.FixtureRequest) -> None:
    from lakehouse.config import Settings

    assert isinstance(backend, Settings)
    assert backend.grpc_host == backend.http_host == "127.0.0.1"
    assert backend.grpc_port == backend.http_port == 0
    if request.node.callspec.params["backend"] == "local":
        assert backend.catalog_uri.startswith("sqlite:///")
        assert backend.warehouse.startswith("file:///")
    else:
        assert backend.catalog_uri.startswith("postgresql+psycopg2://")
        assert backend.warehouse.startswith("s3://test-")
        assert backend.s3.use_path_style
        assert backend.s3.endpoint_url is not None
        assert backend.s3.endpoint_url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_backend_can_be_narrowed(backend: object) -> None:
    from lakehouse.config import Settings

    assert isinstance(backend, Settings)
    assert backend.catalog.uri is None


# -- tools -------------------------------------------------------------------------------------


def test_grpcurl_is_the_real_binary(grpcurl: Path) -> None:
    with grpcurl.open("rb") as f:
        assert f.read(4) == b"\x7fELF"
    result = run_tool([grpcurl, "-version"])
    assert result.returncode == 0, result.stderr
    assert "grpcurl" in (result.stdout + result.stderr)


def test_promtool_checks_metrics(promtool: Path) -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    Counter("probe_requests", "Requests seen by the probe.", registry=registry).inc()
    good = run_tool([promtool, "check", "metrics"], input=generate_latest(registry).decode())
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run_tool([promtool, "check", "metrics"], input="probe_total{ 1\n")
    assert bad.returncode != 0


def test_run_tool_bounds_the_wait() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_tool(["sleep", "5"], timeout=0.2)


# -- rpc_error_details against a real grpc.aio server ------------------------------------------


def _failing_handler() -> grpc.GenericRpcHandler:
    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        info = error_details_pb2.ErrorInfo(
            reason="INVALID_NAME", domain="lakehouse.v1", metadata={"field": "name"}
        )
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="name", description="empty"),
                error_details_pb2.BadRequest.FieldViolation(field="namespace", description="bad"),
            ]
        )
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="name: empty")
        for detail in (info, bad, retry):
            status.details.add().Pack(detail)
        s = rpc_status.to_status(status)
        await context.abort(s.code, s.details, s.trailing_metadata)
        raise AssertionError("unreachable")

    async def plain(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "nothing")
        raise AssertionError("unreachable")

    return grpc.method_handlers_generic_handler(
        "probe.Probe",
        {
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Plain": grpc.unary_unary_rpc_method_handler(plain),
        },
    )


async def test_rpc_error_details_decodes_status_details() -> None:
    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers((_failing_handler(),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ch.unary_unary("/probe.Probe/Fail")(b"", timeout=5)
            details = rpc_error_details(caught.value)
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.message == "name: empty"
            assert (details.reason, details.domain) == ("INVALID_NAME", "lakehouse.v1")
            assert details.metadata == {"field": "name"}
            assert details.error_info_count == 1
            assert details.field_violations == [("name", "empty"), ("namespace", "bad")]
            assert details.violated_fields == ["name", "namespace"]
            assert details.retry_delay_seconds == 2.0

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ch.unary_unary("/probe.Probe/Plain")(b"", timeout=5)
            plain = rpc_error_details(caught.value)
            assert plain.code == grpc.StatusCode.NOT_FOUND
            assert plain.status is None
            assert plain.reason is None
            assert plain.field_violations == []
    finally:
        await srv.stop(None)


async def test_async_helpers_keep_the_event_loop_serving() -> None:
    """grpcurl and HTTP clients run in threads, so an in-process aiohttp app still answers."""
    from aiohttp import web

    from fixtures.http import http_get
    from fixtures.tools import arun_tool

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/hi", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        ok = await http_get(f"http://127.0.0.1:{port}/hi")
        assert (ok.status, ok.text) == (200, "hi")
        missing = await http_get(f"http://127.0.0.1:{port}/nope")
        assert missing.status == 404
        curl_like = await arun_tool(["python3", "-c", "print('x')"])
        assert curl_like.stdout == "x\n"
    finally:
        await runner.cleanup()
