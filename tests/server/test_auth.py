"""Authentication, roles, namespace grants and the audit log, against a real server.

One server configured with every kind of credential (API keys from the settings and from a
YAML file, an HS256 secret, an RSA PEM key, an EC JWKS) serves most tests; the generated stubs
call it over a real channel. Credential checks that need no network (JWT edge cases, the mTLS
mapping, key files) are unit tests of ``lakehouse.server.credentials``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
import pytest_asyncio
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fixtures.certs import TestCA
from fixtures.contract import contract_methods
from fixtures.grpc_errors import rpc_error_details
from fixtures.net import LOOPBACK
from fixtures.rpc_log import logged_rpc_lines
from lakehouse.cli import run as cli_run
from lakehouse.config import (
    ApiKey,
    AuthSettings,
    ConfigError,
    Settings,
    TlsSettings,
    load_settings,
)
from lakehouse.logs import JsonFormatter
from lakehouse.server.app import LakehouseServer
from lakehouse.server.credentials import (
    Authenticator,
    CredentialError,
    JwtVerifier,
    load_api_keys_file,
    load_jwks,
    load_public_keys,
    new_api_key,
    principal_from_peer,
)
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

ISSUER = "https://idp.example.test"
AUDIENCE = "lakehouse"
SECRET = "a-shared-secret-of-more-than-32-bytes!"
EC_KID = "ec-1"
STOP_TIMEOUT_SECONDS = 30
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)


# -- Keys and tokens -----------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Everything the auth server is configured with, and the secrets to call it."""

    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    pem_file: Path
    jwks_file: Path
    api_keys_file: Path
    settings_keys: tuple[ApiKey, ...]
    plain: dict[str, str]  # role or "limited" -> API key

    def auth(self, **overrides: Any) -> AuthSettings:
        values: dict[str, Any] = {
            "api_keys": self.settings_keys,
            "api_keys_file": self.api_keys_file,
            "jwt_secret": SECRET,
            "jwt_public_key_file": self.pem_file,
            "jwt_jwks_file": self.jwks_file,
            "jwt_issuer": ISSUER,
            "jwt_audience": AUDIENCE,
            "jwt_namespaces_claim": "namespaces",
        }
        return AuthSettings(**(values | overrides))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("auth")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem_file = folder / "jwt-public.pem"
    pem_file.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    jwks_file = folder / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [{**jwk, "kid": EC_KID, "alg": "ES256"}]}))
    plain: dict[str, str] = {}
    entries: dict[str, ApiKey] = {}
    for label, role, namespaces in [
        ("viewer", "viewer", None),
        ("developer", "developer", None),
        ("admin", "admin", None),
        ("limited", "developer", ["sales"]),
    ]:
        plain[label], entries[label] = new_api_key(f"{label}-key", role, namespaces)  # type: ignore[arg-type]
    # Two from the settings (as LAKEHOUSE_AUTH__API_KEYS would give them), two from a file.
    api_keys_file = folder / "api-keys.yaml"
    api_keys_file.write_text(
        yaml.safe_dump([entries[k].model_dump(exclude_none=True) for k in ("admin", "limited")])
    )
    return Keys(
        rsa_key,
        ec_key,
        pem_file,
        jwks_file,
        api_keys_file,
        (entries["viewer"], entries["developer"]),
        plain,
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "alice",
        "role": "developer",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    } | overrides


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    """A token built by hand, for the forgeries PyJWT refuses to make."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}."


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# -- Servers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[LakehouseServer, grpc.aio.Channel]]:
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
            yield server, channel
    finally:
        await asyncio.wait_for(server.stop(), STOP_TIMEOUT_SECONDS)


@pytest_asyncio.fixture
async def auth_channel(local_settings: Settings, keys: Keys) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a server with every kind of credential configured."""
    settings = local_settings.model_copy(update={"auth": keys.auth()})
    async with started(settings) as (_, channel):
        yield channel


@dataclass(frozen=True)
class Stubs:
    tables: Any
    ingest: Any
    jobs: Any

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(
            table_service_pb2_grpc.TableServiceStub(channel),
            ingest_service_pb2_grpc.IngestServiceStub(channel),
            job_service_pb2_grpc.JobServiceStub(channel),
        )


