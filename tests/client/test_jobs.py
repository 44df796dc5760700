"""lakehouse.client.jobs: enum names that follow the contract, and previews of each format."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakehouse.client.errors import LakehouseError
from lakehouse.client.jobs import Job, JobKind, JobState, sql_preview, succeeded
from lakehouse.v1 import job_pb2, rows_pb2


@pytest.mark.parametrize(
    ("python_enum", "proto_enum", "prefix"),
    [(JobState, job_pb2.JobState, "JOB_STATE_"), (JobKind, job_pb2.JobKind, "JOB_KIND_")],
)
def test_the_enums_name_every_value_of_the_contract(
    python_enum: type[JobState] | type[JobKind], proto_enum: object, prefix: str
) -> None:
    proto_items = dict(proto_enum.items())  # type: ignore[attr-defined]
    assert {prefix + m.name: int(m) for m in python_enum} == proto_items


def test_a_state_newer_than_the_client_stays_a_number() -> None:
    job = Job.from_proto(job_pb2.Job(id="j", state=99, kind=job_pb2.JOB_KIND_SQL))  # type: ignore[arg-type]
    assert job.state == 99
    assert "kind=<JobKind.SQL: 1>" in repr(job)
    assert not job.finished
    with pytest.raises(LakehouseError, match="FAILED_PRECONDITION"):
        succeeded(job)


def test_previews_in_both_formats_become_tables() -> None:
    rows = pa.table({"region": ["eu", "us"], "n": [3, 4]})
    batch = rows.to_batches()[0]
    arrow_job = job_pb2.Job(id="a", state=job_pb2.JOB_STATE_SUCCEEDED)
    result = arrow_job.result.sql
    result.arrow_schema.serialized_schema = rows.schema.serialize().to_pybytes()
    result.preview_arrow_record_batch.CopyFrom(
        rows_pb2.ArrowRecordBatch(serialized_record_batch=batch.serialize().to_pybytes())
    )
    assert sql_preview(arrow_job).equals(rows)

    json_job = job_pb2.Job(id="b", state=job_pb2.JOB_STATE_SUCCEEDED)
    json_job.result.sql.preview_json_rows.rows.add().update({"region": "eu", "n": 3})
    assert sql_preview(Job.from_proto(json_job)).to_pylist() == [{"n": 3.0, "region": "eu"}]

    with pytest.raises(ValueError, match="no SQL result"):
        sql_preview(job_pb2.Job(id="c", state=job_pb2.JOB_STATE_RUNNING))
