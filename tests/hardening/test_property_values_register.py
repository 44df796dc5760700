"""Writer property values a table arrives with, and compression levels (issue 13 review).

CreateTable and UpdateTable refuse writer values pyiceberg cannot use, but RegisterTable took
a crafted metadata file with any: ``write.parquet.page-row-limit: 0`` then made every write
spin a catalog thread forever, and a bogus codec failed every write. It is now refused, naming
the key. A compression level was never checked against its codec: ``gzip`` with level 99
failed every write with an OSError inside pyarrow, ``snappy`` with any level with
ArrowInvalid. The level is now checked against the codec the table will write with.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.properties import assert_property_update_refused
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.v1 import ingest_service_pb2, ingest_service_pb2_grpc, rows_pb2, schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
SCHEMA = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG, required=True)])
CODEC = "write.parquet.compression-codec"
LEVEL = "write.parquet.compression-level"

#: Values each of which broke every write of a registered table.
UNUSABLE = {
    "page-row-limit": {"write.parquet.page-row-limit": "0"},
    "codec": {CODEC: "bogus"},
    "gzip-99": {CODEC: "gzip", LEVEL: "99"},
    "snappy-level": {CODEC: "snappy", LEVEL: "1"},
    "metrics": {"write.metadata.metrics.default": "bogus"},
}


def _crafted(settings: Any, metadata_location: str, properties: dict[str, str]) -> str:
    """A copy of a table's metadata file with ``properties`` added, next to it."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    io = PyArrowFileIO(catalog_properties(settings))
    with io.new_input(metadata_location).open() as f:
        metadata = json.loads(f.read())
    metadata["properties"].update(properties)
    location = metadata_location.rsplit("/", 1)[0] + "/99999-crafted.metadata.json"
    with io.new_output(location).create(overwrite=True) as f:
        f.write(json.dumps(metadata).encode())
    return location


def _rows(*ids: int) -> rows_pb2.JsonRows:
    structs = []
    for i in ids:
        s = struct_pb2.Struct()
        s.update({"id": i})
        structs.append(s)
    return rows_pb2.JsonRows(rows=structs)


@pytest.mark.parametrize("case", list(UNUSABLE))
async def test_register_refuses_a_table_carrying_an_unusable_writer_value(
    table_stub: Any, backend: Any, case: str
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    seed = (
        await table_stub.CreateTable(
            pb.CreateTableRequest(namespace="h", table="seed", schema=SCHEMA)
        )
    ).table
    # Dropped without purge: its files stay, the crafted copy names them.
    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="h", table="seed"))
    crafted = _crafted(backend, seed.metadata_location, UNUSABLE[case])
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(namespace="h", table="t", metadata_location=crafted)
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.reason == "INVALID_PROPERTY"
    assert details.violated_fields == ["metadata_location"]
    bad_key = sorted(UNUSABLE[case])[-1]  # the level when there is one, else the only key
    assert bad_key in details.message
    assert backend.warehouse not in details.message
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="h"))
    assert list(listed.tables) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(
    "properties",
    [
        {CODEC: "gzip", LEVEL: "99"},
        {CODEC: "gzip", LEVEL: "0"},
        {CODEC: "snappy", LEVEL: "1"},
        {CODEC: "uncompressed", LEVEL: "1"},
        {CODEC: "brotli", LEVEL: "12"},
        {LEVEL: "23"},  # the default codec, zstd
        {LEVEL: "fast"},
        {LEVEL: "9" * 40},
    ],
)
async def test_create_table_refuses_a_level_its_codec_cannot_take(
    table_stub: Any, properties: dict[str, str]
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.CreateTable(
            pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA, properties=properties)
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.reason == "INVALID_PROPERTY"
    assert details.violated_fields == [f"properties[{LEVEL!r}]"]
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="h"))
    assert list(listed.tables) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(
    ("existing", "change", "field"),
    [
        # The level alone, checked against the codec the table already has.
        ({CODEC: "gzip"}, {LEVEL: "99"}, LEVEL),
        # The codec alone, checked against the level the table already has.
        ({LEVEL: "3"}, {CODEC: "snappy"}, CODEC),
        ({CODEC: "zstd", LEVEL: "20"}, {CODEC: "gzip"}, CODEC),
    ],
)
async def test_update_table_refuses_a_level_the_merged_codec_cannot_take(
    table_stub: Any,
    existing: dict[str, str],
    change: dict[str, str],
    field: str,
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA, properties=existing)
    )
    await assert_property_update_refused(table_stub, "h", "t", change, field)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(
    "properties",
    [
        {CODEC: "gzip", LEVEL: "9"},
        {CODEC: "brotli", LEVEL: "11"},
        {CODEC: "lz4", LEVEL: "12"},
        {LEVEL: "-5"},  # zstd's fast levels
        {CODEC: "snappy"},
    ],
)
async def test_usable_levels_are_accepted_and_written_with(
    table_stub: Any, channel: grpc.aio.Channel, properties: dict[str, str]
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA, properties=properties)
    )
    ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
    await ingest.WriteRows(
        ingest_service_pb2.WriteRowsRequest(namespace="h", table="t", json_rows=_rows(1, 2))
    )
    now = await table_stub.GetTable(pb.GetTableRequest(namespace="h", table="t"))
    assert now.table.stats.row_count == 2