async def code_of(call: Any) -> grpc.StatusCode:
    """Runs a call (unary or streaming) to the end; its status code."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return exc.value


# -- The role matrix -----------------------------------------------------------------------


def _spec(**kind: Any) -> jpb.CreateJobRequest:
    return jpb.CreateJobRequest(spec=job_pb2.JobSpec(**kind))


#: A write in a mode that removes rows needs ingest.write and tables.change_rows: a refusal
#: names the first of them the caller's role lacks.
REMOVES_ROWS = {"viewer": "ingest.write", "developer": "tables.change_rows"}
#: The write modes that remove rows, and a request field each needs to be valid.
REMOVING_MODES: list[tuple[str, Any, dict[str, Any]]] = [
    ("OVERWRITE", ingest_pb2.WRITE_MODE_OVERWRITE, {"overwrite_filter": "true"}),
    ("OVERWRITE_PARTITIONS", ingest_pb2.WRITE_MODE_OVERWRITE_PARTITIONS, {}),
    ("UPSERT", ingest_pb2.WRITE_MODE_UPSERT, {}),
    ("unknown mode 99", 99, {}),  # a newer client's mode: refused unless rows may go
]


def _writes() -> list[tuple[str, str, Any, str, str | dict[str, str]]]:
    """WriteRows and AppendRows in every write mode."""
    rows = []
    for method, request_type in [
        ("WriteRows", ipb.WriteRowsRequest),
        ("AppendRows", ipb.AppendRowsRequest),
    ]:
        rows.append(
            (
                "ingest",
                method,
                request_type(namespace="nope", table="t", write_mode=ingest_pb2.WRITE_MODE_APPEND),
                "developer",
                "ingest.write",
            )
        )
        rows.extend(
            (
                "ingest",
                method,
                request_type(namespace="nope", table="t", write_mode=mode, **fields),
                "admin",
                REMOVES_ROWS,
            )
            for _, mode, fields in REMOVING_MODES
        )
    return rows


#: Every RPC (and every CreateJob kind and write mode) with a minimal request that changes
#: nothing, the least role allowed to call it, and the permission a refusal names (by role
#: when it depends on the role). Written from the role table of docs/security.md,
#: independently of lakehouse.server.permissions.
MATRIX: list[tuple[str, str, Any, str, str | dict[str, str]]] = [
    ("tables", "CreateNamespace", tpb.CreateNamespaceRequest(name=""), "developer", "tables.write"),
    ("tables", "GetNamespace", tpb.GetNamespaceRequest(name="nope"), "viewer", "tables.read"),
    ("tables", "ListNamespaces", tpb.ListNamespacesRequest(), "viewer", "tables.read"),
    (
        "tables",
        "UpdateNamespaceProperties",
        tpb.UpdateNamespacePropertiesRequest(name="nope"),
        "developer",
        "tables.write",
    ),
    (
        "tables",
        "DeleteNamespace",
        tpb.DeleteNamespaceRequest(name="nope"),
        "admin",
        "tables.delete",
    ),
    (
        "tables",
        "CreateTable",
        tpb.CreateTableRequest(namespace="nope"),
        "developer",
        "tables.write",
    ),
    (
        "tables",
        "GetTable",
        tpb.GetTableRequest(namespace="nope", table="t"),
        "viewer",
        "tables.read",
    ),
    ("tables", "ListTables", tpb.ListTablesRequest(namespace="nope"), "viewer", "tables.read"),
    (
        "tables",
        "DeleteTable",
        tpb.DeleteTableRequest(namespace="nope", table="t", purge=True),
        "admin",
        "tables.delete",
    ),
    (
        "tables",
        "RenameTable",
        tpb.RenameTableRequest(namespace="nope", table="t", new_table="u"),
        "developer",
        "tables.write",
    ),
    (
        "tables",
        "RegisterTable",
        tpb.RegisterTableRequest(namespace="nope", table="t"),
        "admin",
        "tables.register",
    ),
    (
        "tables",
        "UpdateTable",
        tpb.UpdateTableRequest(namespace="nope", table="t"),
        "developer",
        "tables.write",
    ),
    (
        "tables",
        "ListSnapshots",
        tpb.ListSnapshotsRequest(namespace="nope", table="t"),
        "viewer",
        "tables.read",
    ),
    (
        "tables",
        "GetSnapshot",
        tpb.GetSnapshotRequest(namespace="nope", table="t", snapshot_id=1),
        "viewer",
        "tables.read",
    ),
    (
        "tables",
        "RollbackTable",
        tpb.RollbackTableRequest(namespace="nope", table="t", snapshot_id=1),
        "admin",
        "tables.rollback",
    ),
    (
        "tables",
        "ReadRows",
        tpb.ReadRowsRequest(namespace="nope", table="t"),
        "viewer",
        "tables.read",
    ),
    (
        "tables",
        "CreateReadSession",
        tpb.CreateReadSessionRequest(namespace="nope", table="t"),
        "viewer",
        "tables.read",
    ),
    (
        "ingest",
        "AppendRows",
        ipb.AppendRowsRequest(namespace="nope", table="t"),
        "developer",
        "ingest.write",
    ),
    (
        "ingest",
        "WriteRows",
        ipb.WriteRowsRequest(namespace="nope", table="t"),
        "developer",
        "ingest.write",
    ),
    (
        "tables",
        "DeleteRows",
        tpb.DeleteRowsRequest(namespace="nope", table="t", row_filter="true"),
        "admin",
        "tables.change_rows",
    ),
    (
        "tables",
        "CreateBranch",
        tpb.CreateBranchRequest(namespace="nope", table="t", name="audit"),
        "developer",
        "tables.write",
    ),
    (
        "tables",
        "CreateTag",
        tpb.CreateTagRequest(namespace="nope", table="t", name="v1"),
        "developer",
        "tables.write",
    ),
    (
        "tables",
        "ListRefs",
        tpb.ListRefsRequest(namespace="nope", table="t"),
        "viewer",
        "tables.read",
    ),
    (
        "tables",
        "GetTableHealth",
        tpb.GetTableHealthRequest(namespace="nope", table="t"),
        "viewer",
        "tables.read",
    ),
    (
        "tables",
        "WatchTable",
        tpb.WatchTableRequest(namespace="nope", table="t"),
        "viewer",
        "tables.read",
    ),
    (
        "tables",
        "DeleteRef",
        tpb.DeleteRefRequest(namespace="nope", table="t", name="v1"),
        "admin",
        "tables.delete",
    ),
    (
        "tables",
        "PublishBranch",
        tpb.PublishBranchRequest(namespace="nope", table="t", branch="audit"),
        "developer",
        "tables.write",
    ),
    *_writes(),
    (
        "ingest",
        "GetWriter",
        ipb.GetWriterRequest(namespace="nope", table="t", writer_id="w"),
        "viewer",
        "tables.read",
    ),
    ("jobs", "CreateJob", _spec(sql=job_pb2.SqlJobSpec()), "developer", "jobs.create"),
    (
        "jobs",
        "CreateJob",
        _spec(compact_table=job_pb2.CompactTableJobSpec(namespace="nope", table="t")),
        "developer",
        "jobs.create",
    ),
    (
        "jobs",
        "CreateJob",
        _spec(import_files=job_pb2.ImportFilesJobSpec(namespace="nope", table="t")),
        "developer",
        "jobs.create",
    ),
    (
        "jobs",
        "CreateJob",
        _spec(expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(namespace="nope", table="t")),
        "admin",
        "maintenance.destructive",
    ),
    (
        "jobs",
        "CreateJob",
        _spec(remove_orphan_files=job_pb2.RemoveOrphanFilesJobSpec(namespace="nope", table="t")),
        "admin",
        "maintenance.destructive",
    ),
    ("jobs", "GetJob", jpb.GetJobRequest(job_id="nope"), "viewer", "jobs.read"),
    ("jobs", "ListJobs", jpb.ListJobsRequest(), "viewer", "jobs.read"),
    ("jobs", "CancelJob", jpb.CancelJobRequest(job_id="nope"), "developer", "jobs.cancel"),
    ("jobs", "WatchJob", jpb.WatchJobRequest(job_id="nope"), "viewer", "jobs.read"),
    ("jobs", "DeleteJob", jpb.DeleteJobRequest(job_id="nope"), "admin", "jobs.delete"),
]
ROLES = ["viewer", "developer", "admin"]
SERVICES = {
    "tables": "lakehouse.v1.TableService",
    "ingest": "lakehouse.v1.IngestService",
    "jobs": "lakehouse.v1.JobService",
}


def invoke(stubs: Stubs, service: str, method: str, request: Any, metadata: Any) -> Any:
    rpc = getattr(getattr(stubs, service), method)
    if method == "AppendRows":  # the one client stream
        return rpc(iter([request]), metadata=metadata, timeout=15)
    return rpc(request, metadata=metadata, timeout=15)


def test_the_matrix_covers_every_rpc() -> None:
    covered = {f"/{SERVICES[s]}/{m}" for s, m, *_ in MATRIX}
    assert covered == set(contract_methods())


async def test_every_rpc_for_every_caller(auth_channel: grpc.aio.Channel, keys: Keys) -> None:
    stubs = Stubs.on(auth_channel)
    callers: dict[str, Any] = {role: bearer(keys.plain[role]) for role in ROLES}
    callers["no credentials"] = ()
    callers["bad token"] = bearer("lh_" + "x" * 43)
    callers["expired JWT"] = bearer(hs256(role="admin", exp=int(time.time()) - 120))
    problems = []
    for service, method, request, least, permission in MATRIX:
        label = method
        if method == "CreateJob":
            label += f"({request.spec.WhichOneof('kind')})"
        elif method in ("WriteRows", "AppendRows"):
            label += f"(write_mode {request.write_mode})"
        for caller, metadata in callers.items():
            call = invoke(stubs, service, method, request, metadata)
            try:
                if hasattr(call, "__aiter__"):
                    async for _ in call:
                        pass
                else:
                    await call
                code, details = grpc.StatusCode.OK, None
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), rpc_error_details(exc)
            if caller in ("no credentials", "bad token", "expired JWT"):
                expected = (
                    "missing credentials" if caller == "no credentials" else "invalid credentials"
                )
                if (
                    code != grpc.StatusCode.UNAUTHENTICATED
                    or details is None
                    or details.message != expected
                ):
                    problems.append(f"{label} by {caller}: {code} {details and details.message}")
                continue
            allowed = ROLES.index(caller) >= ROLES.index(least)
            if allowed and code in REFUSED:
                problems.append(f"{label} by {caller}: refused with {code}")
            if not allowed:
                named = permission if isinstance(permission, str) else permission[caller]
                if code != grpc.StatusCode.PERMISSION_DENIED or details is None:
                    problems.append(f"{label} by {caller}: {code}, expected PERMISSION_DENIED")
                elif (
                    details.reason != "PERMISSION_DENIED"
                    or details.metadata.get("permission") != named
                    or named not in details.message
                ):
                    problems.append(f"{label} by {caller}: {details}")
    assert problems == []


async def test_a_refused_call_changes_nothing(auth_channel: grpc.aio.Channel, keys: Keys) -> None:
    stubs = Stubs.on(auth_channel)
    err = await failure(
        stubs.tables.CreateNamespace(
            tpb.CreateNamespaceRequest(name="sneaky"), metadata=bearer(keys.plain["viewer"])
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await failure(
        stubs.tables.GetNamespace(
            tpb.GetNamespaceRequest(name="sneaky"), metadata=bearer(keys.plain["admin"])
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


#: Bytes that parse as no request message (a field 25 whose varint never ends).
CORRUPT = b"\xca\x01\xff"


async def test_corrupt_request_bytes_are_answered_only_after_authentication(
    auth_channel: grpc.aio.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lakehouse")

    async def send(method: str, metadata: Any = (), *, stream: bool = False) -> Any:
        path = f"/lakehouse.v1.{method}"
        if stream:  # a client stream: AppendRows
            call = auth_channel.stream_stream(path)(iter([CORRUPT]), metadata=metadata, timeout=15)
        elif method.endswith("ReadRows"):
            call = auth_channel.unary_stream(path)(CORRUPT, metadata=metadata, timeout=15)
        else:
            call = auth_channel.unary_unary(path)(CORRUPT, metadata=metadata, timeout=15)
        return rpc_error_details(await failure(call))

    viewer, developer, admin = (bearer(keys.plain[r]) for r in ("viewer", "developer", "admin"))
    for method in ["TableService/DeleteTable", "TableService/ReadRows", "JobService/CreateJob"]:
        anonymous = await send(method)
        assert (anonymous.code, anonymous.message) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "missing credentials",
        ), method
        bad_key = await send(method, bearer("lh_" + "x" * 43))
        assert bad_key.code == grpc.StatusCode.UNAUTHENTICATED, method
    anonymous_stream = await send("IngestService/AppendRows", stream=True)
    assert anonymous_stream.code == grpc.StatusCode.UNAUTHENTICATED

    # A role that may not call the method at all is told so, whatever the bytes...
    denied = await send("TableService/DeleteTable", viewer)
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.metadata["permission"] == "tables.delete"
    # ...CreateJob included, whose permission depends on a spec these bytes do not carry: the
    # least any CreateJob needs.
    denied = await send("JobService/CreateJob", viewer)
    assert (denied.code, denied.metadata["permission"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "jobs.create",
    )
    # Callers let in learn that their bytes are not a request.
    for method, metadata in [
        ("TableService/DeleteTable", admin),
        ("JobService/CreateJob", developer),
        ("TableService/ReadRows", viewer),
    ]:
        malformed = await send(method, metadata)
        assert (malformed.code, malformed.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
        ), method
    malformed = await send("IngestService/AppendRows", developer, stream=True)
    assert malformed.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    if malformed.code == grpc.StatusCode.INVALID_ARGUMENT:  # see test_limits (grpc/grpc#36066)
        assert malformed.reason == "MALFORMED_REQUEST"

    # Refused and mutating calls are audited, corrupt or not.
    outcomes = [
        (a["method"].rsplit("/", 1)[1], a["principal"], a["outcome"])
        for a in audit_lines(caplog)
        if a["method"].endswith(("DeleteTable", "CreateJob"))
    ]
    assert ("DeleteTable", "", "UNAUTHENTICATED") in outcomes
    assert ("DeleteTable", "viewer-key", "PERMISSION_DENIED") in outcomes
    assert ("DeleteTable", "admin-key", "INVALID_ARGUMENT") in outcomes
    assert ("CreateJob", "developer-key", "INVALID_ARGUMENT") in outcomes


# -- Credentials over the wire ---------------------------------------------------------------


async def test_jwts_of_each_kind_and_each_way_to_fail(
    auth_channel: grpc.aio.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lakehouse")
    tables = Stubs.on(auth_channel).tables
    now = int(time.time())
    good = {
        "HS256": hs256(),
        "RS256": jwt.encode(claims(), keys.rsa, algorithm="RS256"),
        "ES256 (JWKS)": jwt.encode(
            claims(role="viewer"), keys.ec, algorithm="ES256", headers={"kid": EC_KID}
        ),
        "role list": hs256(role=["offline_access", "viewer", "developer"]),
    }
    for label, token in good.items():
        reply = await tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=bearer(token))
        assert reply is not None, label

    public_pem = keys.pem_file.read_bytes()
    bad = {
        "expired": hs256(exp=now - 120),
        "not yet valid": hs256(nbf=now + 600),
        "wrong issuer": hs256(iss="https://evil.example"),
        "wrong audience": hs256(aud="another-service"),
        "no audience": jwt.encode(
            {k: v for k, v in claims().items() if k != "aud"}, SECRET, algorithm="HS256"
        ),
        "no exp": jwt.encode(
            {k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"
        ),
        "wrong secret": jwt.encode(claims(), "another-secret-of-more-than-32-bytes", "HS256"),
        "alg not configured": jwt.encode(claims(), SECRET * 2, algorithm="HS512"),
        "alg none": unsigned(claims(), {"alg": "none", "typ": "JWT"}),
        "RS256 key as HS256 secret": _hmac_forgery(claims(), public_pem),
        "unknown kid": jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "x"}),
        "unknown role": hs256(role="superuser"),
        "garbage": "not.a.jwt",
    }
    for label, token in bad.items():
        err = await failure(
            tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=bearer(token))
        )
        details = rpc_error_details(err)
        assert (details.code, details.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
        ), label
        assert details.message == "invalid credentials", label  # no hint of what failed

    failures = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert len(failures) == len(bad)
    reasons = " ".join(str(r.__dict__["reason"]) for r in failures)
    assert "expired" in reasons and "audience" in reasons.lower()  # the operator learns why
    assert {r.levelno for r in failures} == {logging.INFO}
    assert_nothing_of_logged(caplog, [*good.values(), *bad.values()])


def _hmac_forgery(payload: dict[str, Any], public_pem: bytes) -> str:
    """HS256 "signed" with the server's RSA public key: the algorithm-confusion attack."""
    unsigned_token = unsigned(payload, {"alg": "HS256", "typ": "JWT"})[:-1]
    signature = hmac.new(public_pem, unsigned_token.encode(), hashlib.sha256).digest()
    return unsigned_token + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def assert_nothing_of_logged(
    caplog: pytest.LogCaptureFixture, sent: list[str], fragment: int = 8
) -> None:
    """No ``fragment`` characters in a row of any credential sent appear in any log record.

    Every captured record counts, whatever its logger and level, as the JSON line it would
    become (message, extra fields, traceback): a prefix of a key logged by mistake is as bad
    as the whole key.
    """
    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for token in sent:
        for start in range(len(token) - fragment + 1):
            piece = token[start : start + fragment]
            assert piece not in logged, f"{piece!r} of a credential sent is in the logs"


