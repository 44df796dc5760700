"""Secrets never show: not in ``lakehouse config``, logs, errors, /metrics or /readyz.

Every secret setting gets a marker value; the backends they guard are down (closed ports on
127.0.0.1), which is when secrets leak in practice: connection errors quote URLs, drivers put
DSNs in their messages, tracebacks show locals. A real ``lakehouse serve`` process then
answers calls with UNAVAILABLE, and no marker may appear in anything it said: its stdout and
stderr, the status messages and every byte of the trailing metadata (``google.rpc.Status``
details included) of every call, /metrics, /readyz and /healthz.

Authentication is on (a JWT secret, an API key, /metrics behind credentials), so calls carry
credentials, good ones and bad ones (unknown, forged, expired, sent without ``Bearer``):
neither the JWT secret nor any 8 characters in a row of a key or token sent may show either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures.http import HttpResponse, http_get_sync
from fixtures.net import LOOPBACK, free_port
from fixtures.subprocess_coverage import coverage_env
from lakehouse.server.credentials import new_api_key
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import (
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

LAKEHOUSE = Path(sys.executable).parent / "lakehouse"
START_TIMEOUT_SECONDS = 60.0
CALL_TIMEOUT_SECONDS = 30.0

CATALOG_PASSWORD = "Hunter2CatalogPw"
JOBS_PASSWORD = "JobsDbPwMarker"
S3_SECRET = "S3SecretKeyMarker0123456789"
S3_KEY_ID = "AKIAKEYIDMARKER"
TRINO_PASSWORD = "TrinoPwMarker"
TRINO_TOKEN = "TrinoTokenMarker.eyJhbGciOiJIUzI1NiJ9"
REST_CREDENTIAL = "rest-client:RestClientSecretMarker"
REST_TOKEN = "RestBearerTokenMarker"
JWT_SECRET = "JwtSecretMarker-q7Rv2pLx9sKd4mNw8bYt3cZh"
#: The configured API key (the server gets only its hash) and one that is not configured.
API_KEY, API_KEY_ENTRY = new_api_key("secrets-test", "admin")
UNKNOWN_KEY = new_api_key("nobody", "admin")[0]


def down_port() -> int:
    """A port nothing listens on (free a moment ago): connections to it are refused."""
    return free_port()


def secret_env(port: int) -> dict[str, str]:
    """Every secret of a SQL-catalog deployment, each guarding a backend that is down."""
    return {
        "LAKEHOUSE_CATALOG__URI": (
            f"postgresql+psycopg2://lakehouse:{CATALOG_PASSWORD}@{LOOPBACK}:{port}/catalog"
        ),
        "LAKEHOUSE_CATALOG__WAREHOUSE": "s3://warehouse/tables",
        "LAKEHOUSE_S3__ENDPOINT_URL": f"http://{LOOPBACK}:{port}",
        "LAKEHOUSE_S3__ACCESS_KEY_ID": S3_KEY_ID,
        "LAKEHOUSE_S3__SECRET_ACCESS_KEY": S3_SECRET,
        "LAKEHOUSE_S3__CONNECT_TIMEOUT_SECONDS": "1",
        "LAKEHOUSE_JOBS__DATABASE_URI": (
            f"postgresql+psycopg2://jobs:{JOBS_PASSWORD}@{LOOPBACK}:{port}/jobs"
        ),
        "LAKEHOUSE_TRINO__ENDPOINT": f"https://{LOOPBACK}:{port}",
        "LAKEHOUSE_TRINO__PASSWORD": TRINO_PASSWORD,
        "LAKEHOUSE_TRINO__REQUEST_TIMEOUT_SECONDS": "2",
        "LAKEHOUSE_AUTH__JWT_SECRET": JWT_SECRET,
        "LAKEHOUSE_AUTH__API_KEYS": json.dumps([API_KEY_ENTRY.model_dump(exclude_none=True)]),
        "LAKEHOUSE_AUTH__PUBLIC_METRICS": "false",
    }


#: What must never appear (the S3 key id is not a secret by itself, but it is marked as one).
SECRETS = [CATALOG_PASSWORD, JOBS_PASSWORD, S3_SECRET, S3_KEY_ID, TRINO_PASSWORD, JWT_SECRET]
FRAGMENT = 8


def token(secret: str = JWT_SECRET, **claims: object) -> str:
    """An HS256 JWT of an admin, valid for 10 minutes unless ``claims`` say otherwise."""
    now = int(time.time())
    return jwt.encode({"sub": "jwt-admin", "role": "admin", "exp": now + 600} | claims, secret)


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


def base_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **coverage_env(),
    }


def assert_no_secret(
    where: str, text: str | bytes, secrets: Sequence[str] = SECRETS, sent: Sequence[str] = ()
) -> None:
    """No secret appears whole, and nothing of a credential ``sent`` appears at all."""
    data = text.encode() if isinstance(text, str) else text
    for secret in secrets:
        assert secret.encode() not in data, f"{secret!r} leaked in {where}:\n{data[:3000]!r}"
    for credential in sent:
        for start in range(len(credential) - FRAGMENT + 1):
            piece = credential[start : start + FRAGMENT].encode()
            assert piece not in data, f"{piece!r} of a credential leaked in {where}"


# -- lakehouse config ----------------------------------------------------------------------------


def run_config(env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(LAKEHOUSE), "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert_no_secret("`lakehouse config` stderr", done.stderr)
    return done.stdout


def test_lakehouse_config_masks_every_secret(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), **secret_env(down_port())}
    out = run_config(env)
    assert_no_secret("`lakehouse config`", out)
    shown = json.loads(out)
    assert shown["catalog"]["uri"] == "**********"
    assert shown["effective"]["catalog_uri"] == "**********"
    assert shown["s3"]["secret_access_key"] == "**********"
    assert shown["jobs"]["database_uri"] == "**********"
    assert shown["trino"]["password"] == "**********"
    assert shown["auth"]["jwt_secret"] == "**********"
    assert shown["auth"]["api_keys"][0]["sha256"] == API_KEY_ENTRY.sha256  # a hash, no key
    assert_no_secret("`lakehouse config`", out, sent=[API_KEY])


def test_lakehouse_config_masks_tokens_and_secrets_from_files(tmp_path: Path) -> None:
    # A REST catalog (credential and token) and a Trino bearer token, the token from a file.
    token_file = tmp_path / "trino-token"
    token_file.write_text(TRINO_TOKEN + "\n")
    env = {
        **base_env(tmp_path),
        "LAKEHOUSE_CATALOG__TYPE": "rest",
        "LAKEHOUSE_CATALOG__URI": f"http://{LOOPBACK}:{down_port()}/catalog",
        "LAKEHOUSE_CATALOG__CREDENTIAL": REST_CREDENTIAL,
        "LAKEHOUSE_CATALOG__TOKEN": REST_TOKEN,
        "LAKEHOUSE_JOBS__DATABASE_URI": (
            f"postgresql+psycopg2://jobs:{JOBS_PASSWORD}@{LOOPBACK}:1/jobs"
        ),
        "LAKEHOUSE_TRINO__ENDPOINT": f"https://{LOOPBACK}:1",
        "LAKEHOUSE_TRINO__ACCESS_TOKEN_FILE": str(token_file),
    }
    out = run_config(env)
    secrets = [REST_CREDENTIAL, "RestClientSecretMarker", REST_TOKEN, TRINO_TOKEN, JOBS_PASSWORD]
    assert_no_secret("`lakehouse config`", out, secrets)
    shown = json.loads(out)
    assert shown["catalog"]["credential"] == "**********"
    assert shown["catalog"]["token"] == "**********"
    assert shown["trino"]["access_token"] == "**********"


# -- a real server whose backends are down -------------------------------------------------------


class Server:
    """``lakehouse serve`` as a child process; its ports come from its ``serving`` line."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.stdout = workdir / "server.stdout.log"
        self.stderr = workdir / "server.stderr.log"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(LAKEHOUSE), "serve"],
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.grpc_port = self.http_port = 0
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and not self.grpc_port:
            assert self.proc.poll() is None, f"server exited early:\n{self.logs()}"
            for line in self.stdout.read_text(errors="replace").splitlines():
                entry = json.loads(line) if line.startswith("{") else {}
                if entry.get("msg") == "serving":
                    self.grpc_port, self.http_port = entry["grpc_port"], entry["http_port"]
            time.sleep(0.1)
        assert self.grpc_port, f"no serving line in time:\n{self.logs()}"

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(params=["all_down", "object_store_down"])
def down_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server whose backends are all down, or one on a SQLite catalog and job store (that
    work) whose object store is down, so that calls get as far as S3 with its credentials."""
    secrets = secret_env(down_port())
    if request.param == "object_store_down":
        del secrets["LAKEHOUSE_CATALOG__URI"], secrets["LAKEHOUSE_JOBS__DATABASE_URI"]
    env = {
        **base_env(tmp_path),
        **secrets,
        "LAKEHOUSE_GRPC_HOST": LOOPBACK,
        "LAKEHOUSE_GRPC_PORT": "0",
        "LAKEHOUSE_HTTP_HOST": LOOPBACK,
        "LAKEHOUSE_HTTP_PORT": "0",
        "LAKEHOUSE_DATA_DIR": str(tmp_path / "data"),
        "LAKEHOUSE_LOG_LEVEL": "DEBUG",  # the most talkative the logs get
        "LAKEHOUSE_HEALTH_CHECK_TIMEOUT_SECONDS": "2",
        "LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS": "0",
        "LAKEHOUSE_SHUTDOWN_GRACE_SECONDS": "2",
    }
    server = Server(tmp_path, env)
    try:
        yield server
    finally:
        server.stop()


def everything_said(err: grpc.RpcError) -> bytes:
    """The code, message and every trailing metadata value of a failed call, as bytes."""
    said = [err.code().name.encode(), (err.details() or "").encode()]  # type: ignore[attr-defined]
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        said += [key.encode(), value if isinstance(value, bytes) else value.encode()]
    return b"\n".join(said)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_no_secret_leaks_from_a_server_whose_backends_are_down(down_server: Server) -> None:
    target = f"{LOOPBACK}:{down_server.grpc_port}"
    long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
    rows = rows_pb2.JsonRows()
    rows.rows.add().update({"id": 1})
    answers: dict[str, bytes] = {}
    key, jwt_admin = bearer(API_KEY), bearer(token())
    # Refused credentials: each is a secret of its own that a careless log line would keep.
    refused = {
        "unknown key": bearer(UNKNOWN_KEY),
        "key without Bearer": (("authorization", API_KEY),),
        "forged JWT": bearer(token("AnotherSecretOfMoreThan32BytesForgery")),
        "expired JWT": bearer(token(exp=int(time.time()) - 600)),
    }
    sent = [API_KEY, UNKNOWN_KEY] + [
        value.split()[-1] for metadata in (jwt_admin, *refused.values()) for _, value in metadata
    ]
    with grpc.insecure_channel(target) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        sql = job_pb2.SqlJobSpec(statement="SELECT 1")
        trino = job_pb2.SqlJobSpec(statement="SELECT 1", engine=job_pb2.SQL_ENGINE_TRINO)
        calls = {
            "CreateNamespace": lambda: tables.CreateNamespace(
                tpb.CreateNamespaceRequest(name="sales"),
                metadata=key,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            "ListNamespaces": lambda: tables.ListNamespaces(
                tpb.ListNamespacesRequest(), metadata=jwt_admin, timeout=CALL_TIMEOUT_SECONDS
            ),
            "CreateTable": lambda: tables.CreateTable(
                tpb.CreateTableRequest(
                    namespace="sales",
                    table="orders",
                    schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=long)]),
                ),
                metadata=key,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            "GetTable": lambda: tables.GetTable(
                tpb.GetTableRequest(namespace="sales", table="orders"),
                metadata=jwt_admin,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            "RegisterTable": lambda: tables.RegisterTable(
                tpb.RegisterTableRequest(
                    namespace="sales",
                    table="old",
                    metadata_location="s3://warehouse/tables/old/metadata/v1.metadata.json",
                ),
                metadata=key,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            "ReadRows": lambda: list(
                tables.ReadRows(
                    tpb.ReadRowsRequest(namespace="sales", table="orders"),
                    metadata=jwt_admin,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            ),
            "WriteRows": lambda: ingest.WriteRows(
                ipb.WriteRowsRequest(namespace="sales", table="orders", json_rows=rows),
                metadata=key,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            "CreateJob": lambda: jobs.CreateJob(
                jpb.CreateJobRequest(spec=job_pb2.JobSpec(sql=sql)),
                metadata=jwt_admin,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            "CreateJob/trino": lambda: jobs.CreateJob(
                jpb.CreateJobRequest(spec=job_pb2.JobSpec(sql=trino)),
                metadata=key,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
            "ListJobs": lambda: jobs.ListJobs(
                jpb.ListJobsRequest(), metadata=jwt_admin, timeout=CALL_TIMEOUT_SECONDS
            ),
        }
        for name, call in calls.items():
            try:
                call()
            except grpc.RpcError as err:
                answers[name] = everything_said(err)
            else:
                answers[name] = b"OK"  # the backend it needs is up (SQLite)
        refusals: dict[str, bytes] = {}
        for label, metadata in refused.items():
            try:
                tables.CreateNamespace(
                    tpb.CreateNamespaceRequest(name="sales"),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            except grpc.RpcError as err:
                refusals[label] = everything_said(err)
            else:
                refusals[label] = b"OK"
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_SECONDS
        )
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING

    assert {label: said.split(b"\n")[:2] for label, said in refusals.items()} == {
        label: [b"UNAUTHENTICATED", b"invalid credentials"] for label in refused
    }
    codes = {name: said.split(b"\n", 1)[0].decode() for name, said in answers.items()}
    # The calls reached the backends that are down, and failed deliberately.
    assert set(codes.values()) <= {"UNAVAILABLE", "NOT_FOUND", "OK"}, codes
    assert codes["CreateTable"] == "UNAVAILABLE", answers["CreateTable"]
    assert codes["RegisterTable"] == "UNAVAILABLE", answers["RegisterTable"]
    assert codes["CreateJob/trino"] == "UNAVAILABLE", answers["CreateJob/trino"]
    for name, said in answers.items() | refusals.items():
        assert_no_secret(f"the answer to {name}", said, sent=sent)

    http = f"http://{LOOPBACK}:{down_server.http_port}"
    readyz = http_get_sync(f"{http}/readyz")
    assert readyz.status == 503
    metrics = http_get_with(f"{http}/metrics", f"Bearer {API_KEY}")
    assert metrics.status == 200 and b"grpc_server_handled_total" in metrics.body
    for label, metadata in refused.items():
        refused_scrape = http_get_with(f"{http}/metrics", metadata[0][1])
        assert refused_scrape.status == 401, label
        assert_no_secret(f"/metrics refused ({label})", refused_scrape.body, sent=sent)
    assert http_get_sync(f"{http}/metrics").status == 401
    for path, response in [
        ("/readyz", readyz),
        ("/healthz", http_get_sync(f"{http}/healthz")),
        ("/metrics", metrics),
        ("/metrics with a JWT", http_get_with(f"{http}/metrics", jwt_admin[0][1])),
    ]:
        assert_no_secret(path, response.body, sent=sent)

    down_server.stop()
    logs = down_server.logs()
    assert "unavailable" in logs.lower()  # the failures were logged, secrets masked
    assert logs.count('"msg": "authentication failed"') == 2 * len(refused) + 1
    assert_no_secret("the server's logs", logs, sent=sent)


def http_get_with(url: str, authorization: str) -> HttpResponse:
    """GET ``url`` with an ``Authorization`` header; error statuses are returned."""
    request = urllib.request.Request(url, headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return HttpResponse(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return HttpResponse(err.code, err.headers, err.read())
