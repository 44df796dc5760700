"""Table properties never reach pyiceberg's storage layer (issue 13, finding 1).

pyiceberg merges a table's properties into its FileIO settings and hands them to its location
provider: ``py-io-impl: sys.exit`` stopped the server (and, the table being committed, every
restart of it), ``builtins.print`` printed the merged catalog and table properties, and
``s3.endpoint`` / ``write.data.path`` redirected its writes. Clients may now set only an
allow-list of properties, and whatever a table's metadata carries (a registered table, an
old one) the server builds its FileIO from its own configuration and writes under the table's
location only.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from pathlib import Path
from typing import Any

import grpc
import pyiceberg
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.schema import Schema

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from fixtures.properties import assert_property_update_refused
from fixtures.serve_process import serve_process, settings_env
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.adapters.pyiceberg_private import io as pyiceberg_private
from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
SCHEMA = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG, required=True)])

#: Real attack payloads, one key each (a FileIO class, an endpoint, a credential, a location
#: provider class, file placement, and storage keys of every FileIO pyiceberg has).
ATTACKS = {
    "py-io-impl": "sys.exit",
    "py-io-impl ": "builtins.print",
    "s3.endpoint": "http://127.0.0.1:9",
    "s3.secret-access-key": "stolen",
    "write.py-location-provider.impl": "sys.exit",
    "write.data.path": "file:///tmp/elsewhere",
    "write.metadata.path": "file:///tmp/elsewhere",
    "gcs.oauth2.token": "t",
    "adls.account-key": "k",
    "hf.token": "t",
    "io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
    "warehouse": "file:///tmp/elsewhere",
    "location": "file:///tmp/elsewhere",
    "made-up-key": "x",
}


def _attack(key: str) -> dict[str, str]:
    return {key.strip(): ATTACKS[key]}


@pytest.mark.parametrize("key", list(ATTACKS))
async def test_create_table_refuses_properties_outside_the_allow_list(
    table_stub: Any, key: str
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.CreateTable(
            pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA, properties=_attack(key))
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.reason == "INVALID_PROPERTY"
    assert details.violated_fields == [f"properties[{key.strip()!r}]"]
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="h"))
    assert list(listed.tables) == []


@pytest.mark.parametrize("key", list(ATTACKS))
async def test_update_table_refuses_properties_outside_the_allow_list(
    table_stub: Any, key: str
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    await table_stub.CreateTable(pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA))
    await assert_property_update_refused(table_stub, "h", "t", _attack(key), key.strip())


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_allowed_properties_are_accepted(table_stub: Any) -> None:
    allowed = {
        "comment": "orders",
        "owner": "team-a",
        "user.contact": "a@example.com",
        "write.parquet.compression-codec": "zstd",
        "write.object-storage.enabled": "true",
        "commit.retry.num-retries": "3",
        "history.expire.min-snapshots-to-keep": "5",
        "lakehouse.ingest.invalid-row-policy": "dead-letter",
        "format-version": "2",
    }
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    created = await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA, properties=allowed)
    )
    for key, value in allowed.items():
        if key != "format-version":
            assert created.table.properties[key] == value
    change = pb.TableChange(
        set_properties=pb.SetProperties(properties={"user.tier": "gold", "gc.enabled": "true"})
    )
    updated = await table_stub.UpdateTable(
        pb.UpdateTableRequest(namespace="h", table="t", changes=[change])
    )
    assert updated.table.properties["user.tier"] == "gold"


# -- tables that already carry such keys (registered from a crafted metadata file) ---------------


def _crafted(settings: Any, metadata_location: str, properties: dict[str, str], tag: str) -> str:
    """A copy of a table's metadata file with ``properties`` added, next to it."""
    io = PyArrowFileIO(catalog_properties(settings))
    with io.new_input(metadata_location).open() as f:
        metadata = json.loads(f.read())
    metadata["properties"].update(properties)
    folder = metadata_location.rsplit("/", 1)[0]
    location = f"{folder}/99999-{tag}.metadata.json"
    with io.new_output(location).create(overwrite=True) as f:
        f.write(json.dumps(metadata).encode())
    return location


