"""RegisterTable and purge stay inside the warehouse (issue 13, finding 3).

A table crafted under another folder (or bucket, or a sibling prefix such as
``warehouse-evil``) was registered and readable, and DeleteTable with purge then deleted its
files, outside the warehouse. Now the metadata file, the table location and every file the
metadata reaches must lie inside the warehouse, and purge deletes only inside it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grpc
import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.adapters.pyiceberg_private.io import confine_catalog_io
from lakehouse.domain.errors import InvalidArgument
from lakehouse.v1 import table_service_pb2 as pb

SCHEMA = Schema(NestedField(1, "id", LongType(), required=True))
DATA = pa.table({"id": pa.array([1, 2, 3], pa.int64())}, schema=SCHEMA.as_arrow())


def _outside(settings: Any) -> str:
    # A sibling of the warehouse: a plain prefix test ("starts with the warehouse") lets it in.
    return settings.warehouse.rstrip("/") + "-evil"


def _catalog(settings: Any) -> Catalog:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return confine_catalog_io(direct_catalog(settings))


def _external_table(settings: Any, name: str) -> tuple[str, str]:
    """A table with all its files outside the warehouse, not in the catalog; (metadata, folder)."""
    catalog = _catalog(settings)
    catalog.create_namespace_if_not_exists("h")
    folder = f"{_outside(settings)}/{name}"
    table = catalog.create_table(("h", name), schema=SCHEMA, location=folder)
    table.append(DATA)
    metadata_location = str(catalog.load_table(("h", name)).metadata_location)
    catalog.drop_table(("h", name))  # the files stay
    return metadata_location, folder


def _copy(settings: Any, metadata_location: str, target: str, **changes: Any) -> None:
    io = PyArrowFileIO(catalog_properties(settings))
    with io.new_input(metadata_location).open() as f:
        metadata = json.loads(f.read())
    metadata.update(changes)
    with io.new_output(target).create(overwrite=True) as f:
        f.write(json.dumps(metadata).encode())


async def _assert_refused(table_stub: Any, settings: Any, metadata_location: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(
                namespace="h", table="stolen", metadata_location=metadata_location
            )
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.reason == "LOCATION_OUTSIDE_WAREHOUSE"
    assert details.violated_fields == ["metadata_location"]
    assert settings.warehouse not in details.message  # no server paths in answers
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="h"))
    assert "stolen" not in listed.tables


async def test_register_refuses_a_metadata_file_outside_the_warehouse(
    table_stub: Any, backend: Any
) -> None:
    metadata_location, _ = _external_table(backend, "ext")
    await _assert_refused(table_stub, backend, metadata_location)


async def test_register_refuses_a_table_location_outside_the_warehouse(
    table_stub: Any, backend: Any
) -> None:
    metadata_location, _ = _external_table(backend, "ext")
    inside = f"{backend.warehouse.rstrip('/')}/h/copied/metadata/00001-x.metadata.json"
    _copy(backend, metadata_location, inside)
    await _assert_refused(table_stub, backend, inside)


async def test_register_refuses_manifests_and_data_outside_the_warehouse(
    table_stub: Any, backend: Any
) -> None:
    # Metadata file and location inside; the manifest list, manifests and data outside.
    metadata_location, _ = _external_table(backend, "ext")
    folder = f"{backend.warehouse.rstrip('/')}/h/copied"
    inside = f"{folder}/metadata/00001-x.metadata.json"
    _copy(backend, metadata_location, inside, location=folder)
    await _assert_refused(table_stub, backend, inside)


async def test_purge_leaves_files_outside_the_warehouse(table_stub: Any, backend: Any) -> None:
    # A table registered before RegisterTable checked (here: directly in the catalog).
    metadata_location, folder = _external_table(backend, "legacy")
    _catalog(backend).register_table(("h", "legacy"), metadata_location)
    table = _catalog(backend).load_table(("h", "legacy"))
    files = [metadata_location, *(t.file.file_path for t in table.scan().plan_files())]
    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="h", table="legacy", purge=True))
    io = PyArrowFileIO(catalog_properties(backend))
    assert all(io.new_input(path).exists() for path in files)
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="h"))
    assert "legacy" not in listed.tables
    assert folder.startswith(_outside(backend))


async def test_a_missing_file_is_named_without_the_servers_paths(
    table_stub: Any, backend: Any
) -> None:
    # TABLE_FILE_MISSING quoted pyarrow's message, with the absolute path of the file under
    # the warehouse (finding 4): it names the file only now.
    from fixtures.iceberg import append
    from lakehouse.v1 import schema_pb2

    long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="m"))
    await table_stub.CreateTable(
        pb.CreateTableRequest(
            namespace="m",
            table="t",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=long)]),
        )
    )
    table = append(backend, "m", "t", pa.table({"id": pa.array([1, 2], pa.int64())}))
    (data_file,) = [task.file.file_path for task in table.scan().plan_files()]
    table.io.delete(data_file)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in table_stub.ReadRows(pb.ReadRowsRequest(namespace="m", table="t")):
            pass
    details = rpc_error_details(exc.value)
    assert details.reason == "TABLE_FILE_MISSING", details
    basename = data_file.rsplit("/", 1)[1]
    assert basename in details.message
    assert data_file.rsplit("/", 1)[0] not in details.message
    assert str(backend.data_dir) not in details.message
    assert "/warehouse" not in details.message


async def test_expiry_leaves_files_outside_the_tables_folder(
    table_stub: Any, channel: Any, backend: Any
) -> None:
    # Sibling of purge: a legacy table inside the warehouse whose snapshots reference files
    # outside its folder. Expiring its old snapshot deleted those files; they are left now.
    import asyncio

    from google.protobuf import duration_pb2

    from lakehouse.v1 import job_pb2, job_service_pb2_grpc
    from lakehouse.v1 import job_service_pb2 as jpb

    metadata_location, _ = _external_table(backend, "ext")
    catalog = _catalog(backend)
    outside_table = catalog.register_table(("h", "tmp"), metadata_location)
    outside_table.append(DATA)  # a second snapshot: the first one can expire
    # An append keeps the first snapshot's data: its manifest list is what expiry deletes.
    first_files = [outside_table.metadata.snapshots[0].manifest_list]
    newest = str(catalog.load_table(("h", "tmp")).metadata_location)
    catalog.drop_table(("h", "tmp"))
    folder = f"{backend.warehouse.rstrip('/')}/h/legacy"
    inside = f"{folder}/metadata/00009-x.metadata.json"
    _copy(backend, newest, inside, location=folder)
    catalog.register_table(("h", "legacy"), inside)

    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    spec = job_pb2.JobSpec(
        expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
            namespace="h",
            table="legacy",
            retain_last=1,
            max_snapshot_age=duration_pb2.Duration(nanos=1_000_000),
        )
    )
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))

    async def done() -> job_pb2.Job:
        while True:
            job = (await jobs.GetJob(jpb.GetJobRequest(job_id=created.job.id))).job
            if job.state not in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING):
                return job
            await asyncio.sleep(0.1)

    job = await asyncio.wait_for(done(), 60)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.result.expire_snapshots.snapshots_expired == 1
    io = PyArrowFileIO(catalog_properties(backend))
    assert first_files and all(io.new_input(path).exists() for path in first_files)


async def test_register_prefixes_admit_a_table_outside_the_warehouse(backend: Any) -> None:
    # catalog.register_prefixes: where the operator allows tables besides the warehouse.
    from lakehouse.adapters.iceberg.catalog import IcebergCatalog
    from lakehouse.blocking import BlockingPool

    metadata_location, folder = _external_table(backend, "ext")
    allowed = backend.model_copy(
        update={
            "catalog": backend.catalog.model_copy(
                update={"register_prefixes": (_outside(backend) + "/",)}
            )
        }
    )
    pool = BlockingPool(2)
    for settings, admitted in ((backend, False), (allowed, True)):
        catalog = IcebergCatalog(settings, pool)
        try:
            if admitted:
                info = await catalog.register_table("h", "ext", metadata_location)
                assert info.location.rstrip("/") == folder
                assert info.stats.row_count == 3
                assert not catalog.owns_location(info.location)  # purge would leave it
            else:
                with pytest.raises(InvalidArgument) as exc:
                    await catalog.register_table("h", "ext", metadata_location)
                assert exc.value.reason == "LOCATION_OUTSIDE_WAREHOUSE"
        finally:
            await catalog.close()
    pool.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_register_bounds_the_files_it_checks(
    table_stub: Any, backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each manifest and entry is read to check its path: a table with more than the bound is
    # refused rather than half checked (the bound lowered here from 200,000).
    from lakehouse.adapters.iceberg import registration as iceberg

    monkeypatch.setattr(iceberg, "MAX_REGISTER_CHECKED_ENTRIES", 1)
    catalog = _catalog(backend)
    catalog.create_namespace_if_not_exists("h")
    folder = f"{backend.warehouse.rstrip('/')}/h/big"
    table = catalog.create_table(("h", "big"), schema=SCHEMA, location=folder)
    table.append(DATA)  # one manifest, one entry: two to check
    metadata_location = str(catalog.load_table(("h", "big")).metadata_location)
    catalog.drop_table(("h", "big"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(namespace="h", table="big", metadata_location=metadata_location)
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "TABLE_TOO_LARGE_TO_REGISTER"
    assert details.violated_fields == ["metadata_location"]


async def test_orphan_removal_refuses_a_table_outside_the_warehouse(
    table_stub: Any, channel: Any, backend: Any
) -> None:
    # Sibling of purge: remove_orphan_files lists the table's folder and deletes what its
    # metadata does not name; for a legacy table outside the warehouse that folder may hold
    # anybody's files.
    import asyncio

    from google.protobuf import duration_pb2
    from google.rpc import error_details_pb2

    from lakehouse.v1 import job_pb2, job_service_pb2_grpc
    from lakehouse.v1 import job_service_pb2 as jpb

    metadata_location, folder = _external_table(backend, "legacy")
    _catalog(backend).register_table(("h", "legacy"), metadata_location)
    io = PyArrowFileIO(catalog_properties(backend))
    stray = f"{folder}/someone-elses.txt"
    with io.new_output(stray).create(overwrite=True) as f:
        f.write(b"not the table's")
    if stray.startswith("file://"):  # old enough to be an orphan (moto cannot backdate)
        day_ago = time.time() - 86400
        os.utime(stray.removeprefix("file://"), (day_ago, day_ago))

    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    spec = job_pb2.JobSpec(
        remove_orphan_files=job_pb2.RemoveOrphanFilesJobSpec(
            namespace="h", table="legacy", min_file_age=duration_pb2.Duration(seconds=3600)
        )
    )
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))

    async def done() -> job_pb2.Job:
        while True:
            job = (await jobs.GetJob(jpb.GetJobRequest(job_id=created.job.id))).job
            if job.state not in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING):
                return job
            await asyncio.sleep(0.1)

    job = await asyncio.wait_for(done(), 60)
    assert job.state == job_pb2.JOB_STATE_FAILED, job
    reasons = []
    for detail in job.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    assert reasons == ["LOCATION_OUTSIDE_WAREHOUSE"], job.error
    assert io.new_input(stray).exists()


async def test_register_refuses_a_previous_metadata_file_outside_the_warehouse(
    table_stub: Any, backend: Any
) -> None:
    # Snapshot expiry deletes the files of the metadata log: they must be inside too.
    seed = await _seed(table_stub)
    inside = seed.metadata_location.rsplit("/", 1)[0] + "/00009-x.metadata.json"
    elsewhere = f"{_outside(backend)}/old/00000-x.metadata.json"
    _copy(
        backend,
        seed.metadata_location,
        inside,
        **{"metadata-log": [{"metadata-file": elsewhere, "timestamp-ms": 1}]},
    )
    await _assert_refused(table_stub, backend, inside)


async def _seed(table_stub: Any) -> Any:
    """A table made by the service, dropped from the catalog (its files stay)."""
    from lakehouse.v1 import schema_pb2

    long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    created = await table_stub.CreateTable(
        pb.CreateTableRequest(
            namespace="h",
            table="seed",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=long)]),
        )
    )
    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="h", table="seed"))
    return created.table