async def test_api_keys_right_and_wrong(
    auth_channel: grpc.aio.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    caplog.set_level(logging.DEBUG, logger="lakehouse")
    tables = Stubs.on(auth_channel).tables
    for label in ("viewer", "admin"):  # one from the settings, one from the YAML file
        await tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=bearer(keys.plain[label]))
    wrong = keys.plain["viewer"][:-2] + ("AA" if not keys.plain["viewer"].endswith("AA") else "BB")
    refused = {
        "wrong key": bearer(wrong),
        "no scheme": (("authorization", keys.plain["viewer"]),),
        "Basic": (("authorization", f"Basic {keys.plain['viewer']}"),),
        "unknown scheme": (("authorization", f"{keys.plain['admin']} {keys.plain['viewer']}"),),
        "Bearer only": (("authorization", "Bearer"),),
    }
    for label, metadata in refused.items():
        err = await failure(tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=metadata))
        assert (err.code(), err.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid credentials",
        ), label
    err = await failure(tables.ListNamespaces(tpb.ListNamespacesRequest()))
    assert err.details() == "missing credentials"

    reasons = [
        str(r.__dict__["reason"])
        for r in caplog.records
        if r.getMessage() == "authentication failed"
    ]
    assert len(reasons) == len(refused) + 1
    # The operator still learns what was wrong with the header, without any of its bytes.
    assert any("no scheme, a single word of 46 characters" in r for r in reasons), reasons
    assert any("scheme Basic" in r for r in reasons), reasons
    assert_nothing_of_logged(caplog, [keys.plain["viewer"], keys.plain["admin"], wrong])


