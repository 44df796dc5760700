"""The JSON row format: values a JSON number cannot carry exactly travel as strings, maps
with string keys as objects and others as key/value pairs. Seen in a SQL job's JSON preview,
as a client reads it.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from lakehouse.v1 import job_pb2, job_service_pb2_grpc, rows_pb2
from lakehouse.v1 import job_service_pb2 as jpb

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
WAIT_SECONDS = 60.0

STATEMENT = """
SELECT
  9007199254740993::BIGINT AS big,
  -9007199254740993::BIGINT AS negative_big,
  9007199254740992::BIGINT AS exact,
  'nan'::DOUBLE AS not_a_number,
  'inf'::DOUBLE AS infinity,
  '-inf'::DOUBLE AS negative_infinity,
  0.25::DOUBLE AS quarter,
  12.50::DECIMAL(10, 2) AS price,
  DATE '2026-12-05' AS day,
  TIMESTAMP '2026-12-05 21:30:00' AS at,
  TIME '21:30:00' AS clock,
  '\\xAA\\xBB'::BLOB AS raw,
  MAP {'a': 1, 'b': 2} AS by_name,
  MAP {1: 'one', 2: 'two'} AS by_number,
  [1, 2, 3] AS numbers,
  {'x': 1, 'y': [true, false]} AS nested,
  NULL::VARCHAR AS nothing
"""


@pytest.fixture
def jobs(channel: grpc.aio.Channel) -> Any:
    return job_service_pb2_grpc.JobServiceStub(channel)


async def preview(jobs: Any, statement: str) -> dict[str, Any]:
    """The one row of a SQL job's JSON preview, as a dict of JSON values."""
    spec = job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(statement=statement, preview_format=rows_pb2.ROW_FORMAT_JSON)
    )
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    last: list[job_pb2.Job] = []

    async def watch() -> None:
        async for message in jobs.WatchJob(jpb.WatchJobRequest(job_id=created.job.id)):
            last[:] = [message.job]
            if message.job.state in TERMINAL:
                return

    await asyncio.wait_for(watch(), WAIT_SECONDS)
    job = last[0]
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    [row] = job.result.sql.preview_json_rows.rows
    return MessageToDict(row)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_json_preview_keeps_what_json_numbers_cannot(backend: Any, jobs: Any) -> None:
    row = await preview(jobs, STATEMENT)
    assert row == {
        "big": "9007199254740993",  # past 2^53: a string, exact
        "negative_big": "-9007199254740993",
        "exact": 9007199254740992,  # 2^53 itself is still a number
        "not_a_number": "NaN",
        "infinity": "Infinity",
        "negative_infinity": "-Infinity",
        "quarter": 0.25,
        "price": "12.50",  # decimals as strings, scale kept
        "day": "2026-12-05",
        "at": "2026-12-05T21:30:00",
        "clock": "21:30:00",
        "raw": base64.b64encode(b"\xaa\xbb").decode(),
        "by_name": {"a": 1, "b": 2},
        "by_number": [{"key": 1, "value": "one"}, {"key": 2, "value": "two"}],
        "numbers": [1, 2, 3],
        "nested": {"x": 1, "y": [True, False]},
        "nothing": None,
    }
