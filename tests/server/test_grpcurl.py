"""The real grpcurl binary against the running server, through reflection only."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fixtures.objects import put_object

# Most of this file checks what grpcurl shows, which the backend does not change; the job
# kinds run on both, since each reaches the catalog and the object store differently.
local_only = pytest.mark.parametrize("backend", ["local"], indirect=True)


async def grpcurl_run(grpcurl: Path, target: str, *args: str, data: Any = None) -> str:
    argv = [str(grpcurl), "-plaintext", "-max-time", "20"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [target, *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"grpcurl {args} failed: {err.decode()}"
    return out.decode()


@local_only
async def test_list_and_describe_through_reflection(grpcurl: Path, grpc_target: str) -> None:
    services = (await grpcurl_run(grpcurl, grpc_target, "list")).split()
    assert "lakehouse.v1.TableService" in services
    assert "grpc.health.v1.Health" in services

    methods = (await grpcurl_run(grpcurl, grpc_target, "list", "lakehouse.v1.TableService")).split()
    assert "lakehouse.v1.TableService.CreateTable" in methods
    assert "lakehouse.v1.TableService.ListTables" in methods

    described = await grpcurl_run(grpcurl, grpc_target, "describe", "lakehouse.v1.Table")
    # the proto comments are the reference a user reads
    assert "The Iceberg table UUID" in described
    assert "string metadata_location = 10;" in described


@local_only
async def test_create_and_get_a_table_with_json(grpcurl: Path, grpc_target: str) -> None:
    created_ns = json.loads(
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.TableService/CreateNamespace",
            data={"name": "sales", "properties": {"owner": "data-team"}},
        )
    )
    assert created_ns == {"namespace": {"name": "sales", "properties": {"owner": "data-team"}}}

    table_request = {
        "namespace": "sales",
        "table": "orders",
        "schema": {
            "fields": [
                {"name": "id", "type": {"primitive": "PRIMITIVE_TYPE_LONG"}, "required": True},
                {"name": "region", "type": {"primitive": "PRIMITIVE_TYPE_STRING"}},
                {"name": "amount", "type": {"decimal": {"precision": 10, "scale": 2}}},
            ]
        },
        "partitionSpec": {"fields": [{"sourceColumn": "region", "transform": "identity"}]},
    }
    created = json.loads(
        await grpcurl_run(
            grpcurl, grpc_target, "lakehouse.v1.TableService/CreateTable", data=table_request
        )
    )["table"]
    assert created["name"] == "orders"
    assert [f["name"] for f in created["schema"]["fields"]] == ["id", "region", "amount"]

    got = json.loads(
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.TableService/GetTable",
            data={"namespace": "sales", "table": "orders"},
        )
    )["table"]
    assert got["id"] == created["id"]
    assert got["partitionSpec"]["fields"][0]["sourceColumn"] == "region"

    listed = json.loads(
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.TableService/ListTables",
            data={"namespace": "sales"},
        )
    )
    assert listed == {"tables": [{"namespace": "sales", "table": "orders"}]}


@local_only
async def test_health_check(grpcurl: Path, grpc_target: str) -> None:
    overall = json.loads(await grpcurl_run(grpcurl, grpc_target, "grpc.health.v1.Health/Check"))
    assert overall == {"status": "SERVING"}
    per_service = json.loads(
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "grpc.health.v1.Health/Check",
            data={"service": "lakehouse.v1.TableService"},
        )
    )
    assert per_service == {"status": "SERVING"}


@local_only
async def test_errors_show_code_and_details(grpcurl: Path, grpc_target: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(grpcurl),
        "-plaintext",
        "-d",
        '{"name": "a/b"}',
        grpc_target,
        "lakehouse.v1.TableService/CreateNamespace",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    text = err.decode()
    assert "Code: InvalidArgument" in text
    assert "INVALID_NAME" in text
    assert '"field":"name"' in text.replace(" ", "")


@local_only
async def test_write_and_read_rows_as_json(grpcurl: Path, grpc_target: str) -> None:
    await grpcurl_run(
        grpcurl, grpc_target, "lakehouse.v1.TableService/CreateNamespace", data={"name": "j"}
    )
    await grpcurl_run(
        grpcurl,
        grpc_target,
        "lakehouse.v1.TableService/CreateTable",
        data={
            "namespace": "j",
            "table": "t",
            "schema": {
                "fields": [
                    {"name": "id", "type": {"primitive": "PRIMITIVE_TYPE_LONG"}, "required": True},
                    {"name": "amount", "type": {"decimal": {"precision": 10, "scale": 2}}},
                ]
            },
        },
    )
    written = json.loads(
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.IngestService/WriteRows",
            data={
                "namespace": "j",
                "table": "t",
                "requestId": "first-load",
                "jsonRows": {"rows": [{"id": 1, "amount": "12.50"}, {"id": 2}]},
            },
        )
    )
    assert written["result"]["rowsWritten"] == "2"
    read = await grpcurl_run(
        grpcurl,
        grpc_target,
        "lakehouse.v1.TableService/ReadRows",
        data={"namespace": "j", "table": "t", "format": "ROW_FORMAT_JSON", "rowFilter": "id = 1"},
    )
    messages = [json.loads(chunk) for chunk in read.replace("}\n{", "}\x00{").split("\x00")]
    rows = [row for m in messages for row in m.get("jsonRows", {}).get("rows", [])]
    assert rows == [{"id": 1, "amount": "12.50"}]


@local_only
async def test_jobs_through_grpcurl(grpcurl: Path, grpc_target: str) -> None:
    """What an Airflow BashOperator or a cron line does: create with a request id, watch."""
    await grpcurl_run(
        grpcurl, grpc_target, "lakehouse.v1.TableService/CreateNamespace", data={"name": "ops"}
    )
    await grpcurl_run(
        grpcurl,
        grpc_target,
        "lakehouse.v1.TableService/CreateTable",
        data={
            "namespace": "ops",
            "table": "t",
            "schema": {"fields": [{"name": "id", "type": {"primitive": "PRIMITIVE_TYPE_LONG"}}]},
        },
    )
    for i in range(3):
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.IngestService/WriteRows",
            data={"namespace": "ops", "table": "t", "jsonRows": {"rows": [{"id": i}]}},
        )
    create = {
        "requestId": "nightly-2026-11-22",
        "spec": {
            "sql": {
                "statement": "SELECT sum(id) AS total FROM ops.t",
                "previewFormat": "ROW_FORMAT_JSON",
            }
        },
    }
    job = json.loads(
        await grpcurl_run(grpcurl, grpc_target, "lakehouse.v1.JobService/CreateJob", data=create)
    )["job"]
    retried = json.loads(
        await grpcurl_run(grpcurl, grpc_target, "lakehouse.v1.JobService/CreateJob", data=create)
    )["job"]
    assert retried["id"] == job["id"]

    watched = await grpcurl_run(
        grpcurl, grpc_target, "lakehouse.v1.JobService/WatchJob", data={"jobId": job["id"]}
    )
    versions = [json.loads(c) for c in watched.replace("}\n{", "}\x00{").split("\x00")]
    last = versions[-1]["job"]
    assert last["state"] == "JOB_STATE_SUCCEEDED", last
    assert last["result"]["sql"]["previewJsonRows"]["rows"] == [{"total": "3"}]  # a HUGEINT

    compact = json.loads(
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.JobService/CreateJob",
            data={"spec": {"compactTable": {"namespace": "ops", "table": "t"}}},
        )
    )["job"]
    assert compact["kind"] == "JOB_KIND_COMPACT_TABLE"
    listed = json.loads(
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.JobService/ListJobs",
            data={"kinds": ["JOB_KIND_SQL"]},
        )
    )
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]


async def _create_and_watch(grpcurl: Path, target: str, spec: dict[str, Any]) -> dict[str, Any]:
    job = json.loads(
        await grpcurl_run(grpcurl, target, "lakehouse.v1.JobService/CreateJob", data={"spec": spec})
    )["job"]
    watched = await grpcurl_run(
        grpcurl, target, "lakehouse.v1.JobService/WatchJob", data={"jobId": job["id"]}
    )
    last: dict[str, Any] = json.loads(watched.replace("}\n{", "}\x00{").split("\x00")[-1])["job"]
    assert last["state"] == "JOB_STATE_SUCCEEDED", last
    return last


async def test_every_job_kind_through_grpcurl(
    grpcurl: Path, grpc_target: str, backend: Any
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    await grpcurl_run(
        grpcurl, grpc_target, "lakehouse.v1.TableService/CreateNamespace", data={"name": "k"}
    )
    await grpcurl_run(
        grpcurl,
        grpc_target,
        "lakehouse.v1.TableService/CreateTable",
        data={
            "namespace": "k",
            "table": "t",
            "schema": {"fields": [{"name": "id", "type": {"primitive": "PRIMITIVE_TYPE_LONG"}}]},
        },
    )
    landing = backend.jobs.import_prefixes[0]  # file:// on local, s3:// on postgres_s3
    for i in range(3):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": pa.array([i], pa.int64())}), sink)
        put_object(backend, f"{landing}part-{i}.parquet", sink.getvalue().to_pybytes())

    imported = await _create_and_watch(
        grpcurl,
        grpc_target,
        {"importFiles": {"namespace": "k", "table": "t", "sourcePrefix": landing}},
    )
    assert imported["result"]["importFiles"]["rowsImported"] == "3"
    for i in range(3, 6):  # two more snapshots and files
        await grpcurl_run(
            grpcurl,
            grpc_target,
            "lakehouse.v1.IngestService/WriteRows",
            data={"namespace": "k", "table": "t", "jsonRows": {"rows": [{"id": i}]}},
        )
    compacted = await _create_and_watch(
        grpcurl, grpc_target, {"compactTable": {"namespace": "k", "table": "t"}}
    )
    assert compacted["result"]["compactTable"]["filesBefore"] == "6"
    expired = await _create_and_watch(
        grpcurl,
        grpc_target,
        {
            "expireSnapshots": {
                "namespace": "k",
                "table": "t",
                "retainLast": 1,
                "maxSnapshotAge": "0s",
            }
        },
    )
    assert expired["result"]["expireSnapshots"]["snapshotsExpired"] == "4"
    orphans = await _create_and_watch(
        grpcurl,
        grpc_target,
        {"removeOrphanFiles": {"namespace": "k", "table": "t", "dryRun": True}},
    )
    assert orphans["kind"] == "JOB_KIND_REMOVE_ORPHAN_FILES"
    assert "removeOrphanFiles" in orphans["result"]
    counted = await _create_and_watch(
        grpcurl,
        grpc_target,
        {"sql": {"statement": "SELECT count(*) AS n FROM k.t", "previewFormat": "ROW_FORMAT_JSON"}},
    )
    assert counted["result"]["sql"]["previewJsonRows"]["rows"] == [{"n": 6}]
