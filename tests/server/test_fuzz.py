"""Property-based fuzzing of every RPC: random, mutated and undecodable requests and callers.

More than 12,000 requests, spread over every method of TableService, IngestService and
JobService (enumerated from the service descriptors, so a new RPC is fuzzed without a change
here), go to one real in-process server on the embedded backend with authentication on. They
come in three kinds:

- generated: a message built from the request's descriptor, every field random (huge and
  negative numbers, unknown enum numbers, odd and long Unicode strings, path traversal,
  random bytes, nested messages and repeated fields to a few levels);
- mutated: a valid request for the prepared namespace and table, or for a prepared job, with
  one field somewhere inside replaced by a random value;
- raw: random bytes, or a valid request's bytes flipped, truncated or spliced, sent as the
  serialized request through a generic channel method with identity serializers.

Each call also draws its caller. Most calls carry the admin API key, so that the request space
is explored as deep as the handlers go; the others carry the developer, viewer or
namespace-limited developer key (limited to a namespace no request names), or broken
credentials: none, a key under another header or in ``authorization-bin``, garbage, another
scheme (``Basic``...), a key without ``Bearer``, a truncated or altered key, a header of many
KiB (under the server's metadata limit), two ``authorization`` headers, JWT-looking garbage
and forged JWTs (``alg: none``, wrong secret, expired...). gRPC's client refuses header values
outside printable ASCII, so non-ASCII reaches the server percent-encoded, base64-encoded or as
binary metadata only.

The properties:

1. Every answer is deliberate: OK, or a status the service chose, carrying a
   ``google.rpc.Status`` with an ErrorInfo of domain ``lakehouse.v1``. Never INTERNAL (an
   unhandled exception), DATA_LOSS, or UNKNOWN (gRPC's own answer to an exception that
   escaped the handler), except UNKNOWN with reason COMMIT_STATE_UNKNOWN, which the service
   sends on purpose. The same holds for statuses inside stream messages (AppendRows
   acknowledgements) and for the errors of jobs the fuzz created.
2. Access is decided as configured: broken credentials get UNAUTHENTICATED ("missing" or
   "invalid credentials", nothing more), whatever the request bytes; a key whose role lacks
   the call's permission (``lakehouse.server.permissions``), or the further one a request
   needs (a write mode that removes rows, in any request of a stream), gets PERMISSION_DENIED
   naming it, and so does the limited key for anything outside its namespace; a valid key
   allowed to make the call is never refused. A viewer or limited key never gets OK for a
   method that changes data, and the limited key's listings show its namespace only.
3. The server stays up: health is SERVING at the end.
4. Nothing is created that no call was answered OK for: every namespace, table and job that
   exists at the end was prepared by the test, or named by a request that got OK (a
   CreateNamespace, CreateTable, RegisterTable or RenameTable, a CreateJob and its SQL
   destination table). Names of requests that failed are not tracked at all, so a failed
   request that left something behind shows up as a name nobody was told about. One
   exception: ``_dead_letters`` tables, which ingest creates for itself and which are
   documented as delivered at least once. And no file is written outside the server's data
   folder (its working directory is the test's folder, so a relative location would show).

Every method is called by every caller class, and the count of calls is asserted; the summary
(calls by method and caller, codes by caller, bad credentials by kind, answers by code and
reason) is printed and attached to every assertion message.

Generation is Hypothesis's, in a child process with the gRPC client (see ``run_fuzzer``);
there is no shrinking (each example is a batch of requests sent concurrently to a shared
server, so an example does not replay alone). The seed is random on each run, so that runs
keep exploring new requests, and every assertion message starts with it: ``FUZZ_SEED=<seed>``
draws the same requests and callers again (the keys, the prepared snapshot and job ids and
the interleaving of concurrent calls differ from run to run, so a replay is close, not
exact). ``FUZZ_EXAMPLES=<n>`` runs n batches of 50 instead of 250 (the count assertion then
fails, after all the others).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import pickle
import secrets
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
import pyarrow as pa
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from fixtures.net import LOOPBACK
from lakehouse.client.arrow import write_rows_request
from lakehouse.config import AuthSettings, RoleName
from lakehouse.server.credentials import AUTHORIZATION_HEADER, new_api_key
from lakehouse.server.permissions import RULES, role_allows
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2,
    job_pb2,
    job_service_pb2,
    rows_pb2,
    schema_pb2,
    table_service_pb2,
)
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

T = TypeVar("T")

#: Bytes that parse as no request message (a field 25 whose varint never ends).
CORRUPT_REQUEST = b"\xca\x01\xff"
#: The Hypothesis seed; set FUZZ_SEED to replay a run (printed on failure).
FUZZ_SEED = int(os.environ.get("FUZZ_SEED") or secrets.randbits(32))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 250)
BATCH = 50
#: The issue asks for at least 10,000; the default run makes 12,500, with room to spare.
MIN_REQUESTS = 12_000
IN_FLIGHT = 16
BATCHES_IN_FLIGHT = 4
#: A client-side safety net only: longer than the server's own limits below, so that a call
#: the server forgets shows up as a client deadline (a failure) instead of a hang.
CLIENT_TIMEOUT_SECONDS = 30.0
#: Server streams that run until the client hangs up, and how long the fuzzer listens once
#: the server has accepted one (sent its headers).
ENDLESS_STREAMS = frozenset({"WatchTable"})
WATCH_SECONDS = 1.0
SERVER_UNARY_LIMIT_SECONDS = 10.0
SERVER_STREAM_LIMIT_SECONDS = 5.0
MAX_STREAM_MESSAGES = 200
MAX_DEPTH = 3
MAX_PREPARED_SNAPSHOTS = 10
#: Batches between checks that the prepared tables still exist (and are not too big).
RESTORE_EVERY = 4

SERVICES = [
    table_service_pb2.DESCRIPTOR.services_by_name["TableService"],
    ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"],
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
]
METHODS: list[MethodDescriptor] = [m for service in SERVICES for m in service.methods]
ERROR_DOMAIN = "lakehouse.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Codes that mean "nobody decided this": an unhandled exception or gRPC's fallback.
UNDELIBERATE = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
DELIBERATE_UNKNOWN_REASONS = {"COMMIT_STATE_UNKNOWN"}
DEAD_LETTERS = "_dead_letters"

# -- the prepared world ------------------------------------------------------------------------

NS, TABLE, OTHER_TABLE = "fuzz", "t", "t2"
PREPARED_TABLES = [(NS, TABLE), (NS, OTHER_TABLE)]
COLUMNS = ["id", "name", "amount", "ts", "tags", "Weird Name"]
_LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
_STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
SCHEMA = schema_pb2.Schema(
    fields=[
        schema_pb2.Field(name="id", type=_LONG, required=True),
        schema_pb2.Field(name="name", type=_STRING),
        schema_pb2.Field(
            name="amount",
            type=schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=12, scale=2)),
        ),
        schema_pb2.Field(
            name="ts", type=schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ)
        ),
        schema_pb2.Field(
            name="tags",
            type=schema_pb2.DataType(list=schema_pb2.ListType(element=_STRING)),
        ),
    ],
    identifier_field_names=["id"],
)
PARTITION_SPEC = schema_pb2.PartitionSpec(
    fields=[schema_pb2.PartitionField(source_column="ts", transform="day")]
)
SORT_ORDER = schema_pb2.SortOrder(
    fields=[schema_pb2.SortField(source_column="id", direction=schema_pb2.SORT_DIRECTION_ASC)]
)
ARROW_ROWS = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": pa.array(["a", None, "ü"], pa.string()),
        "ts": pa.array([0, 86_400_000_000, None], pa.timestamp("us", tz="UTC")),
    }
)

# -- values ------------------------------------------------------------------------------------

NAME_POOL = [NS, TABLE, OTHER_TABLE, "fz_a", "fz_b", "fz_c", "fz_1", "a", "_", DEAD_LETTERS]
ODD_STRINGS = [
    "",
    " ",
    ".",
    "..",
    "../..",
    "../../../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a.b",
    "fuzz.t",
    "a\x00b",
    "\x00",
    "%2e%2e%2f",
    "..%2f..%2f",
    "C:\\Windows\\System32",
    "\\\\server\\share",
    "\u202egnp.exe",
    "名前",
    "straße",
    "İstanbul",
    "🦆🦆",
    "e\u0301",
    "\ufeffbom",
    "\u200b",
    "x" * 129,
    "y" * 10_000,
    "Upper",
    "'; DROP TABLE fuzz.t; --",
    '" OR 1=1 --',
    "${jndi:ldap://127.0.0.1:1/a}",
    "{{7*7}}",
    "%s%s%s%n",
    "-1",
    "9" * 40,
    "NaN",
    "null",
    "\r\n",
    "\t",
    "a" * 128,
    "Weird Name",
]
URIS = [
    "file:///etc/passwd",
    "file:///etc/",
    "file:///dev/zero",
    "/etc/shadow",
    "../../../etc/passwd.metadata.json",
    "file:///etc/passwd#.metadata.json",
    "file:///proc/self/environ?.metadata.json",
    "s3://no-such-bucket/x/00000-x.metadata.json",
    "s3://../../x.metadata.json",
    "http://169.254.169.254/latest/meta-data/x.metadata.json",
    "http://127.0.0.1:1/x.metadata.json",
    "gs://bucket/a.metadata.json",
    "file:///nonexistent/v1.metadata.json",
]
ROW_FILTERS = [
    "id > 1",
    "name = 'a'",
    "amount IS NULL",
    "amount > 10.5",
    "id IN (1, 2, 3)",
    "id NOT BETWEEN 1 AND 3",
    "name LIKE 'a%'",
    "name LIKE '%a'",
    "ts > TIMESTAMP '2024-01-01 00:00:00+00:00'",
    "ts > DATE '2024-13-45'",
    "ts > TIMESTAMP 'yesterday'",
    "id > 99999999999999999999999999",
    "id = 'x'",
    "amount > 1e400",
    "tags = 'x'",
    '"Weird Name" = 1',
    "nope = 1",
    "address.city = 'x'",
    "(((((",
    "id >",
    "NOT NOT NOT id = 1",
    "id = 1" + " AND id = 1" * 400,
    "(" * 2000 + "id = 1" + ")" * 2000,
    "NOT " * 3000 + "id = 1",
]
STATEMENTS = [
    "SELECT 1",
    f"SELECT * FROM {NS}.{TABLE}",
    f"SELECT count(*) AS n FROM {NS}.{TABLE}",
    f"INSERT INTO {NS}.{TABLE} SELECT * FROM {NS}.{TABLE} LIMIT 1",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "ATTACH '/tmp/x.db' AS x",
    "COPY (SELECT 1) TO '/tmp/x.csv'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET memory_limit = '1TB'",
    "PRAGMA database_list",
    "SELECT getenv('HOME')",
    "SELECT * FROM duckdb_settings()",
    "SELECT 1; SELECT 2",
    "SELEC 1",
    f"SELECT * FROM {NS}.nope",
    "SELECT repeat('x', 100000000)",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r LIMIT 5",
]
TRANSFORMS = [
    "identity",
    "day",
    "month",
    "year",
    "hour",
    "void",
    "bucket[16]",
    "bucket[0]",
    "bucket[-1]",
    "bucket[99999999999999999999]",
    "truncate[4]",
    "truncate[0]",
    "bucket[",
    "][",
    "explode",
]
PROPERTY_KEYS = [
    "owner",
    "exists",
    "write.target-file-size-bytes",
    "lakehouse.ingest.invalid-row-policy",
    "lakehouse.compaction.min-input-files",
    "lakehouse.compaction.small-file-size-bytes",
    "lakehouse.orphans.min-file-age-ms",
    "history.expire.max-snapshot-age-ms",
    "history.expire.min-snapshots-to-keep",
    "format-version",
    "write.parquet.compression-codec",
    "write.format.default",
    "location",
    "commit.retry.num-retries",
    "write.parquet.row-group-limit",
    "write.parquet.compression-level",
    "write.metadata.delete-after-commit.enabled",
    "write.metadata.previous-versions-max",
    "write.object-storage.enabled",
    "write.metadata.metrics.default",
    "write.py-location-provider.impl",
    "write.data.path",
    "write.metadata.path",
]
PROPERTY_VALUES = ["dead-letter", "reject", "-1", "0", "1", "abc", "1e99", "zstd", "orc", "3", ""]
PROPERTY_VALUES += ["yes", "true", "truncate(x)", "none", "os.getcwd", "file:///tmp/elsewhere"]
# Keys pyiceberg's FileIO implementations and location providers read from a table's
# properties (it merges them over the catalog's): classes to import, endpoints, credentials,
# paths. The service refuses them and never lets a table's copy reach its storage layer.
PROPERTY_KEYS += [
    "py-io-impl",
    "io-impl",
    "write.location-provider.impl",
    "write.object-storage.partitioned-paths",
    "write.object-storage.path",
    "write.folder-storage.path",
    "s3.endpoint",
    "s3.access-key-id",
    "s3.secret-access-key",
    "s3.session-token",
    "s3.region",
    "s3.proxy-uri",
    "s3.signer",
    "s3.signer.uri",
    "s3.force-virtual-addressing",
    "client.region",
    "client.access-key-id",
    "client.secret-access-key",
    "gcs.project-id",
    "gcs.oauth2.token",
    "gcs.service.host",
    "adls.account-name",
    "adls.account-key",
    "adls.connection-string",
    "hf.endpoint",
    "hf.token",
    "warehouse",
    "user.team",
    "comment",
]
PROPERTY_VALUES += [
    "sys.exit",
    "builtins.print",
    "http://127.0.0.1:9",
    "pyiceberg.io.fsspec.FsspecFileIO",
]

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_EDGE_INTS = [0, 1, -1, 2, 3, 7, 100, 1000, 1001, 2**31 - 1, -(2**31), 2**32, 2**53 + 1]
_EDGE_INTS += [10**12, 253_402_300_800, 10**15, 2**63 - 1, -(2**63), 2**64 - 1]


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in _EDGE_INTS if low <= v <= high})
    return st.one_of(
        st.sampled_from(edges),
        st.integers(max(low, -1000), min(high, 1000)),
        st.integers(low, high),
    )


_GENERIC_STRINGS = st.one_of(
    st.sampled_from(ODD_STRINGS + NAME_POOL + COLUMNS),
    st.text(max_size=24),
    st.text(alphabet="abcxyz_019", min_size=1, max_size=10),
)


@dataclass
class World:
    """What the prepared state gives mutations to start from (filled in by ``prepare``)."""

    metadata_location: str = ""
    snapshot_ids: list[int] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    arrow_schema: bytes = b""
    arrow_batch: bytes = b""
    #: The plain API key of each caller class but UNAUTHENTICATED.
    keys: dict[str, str] = field(default_factory=dict)
    #: Forged JWTs by name (see ``forged_jwts``).
    forged: dict[str, str] = field(default_factory=dict)


WORLD = World()


_ANY_INDEX = st.integers(0, 7)
_COUNTS = st.integers(0, 3)
_COIN = st.booleans()
_ONE_IN_SIX = st.integers(0, 5)
_RANDOM_BYTES = st.binary(max_size=128)
_CUT = st.integers(0, 4096)


def _pick(draw: st.DrawFn, pool: list[T], fallback: Any) -> T:
    """One of a pool known only at run time (the prepared world), without a new strategy."""
    index = draw(_ANY_INDEX)  # drawn even from an empty pool: the same choices every time
    return pool[index % len(pool)] if pool else fallback


@functools.cache
def _strings_for(name: str) -> st.SearchStrategy[str]:
    """A string strategy for a field, smarter where the field's name says what it holds."""
    pools: dict[str, list[str]] = {
        "namespace": NAME_POOL,
        "new_namespace": NAME_POOL,
        "destination_namespace": NAME_POOL,
        "default_namespace": NAME_POOL,
        "table": NAME_POOL,
        "new_table": NAME_POOL,
        "destination_table": NAME_POOL,
        "name": NAME_POOL + COLUMNS,
        "column": COLUMNS,
        "new_name": COLUMNS + NAME_POOL,
        "parent": COLUMNS,
        "source_column": COLUMNS,
        "paths": COLUMNS,
        "identifier_field_names": COLUMNS,
        "row_filter": ROW_FILTERS,
        "overwrite_filter": ROW_FILTERS,
        "statement": STATEMENTS,
        "metadata_location": URIS,
        "source_prefix": URIS,
        "source_uris": URIS,
        "transform": TRANSFORMS,
        "keys": PROPERTY_KEYS,
        "removals": PROPERTY_KEYS,
        "updates": PROPERTY_VALUES,
        "properties": PROPERTY_VALUES,
    }
    pool = pools.get(name)
    if pool is None:
        return _GENERIC_STRINGS
    return st.one_of(st.sampled_from(pool), st.sampled_from(pool), _GENERIC_STRINGS)