#: Values a table set up before the checks (or directly in the catalog) may still carry.
LEGACY = {
    "write.parquet.page-row-limit": "0",  # spun a catalog thread forever on every write
    CODEC: "gzip",
    LEVEL: "99",  # OSError inside pyarrow on every write
    "write.avro.compression-codec": "bogus",  # every manifest write failed
    "write.metadata.metrics.default": "bogus",
    "write.target-file-size-bytes": "9" * 20,  # OverflowError: INTERNAL
}


def _legacy_table(settings: Any, name: str) -> None:
    """A table created directly in the catalog, as before the service checked values."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField

    from fixtures.iceberg import direct_catalog

    catalog = direct_catalog(settings)
    schema = Schema(NestedField(1, "id", LongType(), required=True))
    catalog.create_table(("h", name), schema=schema, properties=LEGACY)


async def test_a_table_already_carrying_unusable_values_is_written_with_defaults(
    table_stub: Any, channel: grpc.aio.Channel, backend: Any
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    _legacy_table(backend, "legacy")
    ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
    for ids in ((1, 2), (3,)):
        await ingest.WriteRows(
            ingest_service_pb2.WriteRowsRequest(
                namespace="h", table="legacy", json_rows=_rows(*ids)
            ),
            timeout=60,
        )
    now = (await table_stub.GetTable(pb.GetTableRequest(namespace="h", table="legacy"))).table
    assert now.stats.row_count == 3
    # The stored properties are left as they are: the owner sees them and can fix them.
    for key, value in LEGACY.items():
        assert now.properties[key] == value
    fixed = pb.TableChange(
        remove_properties=pb.RemoveProperties(keys=["write.parquet.page-row-limit"])
    )
    updated = await table_stub.UpdateTable(
        pb.UpdateTableRequest(namespace="h", table="legacy", changes=[fixed])
    )
    assert "write.parquet.page-row-limit" not in updated.table.properties


async def _run_job(channel: grpc.aio.Channel, spec: Any) -> Any:
    """Runs one job to its end on the in-process server; returns the final Job."""
    from lakehouse.v1 import job_pb2, job_service_pb2_grpc
    from lakehouse.v1 import job_service_pb2 as jpb

    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    last = None
    async for message in jobs.WatchJob(jpb.WatchJobRequest(job_id=created.job.id), timeout=60):
        last = message.job
    terminal = {
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
    }
    assert last is not None and last.state in terminal
    return last


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_sql_insert_and_compaction_of_such_a_table_use_defaults(
    table_stub: Any, channel: grpc.aio.Channel, backend: Any
) -> None:
    from lakehouse.v1 import job_pb2

    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    _legacy_table(backend, "legacy")
    for i in (1, 2):
        job = await _run_job(
            channel,
            job_pb2.JobSpec(
                sql=job_pb2.SqlJobSpec(statement=f"INSERT INTO h.legacy SELECT {i}::BIGINT AS id")
            ),
        )
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error.message
    job = await _run_job(
        channel,
        job_pb2.JobSpec(
            compact_table=job_pb2.CompactTableJobSpec(
                namespace="h", table="legacy", min_input_files=2
            )
        ),
    )
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error.message
    now = (await table_stub.GetTable(pb.GetTableRequest(namespace="h", table="legacy"))).table
    assert now.stats.row_count == 2
    assert now.stats.file_count == 1