async def test_api_key_made_by_the_cli_works(
    local_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_run(["api-key", "create", "--name", "ci-bot", "--role", "viewer", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    key, entry = printed["key"], printed["entry"]
    assert key.startswith("lh_") and len(base64.urlsafe_b64decode(key[3:] + "=")) == 32
    assert entry["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(entry)  # the entry holds the hash only
    auth = AuthSettings(api_keys=(ApiKey(**entry),))
    async with started(local_settings.model_copy(update={"auth": auth})) as (_, channel):
        tables = Stubs.on(channel).tables
        await tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=bearer(key))
        err = await failure(
            tables.CreateNamespace(tpb.CreateNamespaceRequest(name="x"), metadata=bearer(key))
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    # The human-readable form prints the key once and a YAML entry for the keys file.
    assert cli_run(["api-key", "create", "--name", "etl", "--role", "developer",
                    "--namespaces", "sales,finance"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    human_key = next(line.strip() for line in out.splitlines() if line.strip().startswith("lh_"))
    assert out.count(human_key) == 1
    yaml_part = out.split("(YAML):")[1].split("or to the JSON list")[0]
    (parsed,) = yaml.safe_load(yaml_part)
    assert ApiKey(**parsed).namespaces == ("sales", "finance")
    assert cli_run(["api-key", "create", "--name", "x", "--role", "viewer",
                    "--namespaces", "Bad-Name"]) == 2  # fmt: skip


async def test_grpcurl_with_a_bearer_token(
    local_settings: Settings, keys: Keys, grpcurl: Path
) -> None:
    """What docs/security.md shows: reflection is public, calls carry ``-H authorization``."""
    settings = local_settings.model_copy(update={"auth": keys.auth()})
    async with started(settings) as (server, _):
        target = f"{LOOPBACK}:{server.grpc_port}"

        async def grpcurl_run(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                str(grpcurl), "-plaintext", "-max-time", "20", *args, target,
                "lakehouse.v1.TableService/ListNamespaces",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            return proc.returncode or 0, out.decode()

        status, out = await grpcurl_run("-H", f"authorization: Bearer {keys.plain['viewer']}")
        assert status == 0, out
        status, out = await grpcurl_run()
        assert status != 0
        assert "Unauthenticated" in out and "missing credentials" in out


# -- Health, reflection, open mode -----------------------------------------------------------


async def _health(channel: grpc.aio.Channel, metadata: Any = ()) -> grpc.StatusCode:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    return await code_of(stub.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10))


async def _reflection(channel: grpc.aio.Channel, metadata: Any = ()) -> grpc.StatusCode:
    """The status of a reflection call, the same for v1alpha and v1 (or the v1 one differs)."""
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    alpha = await code_of(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10))
    # v1 has the same messages under another package name (what buf curl asks for first)
    v1_info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    v1 = await code_of(v1_info(iter([request]), metadata=metadata, timeout=10))
    assert v1 == alpha, f"reflection v1alpha answers {alpha}, v1 {v1}"
    return alpha


async def test_health_and_reflection_are_public_by_default(
    auth_channel: grpc.aio.Channel,
) -> None:
    assert await _health(auth_channel) == grpc.StatusCode.OK
    assert await _reflection(auth_channel) == grpc.StatusCode.OK
    # ... even with a stale token: a load balancer's probe must not fail on it
    assert await _health(auth_channel, bearer("lh_revoked")) == grpc.StatusCode.OK


async def test_health_and_reflection_can_require_credentials(
    local_settings: Settings, keys: Keys
) -> None:
    auth = keys.auth(public_health=False, public_reflection=False)
    async with started(local_settings.model_copy(update={"auth": auth})) as (_, channel):
        assert await _health(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert await _reflection(channel) == grpc.StatusCode.UNAUTHENTICATED
        viewer = bearer(keys.plain["viewer"])  # any role will do
        assert await _health(channel, viewer) == grpc.StatusCode.OK
        assert await _reflection(channel, viewer) == grpc.StatusCode.OK


# -- The sidecar HTTP port -------------------------------------------------------------------

SIDECAR_PATHS = ("/metrics", "/healthz", "/readyz")


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Any
    body: bytes


async def sidecar(
    server: LakehouseServer, path: str, authorization: str | None = None, method: str = "GET"
) -> HttpAnswer:
    """One request to the server's sidecar port over real HTTP."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    url = f"http://{LOOPBACK}:{server.http_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, allow_redirects=False) as resp,
    ):
        return HttpAnswer(resp.status, resp.headers, await resp.read())


async def test_the_sidecar_is_public_by_default(local_settings: Settings, keys: Keys) -> None:
    async with started(local_settings.model_copy(update={"auth": keys.auth()})) as (server, _):
        for path in SIDECAR_PATHS:
            assert (await sidecar(server, path)).status == 200, path
            # A stale credential does not fail a public path either.
            assert (await sidecar(server, path, "Bearer lh_revoked")).status == 200, path


async def test_the_sidecar_can_require_credentials(
    local_settings: Settings, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="lakehouse")
    auth = keys.auth(public_metrics=False, public_probes=False)
    viewer = keys.plain["viewer"]
    refused = {
        "no credentials": None,
        "unknown key": "Bearer lh_" + "x" * 43,
        "expired JWT": f"Bearer {hs256(role='admin', exp=int(time.time()) - 120)}",
        "no scheme": viewer,
        "Basic": f"Basic {viewer}",
    }
    accepted = {  # any role will do
        "viewer key": f"Bearer {viewer}",
        "JWT": f"Bearer {hs256(role='viewer')}",
        "lower-case scheme": f"bearer {keys.plain['admin']}",
    }
    async with started(local_settings.model_copy(update={"auth": auth})) as (server, _):
        bodies = set()
        for path in SIDECAR_PATHS:
            for label, authorization in refused.items():
                answer = await sidecar(server, path, authorization)
                assert answer.status == 401, (path, label)
                assert answer.headers["WWW-Authenticate"] == "Bearer", (path, label)
                bodies.add(answer.body)
            for label, authorization in accepted.items():
                answer = await sidecar(server, path, authorization)
                assert answer.status == 200, (path, label, answer.body)
            # HEAD is routed to the same handler: guarded too.
            assert (await sidecar(server, path, method="HEAD")).status == 401, path
        assert (
            b"# TYPE grpc_server_started_total counter"
            in (await sidecar(server, "/metrics", f"Bearer {viewer}")).body
        )
        # Nothing that looks like a guarded path slips past the check.
        for path in ("/metrics/", "/Metrics", "//metrics", "/readyz?x=1"):
            assert (await sidecar(server, path)).status in (401, 404), path
    assert len(bodies) == 1  # no hint of what was wrong with the credentials
    (body,) = bodies
    assert viewer.encode() not in body
    reasons = [
        (r.__dict__["path"], str(r.__dict__["reason"]))
        for r in caplog.records
        if r.getMessage() == "authentication failed"
    ]
    assert ("/metrics", "no bearer token and no client certificate") in reasons
    assert any(path == "/readyz" and "expired" in reason.lower() for path, reason in reasons)
    assert_nothing_of_logged(caplog, [viewer, keys.plain["admin"], *accepted.values()])


@pytest.mark.parametrize(
    ("setting", "guarded"),
    [("public_metrics", ["/metrics"]), ("public_probes", ["/healthz", "/readyz"])],
)
async def test_metrics_and_probes_are_configured_apart(
    local_settings: Settings, keys: Keys, setting: str, guarded: list[str]
) -> None:
    auth = keys.auth(**{setting: False})
    async with started(local_settings.model_copy(update={"auth": auth})) as (server, _):
        for path in SIDECAR_PATHS:
            expected = 401 if path in guarded else 200
            assert (await sidecar(server, path)).status == expected, path


async def test_without_authentication_the_sidecar_stays_open(local_settings: Settings) -> None:
    # Nothing to check a credential against: guarding would only lock everyone out.
    auth = AuthSettings(public_metrics=False, public_probes=False)
    async with started(local_settings.model_copy(update={"auth": auth})) as (server, _):
        for path in SIDECAR_PATHS:
            assert (await sidecar(server, path)).status == 200, path


async def test_open_mode_warns_and_treats_everyone_as_admin(
    local_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lakehouse")
    async with started(local_settings) as (_, channel):
        warnings = [
            r for r in caplog.records if r.name == "lakehouse.auth" and r.levelno == logging.WARNING
        ]
        assert [r.getMessage() for r in warnings] == [
            "authentication is off: every caller has the admin role"
        ]
        tables = Stubs.on(channel).tables
        await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="open"))
        await tables.DeleteNamespace(tpb.DeleteNamespaceRequest(name="open"))
    audit = audit_lines(caplog)
    assert [(a["method"].rsplit("/", 1)[1], a["principal"], a["role"]) for a in audit] == [
        ("CreateNamespace", "anonymous", "admin"),
        ("DeleteNamespace", "anonymous", "admin"),
    ]


def test_auth_mode_and_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert not load_settings().auth.enabled
    monkeypatch.setenv("LAKEHOUSE_AUTH__MODE", "required")
    with pytest.raises(ConfigError, match=r"auth.mode is required but no credential"):
        load_settings()
    _, entry = new_api_key("env-key", "viewer", ["sales"])
    monkeypatch.setenv("LAKEHOUSE_AUTH__API_KEYS", json.dumps([entry.model_dump()]))
    settings = load_settings()
    assert settings.auth.enabled and settings.auth.api_keys == (entry,)
    monkeypatch.setenv("LAKEHOUSE_AUTH__MODE", "off")
    assert not load_settings().auth.enabled  # explicit off wins over configured keys
    monkeypatch.setenv("LAKEHOUSE_AUTH__MODE", "auto")
    monkeypatch.setenv("LAKEHOUSE_AUTH__JWT_SECRET", "too-short")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_settings()
    monkeypatch.delenv("LAKEHOUSE_AUTH__JWT_SECRET")
    monkeypatch.setenv("LAKEHOUSE_AUTH__MTLS_ROLES", '{"etl.internal": "developer"}')
    with pytest.raises(ConfigError, match=r"tls.require_client_cert"):
        load_settings()
    monkeypatch.delenv("LAKEHOUSE_AUTH__MTLS_ROLES")
    monkeypatch.setenv("LAKEHOUSE_AUTH__JWT_ALGORITHMS", '["RS256"]')
    with pytest.raises(ConfigError, match=r"jwt_public_key_file or auth.jwt_jwks_file"):
        load_settings()
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.delenv("LAKEHOUSE_AUTH__JWT_ALGORITHMS")
    monkeypatch.setenv("LAKEHOUSE_AUTH__JWT_SECRET_FILE", str(secret_file))
    settings = load_settings()
    assert settings.auth.jwt_secret is not None
    assert settings.auth.jwt_secret.get_secret_value() == SECRET
    assert settings.auth.effective_jwt_algorithms == ("HS256",)


# -- Namespace grants ------------------------------------------------------------------------


async def _make_table(stubs: Stubs, admin: Any, namespace: str, table: str) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stubs.tables.CreateNamespace(
            tpb.CreateNamespaceRequest(name=namespace), metadata=admin
        )
    await stubs.tables.CreateTable(
        tpb.CreateTableRequest(
            namespace=namespace,
            table=table,
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
        ),
        metadata=admin,
    )


async def test_a_refusal_quoting_a_huge_name_stays_within_the_clients_metadata_limit(
    auth_channel: grpc.aio.Channel, keys: Keys
) -> None:
    """The refusal names the namespace; a 20,000-character one must not push the trailers
    past what a client accepts (it would see RESOURCE_EXHAUSTED; found by the fuzz test)."""
    stubs = Stubs.on(auth_channel)
    huge = "y" * 20_000
    details = rpc_error_details(
        await failure(
            stubs.tables.GetNamespace(
                tpb.GetNamespaceRequest(name=huge), metadata=bearer(keys.plain["limited"])
            )
        )
    )
    assert details.code == grpc.StatusCode.PERMISSION_DENIED, details
    assert details.metadata["namespace"].startswith("yyyy")
    assert len(details.metadata["namespace"]) < 1_000
    assert len(details.message) < 1_000


async def test_namespace_grants(auth_channel: grpc.aio.Channel, keys: Keys) -> None:
    stubs = Stubs.on(auth_channel)
    admin, limited = bearer(keys.plain["admin"]), bearer(keys.plain["limited"])
    await _make_table(stubs, admin, "sales", "orders")
    await _make_table(stubs, admin, "hr", "salaries")

    async def denied(call: Any, namespace: str | None = None) -> dict[str, str]:
        details = rpc_error_details(await failure(call))
        assert details.code == grpc.StatusCode.PERMISSION_DENIED, details
        if namespace is not None:
            assert details.metadata["namespace"] == namespace
        return details.metadata

    # inside the grant: as a developer
    await stubs.tables.GetTable(
        tpb.GetTableRequest(namespace="sales", table="orders"), metadata=limited
    )
    assert (
        await code_of(
            stubs.tables.ReadRows(
                tpb.ReadRowsRequest(namespace="sales", table="orders"), metadata=limited
            )
        )
        == grpc.StatusCode.OK
    )
    # outside it
    meta = await denied(
        stubs.tables.GetTable(
            tpb.GetTableRequest(namespace="hr", table="salaries"), metadata=limited
        ),
        "hr",
    )
    assert meta["permission"] == "tables.read"
    await denied(
        stubs.tables.ReadRows(
            tpb.ReadRowsRequest(namespace="hr", table="salaries"), metadata=limited
        ),
        "hr",
    )
    await denied(
        stubs.tables.CreateNamespace(tpb.CreateNamespaceRequest(name="sales2"), metadata=limited)
    )
    await denied(
        stubs.tables.RenameTable(
            tpb.RenameTableRequest(
                namespace="sales", table="orders", new_namespace="hr", new_table="x"
            ),
            metadata=limited,
        ),
        "hr",
    )
    # ListNamespaces shows the granted namespaces only
    listed = await stubs.tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=limited)
    assert [n.name for n in listed.namespaces] == ["sales"]
    everything = await stubs.tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=admin)
    assert {"sales", "hr"} <= {n.name for n in everything.namespaces}

    # AppendRows: the stream's first message names the table
    ok = stubs.ingest.AppendRows(
        iter(
            [
                ipb.AppendRowsRequest(namespace="sales", table="orders"),
                ipb.AppendRowsRequest(),  # later requests may leave the table out
            ]
        ),
        metadata=limited,
    )
    assert [r.WhichOneof("response") async for r in ok] == ["result", "result"]
    await denied(
        stubs.ingest.AppendRows(
            iter(
                [
                    ipb.AppendRowsRequest(namespace="sales", table="orders"),
                    ipb.AppendRowsRequest(namespace="hr", table="salaries"),
                ]
            ),
            metadata=limited,
        ),
        "hr",
    )
    await denied(
        stubs.ingest.AppendRows(
            iter([ipb.AppendRowsRequest(namespace="hr", table="salaries")]), metadata=limited
        ),
        "hr",
    )

    # Jobs: SQL may name any table, so limited callers cannot run it; by id, the job's
    # namespace decides; listings are filtered.
    await denied(
        stubs.jobs.CreateJob(
            _spec(sql=job_pb2.SqlJobSpec(statement="SELECT * FROM hr.salaries")), metadata=limited
        )
    )
    await denied(
        stubs.jobs.CreateJob(
            _spec(compact_table=job_pb2.CompactTableJobSpec(namespace="hr", table="salaries")),
            metadata=limited,
        ),
        "hr",
    )
    mine = (
        await stubs.jobs.CreateJob(
            _spec(compact_table=job_pb2.CompactTableJobSpec(namespace="sales", table="orders")),
            metadata=limited,
        )
    ).job
    theirs = (
        await stubs.jobs.CreateJob(
            _spec(compact_table=job_pb2.CompactTableJobSpec(namespace="hr", table="salaries")),
            metadata=admin,
        )
    ).job
    await stubs.jobs.GetJob(jpb.GetJobRequest(job_id=mine.id), metadata=limited)
    meta = await denied(stubs.jobs.GetJob(jpb.GetJobRequest(job_id=theirs.id), metadata=limited))
    assert meta["job_id"] == theirs.id
    await denied(stubs.jobs.WatchJob(jpb.WatchJobRequest(job_id=theirs.id), metadata=limited))
    await denied(stubs.jobs.CancelJob(jpb.CancelJobRequest(job_id=theirs.id), metadata=limited))
    listed_jobs = await stubs.jobs.ListJobs(jpb.ListJobsRequest(), metadata=limited)
    assert [j.id for j in listed_jobs.jobs] == [mine.id]
    await denied(stubs.jobs.ListJobs(jpb.ListJobsRequest(namespace="hr"), metadata=limited), "hr")

    # A JWT's namespaces claim limits it the same way.
    token = bearer(hs256(namespaces=["sales"]))
    await stubs.tables.GetTable(
        tpb.GetTableRequest(namespace="sales", table="orders"), metadata=token
    )
    await denied(
        stubs.tables.GetTable(
            tpb.GetTableRequest(namespace="hr", table="salaries"), metadata=token
        ),
        "hr",
    )


def _json_rows(*ids: int) -> rows_pb2.JsonRows:
    rows = rows_pb2.JsonRows()
    for value in ids:
        rows.rows.add().update({"id": value})
    return rows


async def _ids(stubs: Stubs, admin: Any, namespace: str, table: str) -> list[int]:
    read = stubs.tables.ReadRows(
        tpb.ReadRowsRequest(namespace=namespace, table=table, format=rows_pb2.ROW_FORMAT_JSON),
        metadata=admin,
    )
    return sorted([int(row["id"]) async for response in read for row in response.json_rows.rows])


async def test_removing_rows_needs_change_rows_and_stays_within_namespace_grants(
    auth_channel: grpc.aio.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lakehouse")
    stubs = Stubs.on(auth_channel)
    admin, developer = bearer(keys.plain["admin"]), bearer(keys.plain["developer"])
    limited_admin = bearer(hs256(role="admin", namespaces=["sales"]))
    await _make_table(stubs, admin, "sales", "orders")
    await _make_table(stubs, admin, "hr", "salaries")
    for namespace, table in (("sales", "orders"), ("hr", "salaries")):
        await stubs.ingest.WriteRows(
            ipb.WriteRowsRequest(namespace=namespace, table=table, json_rows=_json_rows(1, 2)),
            metadata=developer,  # appending needs no more than ingest.write
        )

    async def denied(call: Any, permission: str, namespace: str | None = None) -> None:
        details = rpc_error_details(await failure(call))
        assert details.code == grpc.StatusCode.PERMISSION_DENIED, details
        assert details.reason == "PERMISSION_DENIED"
        assert details.metadata["permission"] == permission, details
        assert details.metadata.get("namespace") == namespace, details

    # A developer may append, but not remove rows: not by DeleteRows, not by a write mode
    # (in WriteRows, or in any message of an AppendRows stream), and nothing is written.
    overwrite: dict[str, Any] = {
        "write_mode": ingest_pb2.WRITE_MODE_OVERWRITE,
        "overwrite_filter": "true",
    }
    sales = {"namespace": "sales", "table": "orders"}
    await denied(
        stubs.tables.DeleteRows(
            tpb.DeleteRowsRequest(**sales, row_filter="true"), metadata=developer
        ),
        "tables.change_rows",
    )
    await denied(
        stubs.ingest.WriteRows(
            ipb.WriteRowsRequest(**sales, json_rows=_json_rows(7), **overwrite),
            metadata=developer,
        ),
        "tables.change_rows",
    )
    await denied(
        stubs.ingest.WriteRows(
            ipb.WriteRowsRequest(
                **sales, json_rows=_json_rows(7), write_mode=ingest_pb2.WRITE_MODE_UPSERT
            ),
            metadata=developer,
        ),
        "tables.change_rows",
    )
    await denied(
        stubs.ingest.AppendRows(
            iter([ipb.AppendRowsRequest(**sales, json_rows=_json_rows(7), **overwrite)]),
            metadata=developer,
        ),
        "tables.change_rows",
    )
    await denied(
        stubs.ingest.AppendRows(
            iter(
                [
                    ipb.AppendRowsRequest(**sales),  # no rows: acknowledged, nothing written
                    ipb.AppendRowsRequest(json_rows=_json_rows(8), **overwrite),
                ]
            ),
            metadata=developer,
        ),
        "tables.change_rows",
    )
    assert await _ids(stubs, admin, "sales", "orders") == [1, 2]

    # An admin limited to a namespace may remove rows there only.
    deleted = await stubs.tables.DeleteRows(
        tpb.DeleteRowsRequest(**sales, row_filter="id = 2"), metadata=limited_admin
    )
    assert deleted.rows_deleted == 1
    assert await _ids(stubs, admin, "sales", "orders") == [1]
    hr = {"namespace": "hr", "table": "salaries"}
    await denied(
        stubs.tables.DeleteRows(
            tpb.DeleteRowsRequest(**hr, row_filter="true"), metadata=limited_admin
        ),
        "tables.change_rows",
        "hr",
    )
    await denied(
        stubs.ingest.WriteRows(
            ipb.WriteRowsRequest(**hr, json_rows=_json_rows(7), **overwrite),
            metadata=limited_admin,
        ),
        "tables.change_rows",
        "hr",
    )
    await denied(
        stubs.ingest.AppendRows(
            iter([ipb.AppendRowsRequest(**hr, json_rows=_json_rows(7), **overwrite)]),
            metadata=limited_admin,
        ),
        "tables.change_rows",
        "hr",
    )
    assert await _ids(stubs, admin, "hr", "salaries") == [1, 2]

    # Every one of these calls is audited, naming the stronger permission it needed.
    lines = [
        (a["method"].rsplit("/", 1)[1], a["permission"], a["outcome"])
        for a in audit_lines(caplog)
        if a["method"].endswith(("DeleteRows", "WriteRows", "AppendRows"))
    ]
    assert lines == [
        ("WriteRows", "ingest.write", "OK"),
        ("WriteRows", "ingest.write", "OK"),
        ("DeleteRows", "tables.change_rows", "PERMISSION_DENIED"),
        ("WriteRows", "tables.change_rows", "PERMISSION_DENIED"),
        ("WriteRows", "tables.change_rows", "PERMISSION_DENIED"),
        ("AppendRows", "tables.change_rows", "PERMISSION_DENIED"),
        ("AppendRows", "tables.change_rows", "PERMISSION_DENIED"),
        ("DeleteRows", "tables.change_rows", "OK"),
        ("DeleteRows", "tables.change_rows", "PERMISSION_DENIED"),
        ("WriteRows", "tables.change_rows", "PERMISSION_DENIED"),
        ("AppendRows", "tables.change_rows", "PERMISSION_DENIED"),
    ]


# -- Audit and the per-RPC log line ------------------------------------------------------------


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "lakehouse.audit"]


async def test_audit_log_and_principal_in_the_rpc_log(
    auth_channel: grpc.aio.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lakehouse")
    stubs = Stubs.on(auth_channel)
    developer, viewer = bearer(keys.plain["developer"]), bearer(keys.plain["viewer"])
    request_id = (("x-request-id", "audit-1"),)
    await stubs.tables.CreateNamespace(
        tpb.CreateNamespaceRequest(name="audited"), metadata=developer + request_id
    )
    await stubs.tables.GetNamespace(tpb.GetNamespaceRequest(name="audited"), metadata=viewer)
    await failure(
        stubs.tables.DeleteTable(
            tpb.DeleteTableRequest(namespace="audited", table="t", purge=True), metadata=developer
        )
    )
    await failure(stubs.tables.GetNamespace(tpb.GetNamespaceRequest(name="audited")))
    await failure(
        stubs.tables.GetTable(
            tpb.GetTableRequest(namespace="audited", table="t"), metadata=developer
        )
    )

    # The access log is written outside the audit log, so once every call's access line is
    # there, so is every audit line (both are written as a refused call's handler unwinds).
    rpc = await logged_rpc_lines(caplog, 5)
    lines = sorted(audit_lines(caplog), key=lambda line: str(line["method"]))
    summary = [(a["method"], a["principal"], a["outcome"]) for a in lines]
    assert summary == [
        ("/lakehouse.v1.TableService/CreateNamespace", "developer-key", "OK"),
        ("/lakehouse.v1.TableService/DeleteTable", "developer-key", "PERMISSION_DENIED"),
        ("/lakehouse.v1.TableService/GetNamespace", "", "UNAUTHENTICATED"),
    ]  # the two successful reads (and the NOT_FOUND read) are not audited
    created, denied, anonymous = lines
    assert created["role"] == "developer" and created["auth"] == "api_key"
    assert created["permission"] == "tables.write"
    assert created["target"] == {"namespace": "audited"}
    assert created["request_id"] == "audit-1"
    assert created["logger"] == "lakehouse.audit" and created["msg"] == "audit"
    assert denied["permission"] == "tables.delete"
    assert denied["target"] == {"namespace": "audited", "table": "t"}
    assert anonymous["role"] == "" and anonymous["permission"] == "tables.read"

    assert sorted((x["method"], x["principal"], x["code"]) for x in rpc) == [
        ("CreateNamespace", "developer-key", "OK"),
        ("DeleteTable", "developer-key", "PERMISSION_DENIED"),
        ("GetNamespace", "", "UNAUTHENTICATED"),
        ("GetNamespace", "viewer-key", "OK"),
        ("GetTable", "developer-key", "NOT_FOUND"),
    ]


async def test_audit_of_a_stream_names_the_table_of_its_first_message(
    auth_channel: grpc.aio.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lakehouse")
    stubs = Stubs.on(auth_channel)
    call = stubs.ingest.AppendRows(
        iter([ipb.AppendRowsRequest(namespace="nope", table="t")]),
        metadata=bearer(keys.plain["developer"]),
    )
    assert await code_of(call) == grpc.StatusCode.OK
    (line,) = audit_lines(caplog)
    assert line["method"] == "/lakehouse.v1.IngestService/AppendRows"
    assert line["target"] == {"namespace": "nope", "table": "t"}
    assert line["permission"] == "ingest.write" and line["outcome"] == "OK"


async def test_mtls_client_certificate_maps_to_a_role(
    local_settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    """End to end over a real mTLS port: the certificate's SAN picks the role."""
    ca = TestCA()
    server_cert, server_key = ca.issue("lakehouse", server=True).write(tmp_path, "server")
    etl = ca.issue("etl-job", client=True, dns_names=("etl.internal",), ip_addresses=())
    stranger = ca.issue("stranger", client=True, dns_names=(), ip_addresses=())
    settings = local_settings.model_copy(
        update={
            "tls": TlsSettings(
                cert_file=server_cert,
                key_file=server_key,
                client_ca_file=ca.write(tmp_path),
                require_client_cert=True,
            ),
            "auth": AuthSettings(
                mtls_roles={"etl.internal": "viewer"}, api_keys=keys.settings_keys
            ),
        }
    )
    server = LakehouseServer(settings)
    await server.start()
    try:

        def channel(client: Any) -> grpc.aio.Channel:
            creds = grpc.ssl_channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)
            return grpc.aio.secure_channel(f"{LOOPBACK}:{server.grpc_port}", creds)

        async with channel(etl) as ch:
            tables = Stubs.on(ch).tables
            await tables.ListNamespaces(tpb.ListNamespacesRequest(), timeout=10)
            err = await failure(
                tables.CreateNamespace(tpb.CreateNamespaceRequest(name="x"), timeout=10)
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # a viewer
            # a bearer token wins over the certificate
            err = await failure(
                tables.CreateNamespace(
                    tpb.CreateNamespaceRequest(name=""),
                    metadata=bearer(keys.plain["developer"]),
                    timeout=10,
                )
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with channel(stranger) as ch:
            err = await failure(
                Stubs.on(ch).tables.ListNamespaces(tpb.ListNamespacesRequest(), timeout=10)
            )
            assert (err.code(), err.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid credentials",
            )
    finally:
        await asyncio.wait_for(server.stop(), STOP_TIMEOUT_SECONDS)


# -- Unit tests of the credential checks -------------------------------------------------------


def test_mtls_identity_from_the_auth_context() -> None:
    """Fakes nothing but the dict ``context.auth_context()`` returns for a verified peer."""
    roles: dict[str, Any] = {"etl.internal": "developer", "ops-console": "admin"}
    san_and_cn = {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [b"ops-console"],
        "x509_subject_alternative_name": [b"spiffe://corp/etl", b"etl.internal"],
    }
    principal = principal_from_peer(san_and_cn, roles)
    assert principal is not None
    assert (principal.name, principal.role, principal.via) == ("etl.internal", "developer", "mtls")
    cn_only = {"transport_security_type": [b"ssl"], "x509_common_name": [b"ops-console"]}
    principal = principal_from_peer(cn_only, roles)
    assert principal is not None and principal.role == "admin"
    assert principal_from_peer({"transport_security_type": [b"ssl"],
                                "x509_common_name": [b"stranger"]}, roles) is None  # fmt: skip
    assert principal_from_peer({"transport_security_type": [b"insecure"]}, roles) is None
    assert principal_from_peer({}, roles) is None

    auth = Authenticator(enabled=True, mtls_roles=roles)
    assert auth.authenticate((), lambda: san_and_cn).name == "etl.internal"
    with pytest.raises(CredentialError) as exc:
        auth.authenticate((), lambda: {"transport_security_type": [b"ssl"],
                                       "x509_common_name": [b"stranger"]})  # fmt: skip
    assert not exc.value.missing and "stranger" in exc.value.detail
    with pytest.raises(CredentialError) as exc:
        auth.authenticate((), lambda: {"transport_security_type": [b"insecure"]})
    assert exc.value.missing
    with pytest.raises(CredentialError) as exc:  # a bearer token wins over the certificate
        auth.authenticate(bearer("lh_whatever"), lambda: san_and_cn)
    assert not exc.value.missing


def test_jwt_claims_edge_cases(keys: Keys) -> None:
    verifier = JwtVerifier(
        algorithms=["HS256"],
        secret=SECRET.encode(),
        role_claim="realm_access.roles",
        namespaces_claim="https://lakehouse.example/namespaces",
    )

    def principal(**extra: Any) -> Any:
        payload = {k: v for k, v in claims(**extra).items() if k not in ("iss", "aud")}
        return verifier.verify(jwt.encode(payload, SECRET, algorithm="HS256"))

    p = principal(realm_access={"roles": ["viewer", "admin"]})
    assert (p.name, p.role, p.namespaces) == ("alice", "admin", None)
    p = principal(
        realm_access={"roles": ["viewer"]}, **{"https://lakehouse.example/namespaces": "a, b c"}
    )
    assert p.namespaces == frozenset({"a", "b", "c"})
    with pytest.raises(CredentialError, match="no known role"):
        principal(realm_access={"roles": ["offline_access"]})
    with pytest.raises(CredentialError, match="neither a list"):
        principal(realm_access={"roles": ["viewer"]}, **{"https://lakehouse.example/namespaces": 7})
    with pytest.raises(CredentialError, match="sub"):
        principal(realm_access={"roles": ["viewer"]}, sub="")
    # A token's aud must be configured: an unexpected audience is refused, not ignored.
    with pytest.raises(CredentialError, match="Audience"):
        verifier.verify(hs256(realm_access={"roles": ["viewer"]}))


def test_an_accepted_jwt_is_remembered_only_until_it_expires() -> None:
    # Verified once, then remembered (a caller sends the same token on every call); the
    # memory ends where a fresh verification would: at exp (here without leeway).
    verifier = JwtVerifier(algorithms=["HS256"], secret=SECRET.encode(), leeway_seconds=0)
    exp = int(time.time()) + 2
    token = jwt.encode(
        {k: v for k, v in claims(exp=exp).items() if k not in ("iss", "aud")},
        SECRET,
        algorithm="HS256",
    )
    first = verifier.verify(token)
    assert verifier.verify(token) == first
    assert (first.name, first.role) == ("alice", "developer")
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(CredentialError, match="Expired"):
        verifier.verify(token)


def test_key_files_are_checked_at_start(tmp_path: Path, keys: Keys) -> None:
    assert len(load_api_keys_file(keys.api_keys_file)) == 2
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps([keys.settings_keys[0].model_dump()]))
    assert load_api_keys_file(as_json) == [keys.settings_keys[0]]
    broken = tmp_path / "broken.yaml"
    broken.write_text("- name: x\n  sha256: not-a-hash\n  role: viewer\n")
    with pytest.raises(ConfigError, match=r"0\.sha256"):
        load_api_keys_file(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_api_keys_file(tmp_path / "missing.yaml")

    private = tmp_path / "private.pem"
    private.write_bytes(
        keys.rsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="private key"):
        load_public_keys(private)
    weak = tmp_path / "weak.pem"
    weak.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="1024 bits"):
        load_public_keys(weak)
    assert len(load_public_keys(keys.pem_file)) == 1

    oct_jwks = tmp_path / "oct.json"
    oct_jwks.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(ConfigError, match="not RSA or EC"):
        load_jwks(oct_jwks)
    assert [k.key_id for k in load_jwks(keys.jwks_file)] == [EC_KID]

    # Two keys under one name would make the audit log ambiguous.
    _, twin = new_api_key("viewer-key", "admin")
    with pytest.raises(ConfigError, match="own name"):
        Authenticator.from_settings(
            AuthSettings(api_keys=(keys.settings_keys[0],), api_keys_file=_yaml(tmp_path, twin))
        )


def _yaml(folder: Path, *entries: ApiKey) -> Path:
    path = folder / "more-keys.yaml"
    path.write_text(yaml.safe_dump([e.model_dump(exclude_none=True) for e in entries]))
    return path


def test_a_bad_key_file_stops_the_server_before_it_binds(
    local_settings: Settings, tmp_path: Path
) -> None:
    auth = AuthSettings(api_keys_file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError):
        LakehouseServer(local_settings.model_copy(update={"auth": auth}))


# -- Key rotation ------------------------------------------------------------------------------


async def _eventually_code(call: Any, code: grpc.StatusCode, timeout: float = 20.0) -> None:
    """Waits until ``call()`` ends with ``code`` (a reload happens in the background)."""
    deadline = time.monotonic() + timeout
    while (got := await code_of(call())) != code:
        assert time.monotonic() < deadline, f"still {got.name}, expected {code.name}"
        await asyncio.sleep(0.1)


async def test_rotated_key_files_are_picked_up_without_a_restart(
    local_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_plain, old_entry = new_api_key("old-key", "admin")
    new_plain, new_entry = new_api_key("new-key", "admin")
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(yaml.safe_dump([old_entry.model_dump(exclude_none=True)]))
    first = ec.generate_private_key(ec.SECP256R1())
    second = ec.generate_private_key(ec.SECP256R1())
    jwks_file = tmp_path / "jwks.json"

    def publish(*keyed: tuple[str, ec.EllipticCurvePrivateKey]) -> None:
        jwks = [
            {**jwt.algorithms.ECAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid}
            for kid, k in keyed
        ]
        jwks_file.write_text(json.dumps({"keys": jwks}))

    def es256(kid: str, key: ec.EllipticCurvePrivateKey) -> str:
        return jwt.encode(claims(aud=None), key, algorithm="ES256", headers={"kid": kid})

    publish(("k1", first))
    auth = AuthSettings(
        api_keys_file=keys_file,
        jwt_jwks_file=jwks_file,
        jwt_issuer=ISSUER,
        reload_interval_seconds=0.2,
    )
    async with started(local_settings.model_copy(update={"auth": auth})) as (_, channel):
        tables = Stubs.on(channel).tables

        def listing(token: str) -> Any:
            return tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=bearer(token))

        assert await code_of(listing(old_plain)) == grpc.StatusCode.OK
        assert await code_of(listing(es256("k1", first))) == grpc.StatusCode.OK
        assert await code_of(listing(new_plain)) == grpc.StatusCode.UNAUTHENTICATED

        # The files change on disk: noticed by polling.
        keys_file.write_text(yaml.safe_dump([new_entry.model_dump(exclude_none=True)]))
        publish(("k2", second))
        await _eventually_code(lambda: listing(new_plain), grpc.StatusCode.OK)
        await _eventually_code(lambda: listing(es256("k2", second)), grpc.StatusCode.OK)
        assert await code_of(listing(old_plain)) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(listing(es256("k1", first))) == grpc.StatusCode.UNAUTHENTICATED

        # A botched rotation is refused: the keys in use stay.
        with caplog.at_level(logging.ERROR, logger="lakehouse.server.app"):
            keys_file.write_text("- {name: broken, sha256: [")
            deadline = time.monotonic() + 20
            while not any("refused" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the broken file was never noticed"
                await asyncio.sleep(0.1)
        assert await code_of(listing(new_plain)) == grpc.StatusCode.OK


async def test_without_polling_keys_are_reloaded_on_request(
    local_settings: Settings, tmp_path: Path
) -> None:
    old_plain, old_entry = new_api_key("old-key", "admin")
    new_plain, new_entry = new_api_key("new-key", "admin")
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(yaml.safe_dump([old_entry.model_dump(exclude_none=True)]))
    auth = AuthSettings(api_keys_file=keys_file, reload_interval_seconds=0)
    async with started(local_settings.model_copy(update={"auth": auth})) as (server, channel):
        tables = Stubs.on(channel).tables

        def listing(token: str) -> Any:
            return tables.ListNamespaces(tpb.ListNamespacesRequest(), metadata=bearer(token))

        keys_file.write_text(yaml.safe_dump([new_entry.model_dump(exclude_none=True)]))
        await asyncio.sleep(0.5)
        assert await code_of(listing(old_plain)) == grpc.StatusCode.OK  # not polled
        server.request_reload()  # what SIGHUP calls
        await _eventually_code(lambda: listing(new_plain), grpc.StatusCode.OK)
        assert await code_of(listing(old_plain)) == grpc.StatusCode.UNAUTHENTICATED


async def test_read_session_streams_follow_grants_and_their_creator(
    auth_channel: grpc.aio.Channel, keys: Keys
) -> None:
    """A session's stream is read under the grants of the table its name claims, and only by
    the caller who created the session; a claim altered to pass the grants fails the
    signature check."""
    stubs = Stubs.on(auth_channel)
    admin, limited = bearer(keys.plain["admin"]), bearer(keys.plain["limited"])
    viewer = bearer(keys.plain["viewer"])
    await _make_table(stubs, admin, "sales", "orders")
    await _make_table(stubs, admin, "hr", "salaries")

    async def session(namespace: str, table: str, metadata: Any) -> str:
        request = tpb.CreateReadSessionRequest(namespace=namespace, table=table)
        return (await stubs.tables.CreateReadSession(request, metadata=metadata)).session.name

    def stream(name: str, metadata: Any) -> Any:
        return stubs.tables.ReadRows(tpb.ReadRowsRequest(read_session=name), metadata=metadata)

    mine = await session("sales", "orders", limited)
    assert await code_of(stream(mine, limited)) == grpc.StatusCode.OK
    other = rpc_error_details(await failure(stream(mine, viewer)))  # another caller
    assert (other.code, other.metadata["permission"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "tables.read",
    )
    hr = await session("hr", "salaries", admin)
    outside = rpc_error_details(await failure(stream(hr, limited)))
    assert (outside.code, outside.metadata["namespace"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "hr",
    )
    # The hr session's claims rewritten to name sales (and the limited caller), signature kept.
    payload, _, mac = hr.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims |= {"namespace": "sales", "table": "orders"}
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    forged = rpc_error_details(await failure(stream(f"{forged_payload}.{mac}", limited)))
    assert (forged.code, forged.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_READ_SESSION",
    )