@functools.cache
def _scalars(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Random values for a scalar field (enum numbers include unknown ones)."""
    kind = fd.type
    if kind in _INT_RANGES:
        return _ints(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(
            st.sampled_from(known), st.integers(-3, 64), st.sampled_from([2**31 - 1, -(2**31)])
        )
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_STRING:
        owner = fd.containing_type
        is_map_value = owner is not None and owner.GetOptions().map_entry and fd.name == "value"
        # The API's string-valued maps all hold properties (properties, updates).
        return _strings_for("properties" if is_map_value else fd.name)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _RANDOM_BYTES
    raise AssertionError(f"unexpected field type {kind} of {fd.full_name}")


def draw_scalar(draw: st.DrawFn, fd: FieldDescriptor) -> Any:
    """A value for a scalar field; some fields also get values of the prepared world."""
    if draw(_ONE_IN_SIX) < 2:
        if fd.name == "snapshot_id":
            return _pick(draw, WORLD.snapshot_ids, 0)
        if fd.name == "job_id":
            return _pick(draw, WORLD.job_ids, "")
        if fd.type == FieldDescriptor.TYPE_BYTES:
            valid = _pick(draw, [WORLD.arrow_schema, WORLD.arrow_batch], b"")
            return valid if draw(_COIN) else valid[: draw(_CUT)]
    return draw(_scalars(fd))


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


@functools.cache
def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@functools.cache
def _plain_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    in_oneof = {fd.name for oneof in descriptor.oneofs for fd in oneof.fields}
    return tuple(fd for fd in descriptor.fields if fd.name not in in_oneof)


@functools.cache
def _oneof_choices(descriptor: Descriptor) -> tuple[st.SearchStrategy[Any], ...]:
    return tuple(st.sampled_from([None, *oneof.fields]) for oneof in descriptor.oneofs)


@functools.cache
def _field_choice(descriptor: Descriptor) -> st.SearchStrategy[FieldDescriptor]:
    return st.sampled_from(list(descriptor.fields))


def set_random(draw: st.DrawFn, message: Message, fd: FieldDescriptor, depth: int) -> None:
    """Gives ``fd`` of ``message`` a random value (a few elements if repeated or a map)."""
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        target = getattr(message, fd.name)
        for _ in range(draw(_COUNTS)):
            if key_fd.type == FieldDescriptor.TYPE_STRING:
                key = draw(_strings_for("keys"))
            else:
                key = draw_scalar(draw, key_fd)
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(draw_message(draw, value_fd.message_type, depth + 1))
            else:
                target[key] = draw_scalar(draw, value_fd)
        return
    if fd.is_repeated:
        target = getattr(message, fd.name)
        del target[:]
        for _ in range(draw(_COUNTS)):
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                target.add().CopyFrom(draw_message(draw, fd.message_type, depth + 1))
            else:
                target.append(draw_scalar(draw, fd))
        return
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, fd.name).CopyFrom(draw_message(draw, fd.message_type, depth + 1))
        return
    setattr(message, fd.name, draw_scalar(draw, fd))


def draw_message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of ``descriptor`` with random fields set (one member per oneof at most)."""
    message = _message_class(descriptor)()
    if depth > MAX_DEPTH:
        return message
    chosen = [fd for fd in _plain_fields(descriptor) if draw(_COIN)]
    for choice in _oneof_choices(descriptor):
        member = draw(choice)
        if member is not None:
            chosen.append(member)
    for fd in chosen:
        set_random(draw, message, fd, depth)
    return message


def mutate(draw: st.DrawFn, base: Message) -> Message:
    """``base`` with one field, at any depth of what it sets, given a random value or cleared."""
    message = type(base)()
    message.CopyFrom(base)
    target, depth = message, 0
    while True:
        fd = draw(_field_choice(target.DESCRIPTOR))
        nested = fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(fd)
        if nested and depth < MAX_DEPTH and draw(_COIN):
            if fd.is_repeated and len(getattr(target, fd.name)):
                items = getattr(target, fd.name)
                target = items[draw(_ANY_INDEX) % len(items)]
                depth += 1
                continue
            if not fd.is_repeated and target.HasField(fd.name):
                target = getattr(target, fd.name)
                depth += 1
                continue
        if draw(_ONE_IN_SIX) == 0:
            target.ClearField(fd.name)
        else:
            set_random(draw, target, fd, depth)
        return message


def bases(method: MethodDescriptor) -> list[Message]:
    """Valid requests for ``method`` on the prepared world (mutations start from these)."""
    key = (method.full_name, WORLD.metadata_location, tuple(WORLD.snapshot_ids))
    cached = _BASES.get(key)
    if cached is None:
        cached = _BASES[key] = _bases(method)
    return cached


_BASES: dict[tuple[str, str, tuple[int, ...]], list[Message]] = {}


def _bases(method: MethodDescriptor) -> list[Message]:
    name = method.name
    job_id = WORLD.job_ids[0] if WORLD.job_ids else ""
    snapshot = WORLD.snapshot_ids[0] if WORLD.snapshot_ids else 0
    json_rows = rows_pb2.JsonRows()
    json_rows.rows.add().update({"id": 7, "name": "j", "amount": "1.25", "tags": ["x"]})
    arrow = write_rows_request(NS, TABLE, ARROW_ROWS)
    overwrite: dict[str, Any] = {
        "write_mode": ingest_pb2.WRITE_MODE_OVERWRITE,
        "overwrite_filter": "id = 7",
    }
    partitions = ingest_pb2.WRITE_MODE_OVERWRITE_PARTITIONS
    upsert = ingest_pb2.WRITE_MODE_UPSERT
    specific: dict[str, list[Message]] = {
        "CreateNamespace": [tpb.CreateNamespaceRequest(name="fz_a", properties={"owner": "f"})],
        "UpdateNamespaceProperties": [
            tpb.UpdateNamespacePropertiesRequest(name=NS, updates={"k": "v"}, removals=["gone"])
        ],
        "DeleteNamespace": [tpb.DeleteNamespaceRequest(name="fz_b")],
        "ListNamespaces": [tpb.ListNamespacesRequest(page_size=2)],
        "CreateTable": [
            tpb.CreateTableRequest(
                namespace=NS,
                table="fz_a",
                schema=SCHEMA,
                partition_spec=PARTITION_SPEC,
                sort_order=SORT_ORDER,
                properties={"owner": "f"},
            ),
            # The schema shorthand: type names for the fuzzer to mangle.
            tpb.CreateTableRequest(
                namespace=NS,
                table="fz_a",
                schema=schema_pb2.Schema(
                    fields=[
                        schema_pb2.Field(name="id", type_name="long", required=True),
                        schema_pb2.Field(name="m", type_name="map<string,decimal(9,2) not null>"),
                        schema_pb2.Field(name="s", type_name="struct<a:list<fixed[4]>,`b c`:int>"),
                    ],
                    identifier_field_names=["id"],
                ),
            ),
        ],
        "DeleteTable": [tpb.DeleteTableRequest(namespace=NS, table="fz_a", purge=True)],
        "RenameTable": [
            tpb.RenameTableRequest(namespace=NS, table="fz_a", new_namespace=NS, new_table="fz_b")
        ],
        "RegisterTable": [
            tpb.RegisterTableRequest(
                namespace=NS, table="fz_c", metadata_location=WORLD.metadata_location
            )
        ],
        "UpdateTable": [
            tpb.UpdateTableRequest(
                namespace=NS,
                table=TABLE,
                changes=[
                    tpb.TableChange(
                        add_column=tpb.AddColumn(field=schema_pb2.Field(name="extra", type=_LONG))
                    ),
                    tpb.TableChange(set_properties=tpb.SetProperties(properties={"owner": "fuzz"})),
                    tpb.TableChange(
                        add_partition_field=tpb.AddPartitionField(
                            field=schema_pb2.PartitionField(
                                source_column="id", transform="bucket[4]"
                            )
                        )
                    ),
                ],
            )
        ],
        "GetSnapshot": [tpb.GetSnapshotRequest(namespace=NS, table=TABLE, snapshot_id=snapshot)],
        "RollbackTable": [
            tpb.RollbackTableRequest(namespace=NS, table=OTHER_TABLE, snapshot_id=snapshot)
        ],
        "ReadRows": [
            tpb.ReadRowsRequest(
                namespace=NS,
                table=TABLE,
                row_filter="id > 1",
                row_limit=10,
                format=rows_pb2.ROW_FORMAT_JSON,
            ),
            tpb.ReadRowsRequest(
                namespace=NS,
                table=TABLE,
                row_limit=100,
                arrow_compression=rows_pb2.ARROW_COMPRESSION_ZSTD,
            ),
            # A session's stream: mutations alter the name (tampered) and the index.
            tpb.ReadRowsRequest(read_session="eyJ9.c2ln", stream=1),
        ],
        "CreateReadSession": [
            tpb.CreateReadSessionRequest(
                namespace=NS, table=TABLE, row_filter="id > 1", max_streams=4
            ),
            tpb.CreateReadSessionRequest(
                namespace=NS, table=TABLE, snapshot_id=snapshot, row_limit=10, max_streams=-1
            ),
        ],
        "CreateBranch": [
            tpb.CreateBranchRequest(namespace=NS, table=TABLE, name="fz-branch"),
            tpb.CreateBranchRequest(
                namespace=NS,
                table=TABLE,
                name="fz-kept",
                snapshot_id=snapshot,
                min_snapshots_to_keep=2,
                max_ref_age_ms=86_400_000,
            ),
        ],
        "CreateTag": [
            tpb.CreateTagRequest(namespace=NS, table=TABLE, name="fz-tag", snapshot_id=snapshot)
        ],
        "ListRefs": [tpb.ListRefsRequest(namespace=NS, table=TABLE)],
        "GetTableHealth": [tpb.GetTableHealthRequest(namespace=NS, table=TABLE)],
        "WatchTable": [
            tpb.WatchTableRequest(namespace=NS, table=TABLE),
            tpb.WatchTableRequest(namespace=NS, table=TABLE, after_snapshot_id=snapshot),
        ],
        "DeleteRef": [tpb.DeleteRefRequest(namespace=NS, table=TABLE, name="fz-tag")],
        "PublishBranch": [
            tpb.PublishBranchRequest(namespace=NS, table=TABLE, branch="fz-branch"),
        ],
        "DeleteRows": [
            tpb.DeleteRowsRequest(namespace=NS, table=TABLE, row_filter="id = 3"),
            tpb.DeleteRowsRequest(
                namespace=NS,
                table=OTHER_TABLE,
                row_filter="name = 'a'",
                request_id="fz-delete",
                expected_etag="fz-etag",
            ),
        ],
        "WriteRows": [
            ipb.WriteRowsRequest(namespace=NS, table=TABLE, json_rows=json_rows),
            arrow,
            ipb.WriteRowsRequest(
                namespace=NS,
                table=TABLE,
                json_rows=json_rows,
                invalid_row_policy=ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER,
            ),
            # The write modes that remove rows (the table is partitioned, with an identifier).
            ipb.WriteRowsRequest(namespace=NS, table=TABLE, json_rows=json_rows, **overwrite),
            ipb.WriteRowsRequest(
                namespace=NS,
                table=TABLE,
                arrow_record_batch=arrow.arrow_record_batch,
                write_mode=partitions,
            ),
            ipb.WriteRowsRequest(namespace=NS, table=TABLE, json_rows=json_rows, write_mode=upsert),
        ],
        "AppendRows": [
            ipb.AppendRowsRequest(
                namespace=NS,
                table=TABLE,
                writer_id="fz-writer",
                offset=0,
                arrow_schema=arrow.arrow_schema,
                arrow_record_batch=arrow.arrow_record_batch,
            ),
            ipb.AppendRowsRequest(namespace=NS, table=TABLE, json_rows=json_rows),
            ipb.AppendRowsRequest(namespace=NS, table=TABLE, json_rows=json_rows, **overwrite),
            ipb.AppendRowsRequest(
                namespace=NS,
                table=TABLE,
                arrow_schema=arrow.arrow_schema,
                arrow_record_batch=arrow.arrow_record_batch,
                write_mode=partitions,
            ),
            ipb.AppendRowsRequest(
                namespace=NS,
                table=TABLE,
                writer_id="fz-cdc",
                offset=0,
                json_rows=json_rows,
                write_mode=upsert,
            ),
        ],
        "GetWriter": [ipb.GetWriterRequest(namespace=NS, table=TABLE, writer_id="fz-writer")],
        "CreateJob": [
            jpb.CreateJobRequest(
                spec=job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=STATEMENTS[2]))
            ),
            jpb.CreateJobRequest(
                request_id="fz-req",
                spec=job_pb2.JobSpec(
                    sql=job_pb2.SqlJobSpec(
                        statement=STATEMENTS[1],
                        destination_namespace=NS,
                        destination_table="fz_dest",
                    )
                ),
            ),
            jpb.CreateJobRequest(
                spec=job_pb2.JobSpec(
                    compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=TABLE)
                )
            ),
            jpb.CreateJobRequest(
                spec=job_pb2.JobSpec(
                    expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
                        namespace=NS, table=OTHER_TABLE, retain_last=1
                    )
                )
            ),
            jpb.CreateJobRequest(
                spec=job_pb2.JobSpec(
                    remove_orphan_files=job_pb2.RemoveOrphanFilesJobSpec(
                        namespace=NS, table=TABLE, dry_run=True
                    )
                )
            ),
            jpb.CreateJobRequest(
                spec=job_pb2.JobSpec(
                    import_files=job_pb2.ImportFilesJobSpec(
                        namespace=NS, table=TABLE, source_uris=["file:///etc/passwd"]
                    )
                )
            ),
        ],
        "ListJobs": [jpb.ListJobsRequest(namespace=NS, page_size=5)],
    }
    if name in specific:
        return specific[name]
    # Any other request: the prepared names (and the prepared job) in the fields that take them.
    message = _message_class(method.input_type)()
    for fd in method.input_type.fields:
        value = {"namespace": NS, "name": NS, "table": TABLE, "job_id": job_id}.get(fd.name)
        if value is not None and fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated:
            setattr(message, fd.name, value)
    return [message]


