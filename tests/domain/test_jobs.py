"""The domain's job states are the contract's: a stored state reads back as the same enum."""

from __future__ import annotations

from lakehouse.domain import jobs
from lakehouse.v1 import job_pb2


def test_job_states_are_the_contracts_numbers() -> None:
    assert {
        name.removeprefix("JOB_STATE_"): number
        for name, number in job_pb2.JobState.items()
        if name != "JOB_STATE_UNSPECIFIED"
    } == {
        "QUEUED": jobs.QUEUED,
        "RUNNING": jobs.RUNNING,
        "SUCCEEDED": jobs.SUCCEEDED,
        "FAILED": jobs.FAILED,
        "CANCELLED": jobs.CANCELLED,
    }