def _wait(probe: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_registered_table_with_hostile_properties_cannot_redirect_or_stop_the_server(
    backend: Any, tmp_path: Path
) -> None:
    marker = "MARKER-hostile-4711"
    elsewhere = tmp_path / "elsewhere"
    hostile = {
        "exit": {
            "py-io-impl": "sys.exit",
            # A policy: the scheduler loads it on every pass, and expires it once it has two
            # snapshots (all older than 0 ms).
            "history.expire.min-snapshots-to-keep": "1",
            "history.expire.max-snapshot-age-ms": "0",
        },
        "print": {
            "py-io-impl": "builtins.print",
            "user.marker": marker,
            "s3.endpoint": "http://127.0.0.1:9",
            "s3.secret-access-key": "stolen",
            "write.py-location-provider.impl": "sys.exit",
            "write.data.path": elsewhere.as_uri(),
            "write.metadata.path": elsewhere.as_uri(),
            "history.expire.min-snapshots-to-keep": "1",
            "history.expire.max-snapshot-age-ms": "0",
        },
    }
    env = {**settings_env(backend), "LAKEHOUSE_JOBS__SCHEDULER_INTERVAL_SECONDS": "0.2"}
    with serve_process(tmp_path / "srv", env) as server:
        with grpc.insecure_channel(server.target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            tables.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
            for name, properties in hostile.items():
                seed = tables.CreateTable(
                    pb.CreateTableRequest(namespace="h", table=f"seed_{name}", schema=SCHEMA)
                ).table
                # Dropped without purge: its files stay, the crafted copy registers them.
                tables.DeleteTable(pb.DeleteTableRequest(namespace="h", table=f"seed_{name}"))
                crafted = _crafted(backend, seed.metadata_location, properties, name)
                registered = tables.RegisterTable(
                    pb.RegisterTableRequest(namespace="h", table=name, metadata_location=crafted)
                ).table
                assert registered.properties["py-io-impl"] == properties["py-io-impl"]
                for ids in ((1, 2), (3,)):
                    ingest.WriteRows(
                        ingest_service_pb2.WriteRowsRequest(
                            namespace="h", table=name, json_rows=_rows(*ids)
                        )
                    )
                change = pb.TableChange(
                    set_properties=pb.SetProperties(properties={"user.seen": "yes"})
                )
                updated = tables.UpdateTable(
                    pb.UpdateTableRequest(namespace="h", table=name, changes=[change])
                ).table
                assert updated.stats.row_count == 3
                # Every file it wrote is under the table's own location.
                location = updated.location.rstrip("/") + "/"
                assert updated.metadata_location.startswith(location)
                table = direct_catalog_confined(backend).load_table(("h", name))
                for task in table.scan().plan_files():
                    assert task.file.file_path.startswith(location), task.file.file_path
                for snapshot in table.snapshots():
                    assert snapshot.manifest_list.startswith(location)
            # The scheduler loaded both tables (and scheduled their expiry) at least once.
            _wait(
                lambda: (
                    {
                        j.table
                        for j in jobs.ListJobs(
                            job_service_pb2.ListJobsRequest(namespace="h", page_size=100)
                        ).jobs
                    }
                    >= set(hostile)
                ),
                "the scheduler to schedule both tables",
            )
            assert server.proc is not None and server.proc.poll() is None, server.logs()
            read = tables.GetTable(pb.GetTableRequest(namespace="h", table="exit")).table
            assert read.stats.row_count == 3
        assert not elsewhere.exists()
        assert marker not in server.logs(lines=100_000)
        assert "stolen" not in server.logs(lines=100_000)


def _rows(*ids: int) -> rows_pb2.JsonRows:
    from google.protobuf import struct_pb2

    structs = []
    for i in ids:
        s = struct_pb2.Struct()
        s.update({"id": i})
        structs.append(s)
    return rows_pb2.JsonRows(rows=structs)


def direct_catalog_confined(settings: Any) -> Catalog:
    """The test's own pyiceberg catalog, as safe as the server's with hostile tables."""
    return pyiceberg_private.confine_catalog_io(direct_catalog(settings))


# -- the contract of the private pyiceberg API the service relies on -------------------------------


def test_every_pyiceberg_module_that_binds_load_location_provider_is_confined() -> None:
    binding = set()
    for info in pkgutil.walk_packages(pyiceberg.__path__, "pyiceberg."):
        if ".tests" in info.name or info.name == "pyiceberg.table.locations":
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (Glue, Hive, BigQuery...) is missing
            continue
        if "load_location_provider" in vars(module):
            binding.add(info.name)
    # Catalogs the service never loads may bind it too; all the others are patched.
    optional = {"pyiceberg.catalog.dynamodb", "pyiceberg.catalog.bigquery_metastore"}
    assert binding - optional == set(pyiceberg_private.LOCATION_PROVIDER_MODULES)
    pyiceberg_private.confine_location_providers()
    for name in pyiceberg_private.LOCATION_PROVIDER_MODULES:
        module = importlib.import_module(name)
        assert module.load_location_provider is pyiceberg_private.confined_location_provider


def test_a_confined_catalog_ignores_table_properties_for_io(local_settings: Any) -> None:
    local_settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog_confined(local_settings)
    # pyiceberg's catalogs build a table's FileIO through this private method.
    assert callable(Catalog._load_file_io)
    catalog.create_namespace("c")
    table = catalog.create_table(
        ("c", "t"),
        schema=Schema(),
        properties={"py-io-impl": "sys.exit", "write.py-location-provider.impl": "sys.exit"},
    )
    assert isinstance(table.io, PyArrowFileIO)
    assert "py-io-impl" not in table.io.properties
    provider = table.location_provider()
    assert provider.data_path == f"{table.location().rstrip('/')}/data"


def test_every_policy_key_of_the_service_is_settable_and_no_other_lakehouse_key() -> None:
    from lakehouse.core.invalid_rows import POLICY_PROPERTY
    from lakehouse.core.maintenance_scheduler import POLICY_PROPERTIES
    from lakehouse.domain.table_properties import is_settable_property

    for key in (*POLICY_PROPERTIES, POLICY_PROPERTY):
        assert is_settable_property(key), key
    # The service's bookkeeping: a client must not forge a SQL job's mark on a table.
    for key in ("lakehouse.job-id", "lakehouse.writers", "lakehouse.request-ids"):
        assert not is_settable_property(key), key