# -- callers -----------------------------------------------------------------------------------

ADMIN, DEVELOPER, VIEWER, LIMITED = "admin", "developer", "viewer", "limited"
UNAUTHENTICATED = "unauthenticated"
CALLER_CLASSES = (ADMIN, DEVELOPER, VIEWER, LIMITED, UNAUTHENTICATED)
#: The role of each key. LIMITED is a developer granted GRANTED_NS only, which no request
#: names (it is in none of the pools), so it may never change anything.
KEY_ROLES: dict[str, RoleName] = {
    ADMIN: "admin",
    DEVELOPER: "developer",
    VIEWER: "viewer",
    LIMITED: "developer",
}
GRANTED_NS = "granted"
#: Mostly admin: its calls pass every check and reach the handlers, where the depth is.
_CALLER = st.sampled_from(
    [ADMIN] * 26 + [DEVELOPER] * 4 + [VIEWER] * 3 + [LIMITED] * 3 + [UNAUTHENTICATED] * 4
)
#: Methods that change nothing, written from the issue's role table (not from the server's
#: permission table): the only ones a viewer or the limited key may ever get OK for.
READ_METHODS = frozenset(
    {
        "ListRefs",
        "GetTableHealth",
        "WatchTable",
        "GetNamespace",
        "ListNamespaces",
        "GetTable",
        "ListTables",
        "ListSnapshots",
        "GetSnapshot",
        "ReadRows",
        "CreateReadSession",
        "GetWriter",
        "GetJob",
        "ListJobs",
        "WatchJob",
    }
)

#: Kinds of broken credentials; the first three carry no ``authorization`` header at all.
MISSING_CREDENTIALS = ("missing", "other-header", "binary")
BAD_CREDENTIALS = (
    *MISSING_CREDENTIALS,
    "no-token",
    "no-scheme",
    "wrong-scheme",
    "basic",
    "truncated",
    "altered",
    "garbage",
    "bearer-garbage",
    "huge",
    "duplicate",
    "jwt-garbage",
    "jwt-forged",
)
FORGED_JWTS = (
    "alg-none",
    "wrong-secret",
    "expired",
    "not-yet-valid",
    "unknown-role",
    "no-expiry",
    "hs256-with-api-key",
)
#: The largest authorization value sent: under the server's 16 KiB metadata limit with the
#: other headers (beyond it gRPC itself answers RESOURCE_EXHAUSTED, before any handler).
HUGE_HEADER = 15_000
Metadata = tuple[tuple[str, str | bytes], ...]

_BAD_KIND = st.sampled_from(BAD_CREDENTIALS)
_ANY_KEY = st.sampled_from([ADMIN, DEVELOPER, VIEWER, LIMITED])
_SCHEME = st.sampled_from(["Bearer"] * 4 + ["bearer", "BEARER"])
_WRONG_SCHEME = st.sampled_from(
    ["Basic", "Token", "ApiKey", "Digest", "Negotiate", "Bearer:", "Bearer,", "Bearer%20", "JWT"]
)
_NO_TOKEN = st.sampled_from(["", " ", "Bearer", "Bearer ", "bearer   ", 'Bearer ""', "null"])
_OTHER_HEADER = st.sampled_from(
    ["x-api-key", "api-key", "authentication", "proxy-authorization", "x-authorization", "token"]
)
_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=48)
_TOKEN_CHAR = st.sampled_from(string.ascii_letters + string.digits + "-_")
_TOKEN_PREFIX = st.sampled_from(["", "lh_", "eyJ", "lh_lh_", "%C3%A9", "\\u00e9"])
_HUGE = st.integers(2_000, HUGE_HEADER - len("Bearer "))
_JWT_ALG = st.sampled_from(["none", "None", "HS256", "HS512", "RS256", "ES256", "", "A" * 40])
_JWT_ROLE = st.sampled_from(["admin", "developer", "root", "", "ADMIN"])
_FORGED = st.sampled_from(FORGED_JWTS)
_EXPIRY = _ints(0, 2**62)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned_jwt(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    parts = (json.dumps(header).encode(), json.dumps(payload).encode(), signature)
    return ".".join(_b64url(part) for part in parts)


def forged_jwts(secret: str, api_key: str) -> dict[str, str]:
    """JWTs no server configured with ``secret`` may accept, each claiming the admin role."""
    import jwt

    now = int(time.time())
    claims = {"sub": "mallory", "role": "admin", "iat": now, "exp": now + 3600}
    other_secret = secrets.token_urlsafe(48)
    tokens = {
        "alg-none": _unsigned_jwt({"alg": "none", "typ": "JWT"}, claims, b""),
        "wrong-secret": jwt.encode(claims, other_secret, algorithm="HS256"),
        "expired": jwt.encode(claims | {"exp": now - 3600}, secret, algorithm="HS256"),
        "not-yet-valid": jwt.encode(claims | {"nbf": now + 3600}, secret, algorithm="HS256"),
        "unknown-role": jwt.encode(claims | {"role": "root"}, secret, algorithm="HS256"),
        "no-expiry": jwt.encode(
            {k: v for k, v in claims.items() if k != "exp"}, secret, algorithm="HS256"
        ),
        # An API key is no JWT secret: a token "signed" with one must not pass either.
        "hs256-with-api-key": jwt.encode(claims, api_key, algorithm="HS256"),
    }
    assert set(tokens) == set(FORGED_JWTS)
    return tokens


def draw_caller(draw: st.DrawFn) -> tuple[str, str, Metadata]:
    """A caller class, the kind of its credentials, and the metadata that carries them."""
    caller = draw(_CALLER)
    if caller != UNAUTHENTICATED:
        return caller, "bearer", ((AUTHORIZATION_HEADER, f"{draw(_SCHEME)} {WORLD.keys[caller]}"),)
    kind = draw(_BAD_KIND)
    return caller, kind, draw_bad_credentials(draw, kind, WORLD.keys[draw(_ANY_KEY)])


def draw_bad_credentials(draw: st.DrawFn, kind: str, key: str) -> Metadata:
    """Metadata of ``kind`` (one of BAD_CREDENTIALS) that no server may accept.

    ``key`` is a valid API key: most kinds are near misses of one.
    """

    def authorization(value: str) -> Metadata:
        return ((AUTHORIZATION_HEADER, value),)

    if kind == "missing":
        return ()
    if kind == "other-header":
        return ((draw(_OTHER_HEADER), f"Bearer {key}" if draw(_COIN) else key),)
    if kind == "binary":
        value = f"Bearer {key}".encode() if draw(_COIN) else draw(_RANDOM_BYTES)
        return ((f"{AUTHORIZATION_HEADER}-bin", value),)
    if kind == "no-token":
        return authorization(draw(_NO_TOKEN))
    if kind == "no-scheme":
        return authorization(key)
    if kind == "wrong-scheme":
        return authorization(f"{draw(_WRONG_SCHEME)} {key}")
    if kind == "basic":
        user = "admin" if draw(_COIN) else draw(_PRINTABLE)
        password = key if draw(_COIN) else draw(_PRINTABLE)
        return authorization("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if kind == "truncated":
        return authorization(f"Bearer {key[: draw(_CUT) % len(key)]}")
    if kind == "altered":
        if draw(_COIN):
            return authorization(f"Bearer {key}{draw(_TOKEN_CHAR)}")
        where = draw(_CUT) % len(key)
        char = draw(_TOKEN_CHAR)
        if char == key[where]:
            char = "A" if char != "A" else "B"
        return authorization(f"Bearer {key[:where]}{char}{key[where + 1 :]}")
    if kind == "garbage":
        return authorization(draw(_PRINTABLE))
    if kind == "bearer-garbage":
        return authorization(f"Bearer {draw(_TOKEN_PREFIX)}{draw(_PRINTABLE)}")
    if kind == "huge":
        size = draw(_HUGE)
        token = (key * (size // len(key) + 1))[:size]
        if draw(_COIN):  # three parts: the JWT parser's turn
            token = f"eyJ{token[: size // 3]}.{token[size // 3 : 2 * size // 3]}.{token[-10:]}"
        return authorization(f"Bearer {token}")
    if kind == "duplicate":
        # Two headers, even two valid ones, are not one credential.
        second = f"Bearer {key}" if draw(_COIN) else draw(_PRINTABLE)
        return ((AUTHORIZATION_HEADER, f"Bearer {key}"), (AUTHORIZATION_HEADER, second))
    if kind == "jwt-garbage":
        header = {"alg": draw(_JWT_ALG), "typ": "JWT"}
        payload = {"sub": draw(_PRINTABLE), "role": draw(_JWT_ROLE), "exp": draw(_EXPIRY)}
        if draw(_COIN):
            return authorization(f"Bearer {_unsigned_jwt(header, payload, draw(_RANDOM_BYTES))}")
        parts = [_b64url(draw(_RANDOM_BYTES)) for _ in range(3)]
        return authorization("Bearer " + ".".join(parts))
    if kind == "jwt-forged":
        return authorization(f"Bearer {WORLD.forged[draw(_FORGED)]}")
    raise AssertionError(f"unknown kind of bad credentials {kind}")


# -- calls -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzCall:
    """One call: the method, the serialized request(s) (several for a request stream), and
    the caller: its class, the kind of its credentials, and the metadata carrying them."""

    method: MethodDescriptor
    kind: str
    payloads: tuple[bytes, ...]
    caller: str = ADMIN
    credential: str = "bearer"
    metadata: Metadata = ()

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def describe(self) -> str:
        requests = []
        for payload in self.payloads:
            try:
                parsed = _message_class(self.method.input_type).FromString(payload)
                text = f"{type(parsed).__name__}({str(parsed)[:600]!r})"
            except DecodeError:
                text = f"raw {payload[:200]!r}"
            requests.append(text)
        # The caller by class and kind only: the metadata holds the keys.
        who = f"{self.caller}/{self.credential}"
        return f"{self.path} [{self.kind}, {who}] " + " | ".join(requests)


_DAMAGE = st.sampled_from(["flip", "truncate", "insert", "duplicate"])
_BIT = st.integers(0, 7)
_SPLICE = st.binary(min_size=1, max_size=8)
_DAMAGES = st.integers(1, 3)
_SHORT_BYTES = st.binary(max_size=96)
_KINDS = st.sampled_from(["generated", "mutated", "mutated", "raw"])
_METHOD = st.sampled_from(METHODS)


def draw_raw_bytes(draw: st.DrawFn, method: MethodDescriptor) -> bytes:
    """Random bytes, or a valid request's bytes damaged."""
    if draw(_COIN):
        return draw(_SHORT_BYTES)
    data = bytearray(_pick(draw, bases(method), None).SerializeToString())
    for _ in range(draw(_DAMAGES)):
        operation = draw(_DAMAGE)
        where = draw(_CUT) % max(len(data), 1)
        if operation == "flip" and data:
            data[where] ^= 1 << draw(_BIT)
        elif operation == "truncate":
            del data[where:]
        elif operation == "insert":
            data[where:where] = draw(_SPLICE)
        else:
            data += data[where:]
    return bytes(data)


@st.composite
def fuzz_calls(draw: st.DrawFn) -> FuzzCall:
    """A call to any method, its requests generated, mutated or raw, by any caller."""
    method = draw(_METHOD)
    kind = draw(_KINDS)
    count = draw(_COUNTS) if method.client_streaming else 1
    payloads = []
    for index in range(count):
        if kind == "raw":
            payloads.append(draw_raw_bytes(draw, method))
            continue
        if kind == "mutated" or (method.client_streaming and index == 0 and draw(_COIN)):
            message = mutate(draw, _pick(draw, bases(method), None))
        else:
            message = draw_message(draw, method.input_type)
        payloads.append(message.SerializeToString())
    caller, credential, metadata = draw_caller(draw)
    return FuzzCall(method, kind, tuple(payloads), caller, credential, metadata)


@dataclass
class Outcome:
    """What came back from one call."""

    code: grpc.StatusCode
    message: str = ""
    status: status_pb2.Status | None = None
    responses: list[bytes] = field(default_factory=list)
    #: The code is the one the server logged, the client's being grpc/grpc#36066's INTERNAL.
    as_logged: bool = False


def _decoded_status(trailers: Any) -> status_pb2.Status | None:
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


async def execute(channel: grpc.aio.Channel, call: FuzzCall, request_id: str) -> Outcome:
    """Sends ``call`` with identity serializers and collects the answer."""
    metadata = (("x-request-id", request_id), *call.metadata)
    method = call.method
    try:
        if not method.client_streaming and not method.server_streaming:
            reply = await channel.unary_unary(call.path)(
                call.payloads[0], metadata=metadata, timeout=CLIENT_TIMEOUT_SECONDS
            )
            return Outcome(grpc.StatusCode.OK, responses=[reply])
        if method.client_streaming and not method.server_streaming:
            reply = await channel.stream_unary(call.path)(
                iter(call.payloads), metadata=metadata, timeout=CLIENT_TIMEOUT_SECONDS
            )
            return Outcome(grpc.StatusCode.OK, responses=[reply])
        if method.client_streaming:
            stream = channel.stream_stream(call.path)(
                iter(call.payloads), metadata=metadata, timeout=CLIENT_TIMEOUT_SECONDS
            )
        else:
            stream = channel.unary_stream(call.path)(
                call.payloads[0], metadata=metadata, timeout=CLIENT_TIMEOUT_SECONDS
            )
            if method.name in ENDLESS_STREAMS:
                return await _listen_to_watch(stream)
        responses = []
        async for reply in stream:
            responses.append(reply)
            if len(responses) >= MAX_STREAM_MESSAGES:
                stream.cancel()
                return Outcome(grpc.StatusCode.OK, "cancelled by the fuzzer", None, responses)
        return Outcome(grpc.StatusCode.OK, responses=responses)
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "", _decoded_status(err.trailing_metadata()))


async def _listen_to_watch(stream: Any) -> Outcome:
    """A watch never ends by itself. The server sends its headers once it has accepted the
    watch (a refusal comes before, as the call's status), so the fuzzer waits for them (up to
    the call's deadline: a watch neither accepted nor refused in time is a failure), listens
    ``WATCH_SECONDS`` more, then hangs up. Waiting on the headers, not a clock, keeps a refusal
    that a loaded machine answers late from passing for a watch."""
    await stream.initial_metadata()
    responses: list[Any] = []

    async def listen() -> None:
        async for reply in stream:
            responses.append(reply)
            if len(responses) >= MAX_STREAM_MESSAGES:
                return

    try:
        await asyncio.wait_for(listen(), WATCH_SECONDS)
    except TimeoutError:
        stream.cancel()
        return Outcome(grpc.StatusCode.OK, "ended by the fuzzer", None, responses)
    stream.cancel()
    return Outcome(grpc.StatusCode.OK, "cancelled by the fuzzer", None, responses)


# -- the fuzzer: Hypothesis and the gRPC client, in a process of their own ---------------------
#
# Generating requests and being a gRPC client cost about as much CPU as answering the cheap
# ones. In the server's process they would share its GIL, and 10,000 requests would take
# more than a minute; in a child process they run alongside, the server stays in-process.


@dataclass(frozen=True)
class Answer:
    """One call and its answer, as the fuzzer process reports them (picklable)."""

    request_id: str
    method: str
    kind: str
    caller: str
    credential: str
    payloads: tuple[bytes, ...]
    code: str
    message: str
    status: bytes | None
    responses: list[bytes]
    seconds: float

    def call(self) -> FuzzCall:
        method = METHODS_BY_NAME[self.method]
        return FuzzCall(method, self.kind, self.payloads, self.caller, self.credential)

    def outcome(self) -> Outcome:
        status = status_pb2.Status.FromString(self.status) if self.status is not None else None
        return Outcome(grpc.StatusCode[self.code], self.message, status, self.responses)


METHODS_BY_NAME = {m.full_name: m for m in METHODS}
#: The keys and forged tokens reach the fuzzer in its environment, not on its command line
#: (which ``ps`` shows).
CREDENTIALS_ENV = "FUZZ_CREDENTIALS"


def run_fuzzer(target: str, out: BinaryIO, examples: int, seed_value: int) -> None:
    """Sends ``examples`` batches of Hypothesis-made calls to ``target``.

    The answers go to ``out`` as pickled lists of ``Answer`` fields, one list per batch. Batches are
    handed to the client's event loop without waiting for them (up to a few at a time), so
    Hypothesis generates the next batch while the server answers this one.
    """
    loop = LoopThread()
    lock = threading.Lock()
    numbered = iter(range(10**9))
    outstanding = threading.BoundedSemaphore(BATCHES_IN_FLIGHT)
    sent: list[concurrent.futures.Future[None]] = []

    async def connect() -> tuple[grpc.aio.Channel, asyncio.Semaphore]:
        channel = grpc.aio.insecure_channel(target)
        await asyncio.wait_for(channel.channel_ready(), 10)
        return channel, asyncio.Semaphore(IN_FLIGHT)

    channel, in_flight = loop.run(connect())

    async def one(call: FuzzCall) -> Answer:
        request_id = f"fuzz-{next(numbered)}"
        async with in_flight:
            started = time.monotonic()
            outcome = await execute(channel, call, request_id)
            seconds = time.monotonic() - started
        status = outcome.status.SerializeToString() if outcome.status is not None else None
        return Answer(
            request_id,
            call.method.full_name,
            call.kind,
            call.caller,
            call.credential,
            call.payloads,
            outcome.code.name,
            outcome.message,
            status,
            outcome.responses,
            seconds,
        )

    async def batch(calls: list[FuzzCall]) -> None:
        answers = await asyncio.gather(*(one(call) for call in calls))
        with lock:  # plain tuples: this module is __main__ here, a test module there
            pickle.dump([dataclasses.astuple(a) for a in answers], out)
            out.flush()

    @seed(seed_value)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(st.lists(fuzz_calls(), min_size=BATCH, max_size=BATCH))
    def run(calls: list[FuzzCall]) -> None:
        outstanding.acquire()
        future = asyncio.run_coroutine_threadsafe(batch(calls), loop.loop)
        future.add_done_callback(lambda _: outstanding.release())
        sent.append(future)

    try:
        # One call per method and caller class first: the random draws are not uniform (a
        # run once never drew UpdateNamespaceProperties for the limited key), and every pair
        # must be judged at least once.
        asyncio.run_coroutine_threadsafe(batch(sweep_calls()), loop.loop).result(timeout=120)
        run()
        for future in sent:
            future.result(timeout=120)
    finally:
        loop.run(channel.close())
        loop.close()


def sweep_calls() -> list[FuzzCall]:
    """A valid request of every method from every caller class (no credentials for
    ``unauthenticated``): what the random phase may by chance leave out."""
    calls = []
    for method in METHODS:
        valid = bases(method)
        request = valid[0] if valid else _message_class(method.input_type)()
        payloads = (request.SerializeToString(),)
        for caller in CALLER_CLASSES:
            if caller == UNAUTHENTICATED:
                credential, metadata = "missing", ()
            else:
                header = (AUTHORIZATION_HEADER, f"Bearer {WORLD.keys[caller]}")
                credential, metadata = "bearer", (header,)
            calls.append(FuzzCall(method, "generated", payloads, caller, credential, metadata))
    return calls


#: Calls of the sweep: methods x caller classes.
SWEEP = len(CALLER_CLASSES)


def fuzzer_main(argv: list[str]) -> int:
    """``python test_fuzz.py TARGET FD EXAMPLES SEED WORLD_JSON``: the fuzzer process."""
    target, fd, examples, seed_value, world = argv
    state = json.loads(world)
    WORLD.metadata_location = state["metadata_location"]
    WORLD.snapshot_ids = state["snapshot_ids"]
    WORLD.job_ids = state["job_ids"]
    WORLD.arrow_schema = base64.b64decode(state["arrow_schema"])
    WORLD.arrow_batch = base64.b64decode(state["arrow_batch"])
    credentials = json.loads(os.environ[CREDENTIALS_ENV])
    WORLD.keys, WORLD.forged = credentials["keys"], credentials["forged"]
    with os.fdopen(int(fd), "wb") as out:
        run_fuzzer(target, out, int(examples), int(seed_value))
    return 0


# -- judging the answers ---------------------------------------------------------------------


def _error_info(status: status_pb2.Status | None) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def status_problem(code: grpc.StatusCode, status: status_pb2.Status | None) -> str | None:
    """Why an answer is not deliberate, or None if it is."""
    if code == grpc.StatusCode.OK:
        return None
    info = _error_info(status)
    if info is None or info.domain != ERROR_DOMAIN:
        return f"{code.name} without a lakehouse.v1 ErrorInfo"
    if code in UNDELIBERATE and not (
        code == grpc.StatusCode.UNKNOWN and info.reason in DELIBERATE_UNKNOWN_REASONS
    ):
        return f"{code.name} (reason {info.reason})"
    return None


def outcome_problems(call: FuzzCall, outcome: Outcome) -> list[str]:
    """Everything wrong with an answer."""
    problems = access_problems(call, outcome)
    if outcome.as_logged:
        if outcome.code in UNDELIBERATE:
            problems.append(f"{outcome.code.name} (as the server logged it)")
        return problems
    problem = status_problem(outcome.code, outcome.status)
    if problem is not None:
        problems.append(f"{problem}: {outcome.message}")
    output = _message_class(call.method.output_type)
    for raw in outcome.responses:
        try:
            response = output.FromString(raw)
        except DecodeError:
            problems.append(f"a response that does not parse as {output.__name__}")
            continue
        if isinstance(response, ipb.AppendRowsResponse) and response.HasField("error"):
            code = _code(response.error.code)
            problem = status_problem(code, response.error)
            if problem is not None:
                problems.append(f"acknowledgement {problem}: {response.error.message}")
    return problems


@dataclass(frozen=True)
class Refusal:
    """How a call must be refused, whatever its request says.

    Attributes:
        answers: The acceptable answers, as ``CODE`` or ``CODE/REASON``.
        why: Why, for the failure message.
        permission: The permission a PERMISSION_DENIED must name ("" for any).
        unless_ended_before: The refusal is due to a later request of a stream, which the
            handler may not read: it may also end the call with an error of its own.
    """

    answers: frozenset[str]
    why: str
    permission: str = ""
    unless_ended_before: bool = False


_DENIED = "PERMISSION_DENIED"
_REFUSALS = {"UNAUTHENTICATED", _DENIED}


def _first_request(call: FuzzCall) -> Message | None:
    """The (first) request as the server parses it; None if there is none or it does not."""
    if not call.payloads:
        return None
    try:
        return _message_class(call.method.input_type).FromString(call.payloads[0])
    except (DecodeError, RecursionError, UnicodeDecodeError):
        return None


def refusal(call: FuzzCall) -> Refusal | None:
    """How ``call`` must be refused for its caller, or None when the handler decides.

    The permission comes from the server's one table (``RULES``; the role matrix test checks
    that table against docs/security.md independently). Request bytes that do not parse are no
    way around a check: they get UNAUTHENTICATED without valid credentials, and
    PERMISSION_DENIED from a role lacking the permission an empty request of the method needs
    (the least any of its requests needs); only then MALFORMED_REQUEST.
    """
    if call.caller == UNAUTHENTICATED:
        return Refusal(frozenset({"UNAUTHENTICATED"}), f"{call.credential} credentials")
    role = KEY_ROLES[call.caller]
    rule = RULES[call.path]
    streamed = call.method.client_streaming
    request = _first_request(call)
    if streamed:
        # Checked before any message arrives, so it depends on none.
        permission = rule.fixed_permission
    else:
        parsed = request or _message_class(call.method.input_type)()
        permission = rule.permission_for(parsed)
    if permission is not None and not role_allows(role, permission):
        return Refusal(frozenset({_DENIED}), f"role {role} lacks {permission}", str(permission))
    further = further_refusal(call, role)
    if further is not None and not further.unless_ended_before:
        return further  # a request's further permission is checked before its namespaces
    if call.caller != LIMITED or request is None:
        return further
    # A request stream's grants are checked on its messages, the first naming its own table.
    target = rule.target(request)
    outside = sorted({n for n in target.namespaces if n != GRANTED_NS})
    if target.any_namespace or outside:
        why = f"the limited key reaches {outside or 'any namespace'}"
        return Refusal(frozenset({_DENIED}), why, str(permission))
    if target.job_id:
        # No job lies in GRANTED_NS: an existing job is denied, an unknown id is not found.
        answers = frozenset({_DENIED, "NOT_FOUND", "INVALID_ARGUMENT"})
        return Refusal(answers, "the limited key names a job", str(permission))
    return None


def further_refusal(call: FuzzCall, role: RoleName) -> Refusal | None:
    """How a request needing more than its method's permission (a write mode that removes
    rows, unknown mode numbers included) must be refused, if its caller's role lacks it.

    Each request of a stream is checked as the handler reads it, so a stream is refused at
    its first such request; unless that is the first, the handler may have ended the call
    before reading it. A request that does not parse ends the call there (MALFORMED_REQUEST).
    """
    rule = RULES[call.path]
    for index, payload in enumerate(call.payloads):
        try:
            request = _message_class(call.method.input_type).FromString(payload)
        except (DecodeError, RecursionError, UnicodeDecodeError):
            return None
        further = rule.further_permission_for(request)
        if further is not None and not role_allows(role, further):
            why = f"role {role} lacks {further}, which request {index} needs"
            return Refusal(frozenset({_DENIED}), why, str(further), index > 0)
    return None


def access_problems(call: FuzzCall, outcome: Outcome) -> list[str]:
    """What is wrong with how the answer treats the call's caller."""
    code = outcome.code.name
    info = _error_info(outcome.status)
    answer = f"{code}/{info.reason}" if info is not None else code
    expected = refusal(call)
    problems = []
    if expected is None:
        if code in _REFUSALS:
            problems.append(f"{answer} for the {call.caller} key, which may make this call")
    elif code not in expected.answers and answer not in expected.answers:
        ended_before = expected.unless_ended_before and code not in _REFUSALS | {"OK"}
        if not ended_before:
            wanted = " or ".join(sorted(expected.answers))
            problems.append(f"{answer}, not {wanted}: {expected.why}")
    elif info is not None and code in _REFUSALS:
        if info.reason != code:
            problems.append(f"{code} with reason {info.reason}")
        named = info.metadata.get("permission", "")
        if code == _DENIED and expected.permission and named != expected.permission:
            problems.append(f"{code} naming {named!r}, not {expected.permission}")
        # Clients learn that credentials are missing or invalid, and nothing else.
        wanted = (
            "missing credentials"
            if call.credential in MISSING_CREDENTIALS
            else "invalid credentials"
        )
        if code == "UNAUTHENTICATED" and outcome.message != wanted:
            problems.append(f"{code} saying {outcome.message!r}, not {wanted!r}")
    if code != "OK" or call.caller not in (VIEWER, LIMITED):
        return problems
    # An empty request stream asks for nothing (the permission was checked before it).
    if call.method.name not in READ_METHODS and call.payloads:
        problems.append(f"OK for the {call.caller} key, on a method that changes data")
    if call.caller == LIMITED:
        output = _message_class(call.method.output_type)
        for raw in outcome.responses:
            with contextlib.suppress(DecodeError):
                response = output.FromString(raw)
                if isinstance(response, tpb.ListNamespacesResponse):
                    seen = {n.name for n in response.namespaces}
                elif isinstance(response, jpb.ListJobsResponse):
                    seen = {j.namespace for j in response.jobs}
                else:
                    continue
                if seen - {GRANTED_NS}:
                    problems.append(f"the limited key was shown {sorted(seen - {GRANTED_NS})}")
    return problems


def _code(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


@dataclass
class Ledger:
    """Counts, failures, and the names calls answered OK for."""

    namespaces: set[str] = field(default_factory=set)
    tables: set[tuple[str, str]] = field(default_factory=set)
    destination_tables: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    #: Calls by (method, caller class), answers by (caller class, code), and the calls with
    #: bad credentials by kind.
    callers: Counter[tuple[str, str]] = field(default_factory=Counter)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    credentials: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def record(
        self, call: FuzzCall, outcome: Outcome, problems: list[str], log: str, seconds: float
    ) -> None:
        self.calls[call.method.name] += 1
        self.callers[call.method.name, call.caller] += 1
        self.codes[call.caller, outcome.code.name] += 1
        if call.caller == UNAUTHENTICATED:
            self.credentials[call.credential] += 1
        if seconds > 1.0:
            self.slowest.append((seconds, f"{call.describe()[:300]} -> {outcome.code.name}"))
        info = _error_info(outcome.status)
        key = f"{outcome.code.name}/{info.reason if info else '-'}"
        self.reasons[key] += 1
        self.samples.setdefault(key, f"{call.method.name}: {outcome.message[:160]}")
        if problems:
            # Grouped by what went wrong: the server's exception if it logged one.
            last_lines = [line for line in log.splitlines() if line and not line[0].isspace()]
            group = last_lines[-2] if len(last_lines) >= 2 else "; ".join(problems)
            self.failures.setdefault(group[:200], []).append(
                f"{call.describe()}\n  -> {'; '.join(problems)}" + (f"\n{log}" if log else "")
            )
        if outcome.code != grpc.StatusCode.OK:
            return
        requests = []
        for payload in call.payloads:
            with contextlib.suppress(DecodeError):
                requests.append(_message_class(call.method.input_type).FromString(payload))
        for request in requests:
            if isinstance(request, tpb.CreateNamespaceRequest):
                self.namespaces.add(request.name)
            elif isinstance(request, tpb.CreateTableRequest | tpb.RegisterTableRequest):
                self.tables.add((request.namespace, request.table))
            elif isinstance(request, tpb.RenameTableRequest):
                self.tables.add((request.new_namespace or request.namespace, request.new_table))
            elif isinstance(request, jpb.CreateJobRequest):
                self.destination_tables.add(request.spec.sql.destination_table)
        for raw in outcome.responses:
            if call.method.name == "CreateJob":
                self.jobs.add(jpb.CreateJobResponse.FromString(raw).job.id)

    def report(self) -> str:
        """Calls by method and caller, codes by caller, bad credentials by kind, answers by
        code and reason (with an example each), and the slowest calls."""
        lines = [f"calls by method: total = {' / '.join(CALLER_CLASSES)}"]
        for method in sorted(self.calls):
            counts = "/".join(str(self.callers[method, c]) for c in CALLER_CLASSES)
            lines.append(f"  {method:<26} {self.calls[method]:5d} = {counts}")
        lines.append("codes by caller:")
        for caller in CALLER_CLASSES:
            codes = Counter({code: n for (c, code), n in self.codes.items() if c == caller})
            text = ", ".join(f"{code} {n}" for code, n in codes.most_common())
            lines.append(f"  {caller:<16} {text}")
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.credentials.items()))
        lines.append(f"bad credentials: {kinds}")
        lines.append("answers by code/reason:")
        lines += [
            f"{count:6d} {key}: e.g. {self.samples[key]}"
            for key, count in self.reasons.most_common()
        ]
        lines += [f"slow: {s:.1f} s {text}" for s, text in sorted(self.slowest)[-5:]]
        return "\n".join(lines)


class ServerLog(logging.Handler):
    """What the server logged per request id: its status code, and any error with traceback."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.errors: dict[str, list[str]] = {}
        self.codes: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # Jobs log their unexpected errors with the job id instead of a request id.
        request_id = getattr(record, "request_id", "") or getattr(record, "job_id", "")
        if record.name == "lakehouse.rpc" and record.getMessage() == "rpc":
            self.codes[request_id] = getattr(record, "code", "")
        if record.levelno >= logging.ERROR:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.errors.setdefault(request_id, []).append(text)

    @contextlib.contextmanager
    def attached(self) -> Iterator[ServerLog]:
        """Attached to the server's loggers, with the one-line-per-RPC log switched on.

        The RPC lines stop here (10,000 of them would only slow pytest's log capture down);
        errors of other loggers still reach pytest too.
        """
        root, rpc = logging.getLogger("lakehouse"), logging.getLogger("lakehouse.rpc")
        level, propagate = rpc.level, rpc.propagate
        rpc.setLevel(logging.INFO)
        rpc.propagate = False
        root.addHandler(self)
        rpc.addHandler(self)
        try:
            yield self
        finally:
            rpc.removeHandler(self)
            root.removeHandler(self)
            rpc.setLevel(level)
            rpc.propagate = propagate

    def judge(self, answer: Answer) -> Outcome:
        """The answer's outcome, corrected for grpcio's client-side write race.

        grpcio's asyncio client reports INTERNAL "Internal error from Core" instead of the
        server's status when the server ends a request stream the client is still writing
        (grpc/grpc#36066). Such an answer is judged by the status the server logged.
        """
        outcome = answer.outcome()
        client_race = (
            METHODS_BY_NAME[answer.method].client_streaming
            and outcome.code == grpc.StatusCode.INTERNAL
            and outcome.message == "Internal error from Core"
            and outcome.status is None
        )
        # The server logs its line as the status goes out, or just after; on a machine busy
        # with other tests, "just after" has taken more than a second.
        for _ in range(1000):
            if not client_race or answer.request_id in self.codes:
                break
            time.sleep(0.01)
        if client_race and answer.request_id in self.codes:
            return Outcome(grpc.StatusCode[self.codes[answer.request_id]], as_logged=True)
        return outcome


# -- the server on its own event loop ----------------------------------------------------------


class LoopThread:
    """An event loop in a thread, so that synchronous code (Hypothesis, the test) can use it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Harness:
    """The server and a channel to it (for preparing and checking), living on ``loop``."""

    loop: LoopThread
    server: Any
    channel: grpc.aio.Channel
    tables: Any
    ingest: Any
    jobs: Any
    #: The plain API key of each caller class, and the forged JWTs (for the fuzzer).
    keys: dict[str, str]
    forged: dict[str, str]

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.server.grpc_port}"


class _Authorized(grpc.aio.UnaryUnaryClientInterceptor):
    """Sends one ``authorization`` value with every unary call (the harness's own calls)."""

    def __init__(self, value: str) -> None:
        self._value = value

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(
            *(client_call_details.metadata or ()), (AUTHORIZATION_HEADER, self._value)
        )
        return await continuation(client_call_details._replace(metadata=metadata), request)


@pytest.fixture
def harness(
    local_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    """The server on the embedded backend, started in ``tmp_path`` as its working directory.

    Authentication is on: an API key for each caller class, made as ``lakehouse api-key
    create`` makes them, and an HS256 JWT secret (so that JWT-looking tokens reach the JWT
    checks). The harness's own channel calls as admin.

    A relative table location (a namespace ``location`` property could set one) makes the
    server write relative to its working directory: here that is the test's folder, which
    the test checks, rather than the checkout.
    """
    from lakehouse.server.app import LakehouseServer

    monkeypatch.chdir(tmp_path)
    from lakehouse.v1 import ingest_service_pb2_grpc, job_service_pb2_grpc, table_service_pb2_grpc

    keys: dict[str, str] = {}
    entries = []
    for caller, role in KEY_ROLES.items():
        namespaces = [GRANTED_NS] if caller == LIMITED else None
        keys[caller], entry = new_api_key(f"fuzz-{caller}", role, namespaces)
        entries.append(entry)
    jwt_secret = secrets.token_urlsafe(48)
    settings = local_settings.model_copy(
        update={
            "auth": AuthSettings(api_keys=tuple(entries), jwt_secret=jwt_secret),
            "request_timeout_seconds": SERVER_UNARY_LIMIT_SECONDS,
            "stream_timeout_seconds": SERVER_STREAM_LIMIT_SECONDS,
            "jobs": local_settings.jobs.model_copy(update={"workers": 1}),
        }
    )
    loop = LoopThread()

    async def start() -> Harness:
        server = LakehouseServer(settings)
        await server.start()
        channel = grpc.aio.insecure_channel(
            f"{LOOPBACK}:{server.grpc_port}", interceptors=[_Authorized(f"Bearer {keys[ADMIN]}")]
        )
        await asyncio.wait_for(channel.channel_ready(), 10)
        return Harness(
            loop,
            server,
            channel,
            table_service_pb2_grpc.TableServiceStub(channel),
            ingest_service_pb2_grpc.IngestServiceStub(channel),
            job_service_pb2_grpc.JobServiceStub(channel),
            keys,
            forged_jwts(jwt_secret, keys[ADMIN]),
        )

    async def stop(h: Harness) -> None:
        await h.channel.close()
        await h.server.stop(1.0)

    h = loop.run(start())
    try:
        yield h
    finally:
        loop.run(stop(h), 60)
        loop.close()


async def prepare(h: Harness) -> None:
    """Creates the prepared namespace, tables and job, and fills ``WORLD`` from them.

    Only once: Hypothesis requires that the same choices generate the same requests, so what
    generation reads must not change during the run.
    """
    await h.tables.CreateNamespace(tpb.CreateNamespaceRequest(name=NS))
    # The limited key's only namespace: what its listings may show.
    await h.tables.CreateNamespace(tpb.CreateNamespaceRequest(name=GRANTED_NS))
    for namespace, table in PREPARED_TABLES:
        await restore(h, namespace, table)
    info = (await h.tables.GetTable(tpb.GetTableRequest(namespace=NS, table=TABLE))).table
    WORLD.metadata_location = info.metadata_location
    listed = await h.tables.ListSnapshots(tpb.ListSnapshotsRequest(namespace=NS, table=TABLE))
    WORLD.snapshot_ids = [s.snapshot_id for s in listed.snapshots][:4]
    created = await h.jobs.CreateJob(
        jpb.CreateJobRequest(spec=job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT 1")))
    )
    WORLD.job_ids.append(created.job.id)


async def restore(h: Harness, namespace: str, table: str) -> None:
    """Creates a prepared table (with a few rows) unless it exists, or anew once it grew.

    Before each batch, so that fuzz calls that dropped or renamed it do not leave the rest of
    the run without real data to hit, and so that fuzzed writes do not make it big: every
    commit rewrites the table's metadata, which grows with each snapshot. Best effort: calls
    of other batches run meanwhile (mutations of a recreated table name stale snapshots and
    metadata files, which is just more bad input).
    """
    with contextlib.suppress(grpc.aio.AioRpcError):
        got = await h.tables.GetTable(tpb.GetTableRequest(namespace=namespace, table=table))
        if got.table.stats.snapshot_count <= MAX_PREPARED_SNAPSHOTS:
            return
        await h.tables.DeleteTable(
            tpb.DeleteTableRequest(namespace=namespace, table=table, purge=True)
        )
    with contextlib.suppress(grpc.aio.AioRpcError):
        await h.tables.CreateNamespace(tpb.CreateNamespaceRequest(name=namespace))
    with contextlib.suppress(grpc.aio.AioRpcError):
        await h.tables.CreateTable(
            tpb.CreateTableRequest(
                namespace=namespace,
                table=table,
                schema=SCHEMA,
                partition_spec=PARTITION_SPEC,
                sort_order=SORT_ORDER,
            )
        )
        for _ in range(2):
            await h.ingest.WriteRows(write_rows_request(namespace, table, ARROW_ROWS))


async def everything(h: Harness) -> tuple[set[str], set[tuple[str, str]], list[job_pb2.Job]]:
    """Every namespace, table and job on the server."""
    namespaces: set[str] = set()
    tables: set[tuple[str, str]] = set()
    token = ""
    while True:
        page = await h.tables.ListNamespaces(
            tpb.ListNamespacesRequest(page_size=1000, page_token=token)
        )
        namespaces.update(n.name for n in page.namespaces)
        token = page.next_page_token
        if not token:
            break
    for namespace in namespaces:
        token = ""
        while True:
            listed = await h.tables.ListTables(
                tpb.ListTablesRequest(namespace=namespace, page_size=1000, page_token=token)
            )
            tables.update((namespace, t.table) for t in listed.tables)
            token = listed.next_page_token
            if not token:
                break
    jobs: list[job_pb2.Job] = []
    token = ""
    while True:
        job_page = await h.jobs.ListJobs(jpb.ListJobsRequest(page_size=1000, page_token=token))
        jobs.extend(job_page.jobs)
        token = job_page.next_page_token
        if not token:
            break
    return namespaces, tables, jobs


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    """A ``ServerLog`` attached for the whole test."""
    with ServerLog().attached() as attached:
        yield attached


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_rpc_answers_random_and_broken_requests_deliberately(
    harness: Harness, server_log: ServerLog, tmp_path: Path
) -> None:
    ledger = Ledger()
    arrow = write_rows_request(NS, TABLE, ARROW_ROWS)
    WORLD.arrow_schema = arrow.arrow_schema.serialized_schema
    WORLD.arrow_batch = arrow.arrow_record_batch.serialized_record_batch
    harness.loop.run(prepare(harness))
    world = {
        "metadata_location": WORLD.metadata_location,
        "snapshot_ids": WORLD.snapshot_ids,
        "job_ids": WORLD.job_ids,
        "arrow_schema": base64.b64encode(WORLD.arrow_schema).decode(),
        "arrow_batch": base64.b64encode(WORLD.arrow_batch).decode(),
    }
    root = Path(__file__).resolve().parents[2]
    fuzzer_dir = tmp_path / "fuzzer"
    fuzzer_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(root / p) for p in (".", "gen", "tests")),
        # Hypothesis keeps caches in .hypothesis/ of the working directory otherwise.
        "HYPOTHESIS_STORAGE_DIRECTORY": str(fuzzer_dir / ".hypothesis"),
        CREDENTIALS_ENV: json.dumps({"keys": harness.keys, "forged": harness.forged}),
    }
    fuzzer_args = [str(EXAMPLES), str(FUZZ_SEED), json.dumps(world)]
    read_end, write_end = os.pipe()
    stderr_path = fuzzer_dir / "stderr"
    started = time.monotonic()
    with stderr_path.open("wb") as stderr:
        fuzzer = subprocess.Popen(
            [sys.executable, __file__, harness.target, str(write_end), *fuzzer_args],
            env=env,
            cwd=fuzzer_dir,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            pass_fds=(write_end,),
        )
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as answers:
                for index in range(10**9):
                    try:
                        batch = [Answer(*fields) for fields in pickle.load(answers)]
                    except EOFError:
                        break
                    for answer in batch:
                        outcome = server_log.judge(answer)
                        call = answer.call()
                        problems = outcome_problems(call, outcome)
                        log = "\n".join(server_log.errors.get(answer.request_id, ()))
                        ledger.record(
                            call, outcome, problems, log if problems else "", answer.seconds
                        )
                    if index % RESTORE_EVERY == RESTORE_EVERY - 1:
                        for namespace, table in PREPARED_TABLES:
                            harness.loop.run(restore(harness, namespace, table))
            fuzzer.wait(timeout=60)
        finally:
            if fuzzer.poll() is None:
                fuzzer.kill()
                fuzzer.wait()
    elapsed = time.monotonic() - started
    total = sum(ledger.calls.values())
    # Every message starts with the seed and ends with the summary: a failure is replayable
    # (FUZZ_SEED=...) and shows what was covered.
    summary = f"FUZZ_SEED={FUZZ_SEED}: {total} calls in {elapsed:.1f} s"
    report = ledger.report()
    print(summary, "\n" + report)

    def context(message: str) -> str:
        return f"{summary}: {message}\n\n{report}"

    assert fuzzer.returncode == 0, context(f"the fuzzer failed:\n{stderr_path.read_text()}")
    assert not ledger.failures, context(
        f"{sum(map(len, ledger.failures.values()))} wrong answers, "
        f"{len(ledger.failures)} distinct; one of each:\n\n"
        + "\n\n".join(f"[{len(v)}x] {v[0]}" for v in ledger.failures.values())
    )
    assert total == EXAMPLES * BATCH + len(METHODS) * SWEEP, context("some calls got no answer")
    assert total >= MIN_REQUESTS, context(f"fewer than {MIN_REQUESTS} calls")
    uncovered = [
        f"{m.name} by {caller}"
        for m in METHODS
        for caller in CALLER_CLASSES
        if not ledger.callers[m.name, caller]
    ]
    assert not uncovered, context(f"never called: {uncovered}")
    unused = set(BAD_CREDENTIALS) - set(ledger.credentials)
    assert not unused, context(f"bad credentials never sent: {sorted(unused)}")

    # The server is still up and healthy.
    async def health() -> int:
        stub = health_pb2_grpc.HealthStub(harness.channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)

    assert harness.loop.run(health()) == health_pb2.HealthCheckResponse.SERVING, context("health")

    # Nothing exists that no call was answered OK for.
    namespaces, tables, jobs = harness.loop.run(everything(harness))
    unexpected_namespaces = namespaces - ledger.namespaces - {NS, GRANTED_NS}
    assert not unexpected_namespaces, context(f"created by failed calls: {unexpected_namespaces}")
    unexpected_tables = {
        (namespace, table)
        for namespace, table in tables - ledger.tables - set(PREPARED_TABLES)
        if table != DEAD_LETTERS and table not in ledger.destination_tables
    }
    assert not unexpected_tables, context(f"created by failed calls: {unexpected_tables}")
    unexpected_jobs = {job.id for job in jobs} - ledger.jobs - set(WORLD.job_ids)
    assert not unexpected_jobs, context(f"jobs created by failed calls: {unexpected_jobs}")
    # Nothing was written outside the data folder (the working directory is the test's).
    outside = {p.name for p in tmp_path.iterdir()} - {"data", fuzzer_dir.name}
    assert not outside, context(f"written outside the data folder: {outside}")

    # Jobs the fuzz created failed, if they did, for a reason somebody chose.
    job_problems = []
    for job in jobs:
        if job.HasField("error"):
            problem = status_problem(_code(job.error.code), job.error)
            if problem is not None:
                log = "\n".join(server_log.errors.get(job.id, ()))
                job_problems.append(f"job {job.id} {job.spec}: {problem}\n{log}")
    assert not job_problems, context("\n\n".join(job_problems[:10]))


# -- what the fuzz found, kept fixed (one deterministic request each) ----------------------------


async def _answer(call: Any) -> tuple[grpc.StatusCode, str | None, list[str]]:
    from fixtures.grpc_errors import rpc_error_details

    try:
        await call
    except grpc.aio.AioRpcError as err:
        details = rpc_error_details(err)
        return details.code, details.reason, details.violated_fields
    return grpc.StatusCode.OK, None, []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_fuzz_findings_answer_deliberately(
    table_stub: Any, channel: grpc.aio.Channel, tmp_path: Path, backend: Any
) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from lakehouse.v1 import ingest_service_pb2_grpc

    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name=NS))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(namespace=NS, table=TABLE, schema=SCHEMA, sort_order=SORT_ORDER)
    )
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    # Times outside what a Timestamp may hold (ToMilliseconds raised ValueError).
    for bad in (Timestamp(seconds=10**15), Timestamp(seconds=1, nanos=-5)):
        code, _, fields = await _answer(
            table_stub.RollbackTable(
                tpb.RollbackTableRequest(namespace=NS, table=TABLE, as_of_time=bad)
            )
        )
        assert (code, fields) == (invalid, ["as_of_time"])
        read = table_stub.ReadRows(tpb.ReadRowsRequest(namespace=NS, table=TABLE, as_of_time=bad))
        code, _, fields = await _answer(read.read())
        assert (code, fields) == (invalid, ["as_of_time"])

    # Table properties pyiceberg parses, or uses to place files and to import code.
    for properties in (
        {"format-version": "fz_b"},
        {"write.py-location-provider.impl": "os.getcwd"},
        {"write.data.path": (tmp_path / "elsewhere").as_uri()},
        {"write.target-file-size-bytes": "big"},
    ):
        code, reason, _ = await _answer(
            table_stub.CreateTable(
                tpb.CreateTableRequest(
                    namespace=NS, table="p", schema=SCHEMA, properties=properties
                )
            )
        )
        assert (code, reason) == (invalid, "INVALID_PROPERTY"), properties
        set_properties = tpb.TableChange(set_properties=tpb.SetProperties(properties=properties))
        code, _, _ = await _answer(
            table_stub.UpdateTable(
                tpb.UpdateTableRequest(namespace=NS, table=TABLE, changes=[set_properties])
            )
        )
        assert code == invalid, properties

    # A namespace location places its tables' files anywhere the service may write (a
    # relative one crashed remove_orphan_files).
    elsewhere = {"location": (tmp_path / "elsewhere").as_uri()}
    code, reason, _ = await _answer(
        table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="n", properties=elsewhere))
    )
    assert (code, reason) == (invalid, "INVALID_PROPERTY")
    code, reason, _ = await _answer(
        table_stub.UpdateNamespaceProperties(
            tpb.UpdateNamespacePropertiesRequest(name=NS, updates=elsewhere)
        )
    )
    assert (code, reason) == (invalid, "INVALID_PROPERTY")

    # pyiceberg's own failures on valid changes: removing a property that is not set
    # (KeyError), making a table created sorted unsorted (ValueError at commit).
    for change in (
        tpb.TableChange(remove_properties=tpb.RemoveProperties(keys=["not-set"])),
        tpb.TableChange(replace_sort_order=tpb.ReplaceSortOrder(sort_order=schema_pb2.SortOrder())),
    ):
        updated = await table_stub.UpdateTable(
            tpb.UpdateTableRequest(namespace=NS, table=TABLE, changes=[change])
        )
    assert list(updated.table.sort_order.fields) == []

    # A transform pyiceberg refuses with its own ValidationError.
    order = schema_pb2.SortOrder(fields=[schema_pb2.SortField(source_column="id")])
    order.fields[0].transform = "bucket[-1]"
    code, _, _ = await _answer(
        table_stub.CreateTable(
            tpb.CreateTableRequest(namespace=NS, table="s", schema=SCHEMA, sort_order=order)
        )
    )
    assert code == invalid

    # RegisterTable: schemes nobody can read, a fragment that made /etc/passwd the file read,
    # and files that are missing or not metadata (these had left a broken table behind).
    # (Inside the warehouse: a file outside it is refused before it is read.)
    warehouse = backend.data_dir / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    junk = warehouse / "junk.metadata.json"
    junk.write_text("not json")
    for location, expected in (
        ("http://127.0.0.1:1/x.metadata.json", invalid),
        ("file:///etc/passwd#.metadata.json", invalid),
        ("file:///etc/passwd.metadata.json", invalid),
        (junk.as_uri(), invalid),
        ((warehouse / "missing.metadata.json").as_uri(), grpc.StatusCode.NOT_FOUND),
    ):
        code, _, _ = await _answer(
            table_stub.RegisterTable(
                tpb.RegisterTableRequest(namespace=NS, table="r", metadata_location=location)
            )
        )
        assert code == expected, location
        listed = await table_stub.ListTables(tpb.ListTablesRequest(namespace=NS))
        assert [t.table for t in listed.tables] == [TABLE], location

    # JSON rows holding values JSON cannot (MessageToDict raised ValueError).
    ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
    rows = rows_pb2.JsonRows()
    rows.rows.add().update({"id": float("inf")})
    rows.rows.add().fields["id"].SetInParent()  # a Value with no kind
    code, reason, fields = await _answer(
        ingest.WriteRows(ipb.WriteRowsRequest(namespace=NS, table=TABLE, json_rows=rows))
    )
    assert (code, reason, fields) == (invalid, "INVALID_ROWS", ["rows[0]"])

    # A client-made _dead_letters table without the dead-letter schema (a KeyError before).
    await table_stub.CreateTable(
        tpb.CreateTableRequest(namespace=NS, table=DEAD_LETTERS, schema=SCHEMA)
    )
    rows = rows_pb2.JsonRows()
    rows.rows.add().update({"id": "not a number"})
    code, reason, _ = await _answer(
        ingest.WriteRows(
            ipb.WriteRowsRequest(
                namespace=NS,
                table=TABLE,
                json_rows=rows,
                invalid_row_policy=ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER,
            )
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DEAD_LETTER_TABLE_INVALID")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_racing_creates_of_one_namespace_are_one_ok_and_already_exists(
    table_stub: Any,
) -> None:
    # The catalog checks, then inserts: racing calls met the unique key (IntegrityError).
    for attempt in range(5):
        name = f"race_{attempt}"
        request = tpb.CreateNamespaceRequest(name=name)
        answers = await asyncio.gather(
            *[_answer(table_stub.CreateNamespace(request)) for _ in range(8)]
        )
        codes = sorted(code.name for code, _, _ in answers)
        assert codes == ["ALREADY_EXISTS"] * 7 + ["OK"], codes


def test_a_table_replaced_during_a_commit_is_a_conflict() -> None:
    from lakehouse.adapters.iceberg.errors import translate_errors
    from lakehouse.domain.errors import Conflict

    # What pyiceberg's commit retry raises when the table was dropped and created again.
    with pytest.raises(Conflict), translate_errors("ns", "t"):
        raise ValueError("Table UUID does not match: current=a != refreshed=b")
    with pytest.raises(ValueError, match="something else"), translate_errors("ns", "t"):
        raise ValueError("something else")


def test_shared_tables_have_their_lazy_lookups_filled_in() -> None:
    # pyiceberg fills cached_property values on first use; a deep copy of the same schema on
    # another thread then failed ("dictionary changed size during iteration").
    from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
    from pyiceberg.schema import Schema
    from pyiceberg.table.metadata import new_table_metadata
    from pyiceberg.table.sorting import UNSORTED_SORT_ORDER
    from pyiceberg.types import ListType, LongType, NestedField, StringType

    from lakehouse.adapters.iceberg.cache import fill_lazy_caches

    schema = Schema(
        NestedField(1, "id", LongType()),
        NestedField(2, "tags", ListType(3, StringType())),
    )
    metadata = new_table_metadata(
        schema, UNPARTITIONED_PARTITION_SPEC, UNSORTED_SORT_ORDER, "file:///tmp/t", {}
    )
    table = type("Table", (), {"metadata": metadata})()
    fill_lazy_caches(table)
    shared = metadata.schemas[0]
    before = set(vars(shared))
    assert {"_lazy_id_to_field", "_lazy_name_to_id_lower", "name_mapping"} <= before
    shared.find_field("tags.element")
    shared.name_mapping  # noqa: B018
    assert set(vars(shared)) == before


def test_expected_refusals_follow_the_write_mode_of_every_request() -> None:
    """The fuzz's own expectation (what it holds the server to) for writes removing rows."""
    append_rows = METHODS_BY_NAME["lakehouse.v1.IngestService.AppendRows"]
    write_rows = METHODS_BY_NAME["lakehouse.v1.IngestService.WriteRows"]
    append = ipb.AppendRowsRequest(namespace=NS, table=TABLE).SerializeToString()
    upsert = ipb.AppendRowsRequest(
        namespace=NS, table=TABLE, write_mode=ingest_pb2.WRITE_MODE_UPSERT
    ).SerializeToString()

    def expected(method: MethodDescriptor, caller: str, *payloads: bytes) -> Refusal | None:
        return refusal(FuzzCall(method, "generated", payloads, caller))

    assert expected(append_rows, DEVELOPER, append, append) is None
    assert expected(append_rows, ADMIN, upsert) is None
    first = expected(append_rows, DEVELOPER, upsert, append)
    assert first is not None
    assert (first.answers, first.permission, first.unless_ended_before) == (
        frozenset({"PERMISSION_DENIED"}),
        "tables.change_rows",
        False,
    )
    later = expected(append_rows, DEVELOPER, append, upsert)
    assert later is not None and later.unless_ended_before
    assert expected(append_rows, DEVELOPER, CORRUPT_REQUEST, upsert) is None  # malformed first
    viewer = expected(append_rows, VIEWER, upsert)
    assert viewer is not None and viewer.permission == "ingest.write"
    limited = expected(append_rows, LIMITED, upsert)
    assert limited is not None and limited.permission == "tables.change_rows"
    unknown_mode = ipb.WriteRowsRequest(namespace=NS, table=TABLE, write_mode=99)  # type: ignore[arg-type]
    denied = expected(write_rows, DEVELOPER, unknown_mode.SerializeToString())
    assert denied is not None and denied.permission == "tables.change_rows"


def test_mutation_bases_are_requests_of_their_method() -> None:
    """A base of the wrong type would make every mutation of that method a decode error."""
    for method in METHODS:
        for base in bases(method):
            assert isinstance(base, _message_class(method.input_type)), method.full_name


if __name__ == "__main__":
    sys.exit(fuzzer_main(sys.argv[1:]))
