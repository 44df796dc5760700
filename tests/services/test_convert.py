"""Conversions between lakehouse.v1 messages and core values (services/convert.py)."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from lakehouse.core.invalid_rows import InvalidRowPolicy, RequestedPolicy, UnknownPolicy
from lakehouse.services.convert import (
    invalid_row_policy_from_proto,
    ms_to_timestamp,
    us_to_timestamp,
)
from lakehouse.v1 import ingest_pb2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ingest_pb2.INVALID_ROW_POLICY_UNSPECIFIED, None),
        (ingest_pb2.INVALID_ROW_POLICY_REJECT, InvalidRowPolicy.REJECT),
        (ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER, InvalidRowPolicy.DEAD_LETTER),
        # Kept, not refused: only a request with an invalid row consults its policy.
        (99, UnknownPolicy(99)),
    ],
)
def test_invalid_row_policy(value: int, expected: RequestedPolicy) -> None:
    assert invalid_row_policy_from_proto(value) == expected


def test_timestamps_from_milliseconds_and_microseconds() -> None:
    assert ms_to_timestamp(1_700_000_000_123) == Timestamp(seconds=1_700_000_000, nanos=123_000_000)
    assert us_to_timestamp(1_700_000_000_123_456) == Timestamp(
        seconds=1_700_000_000, nanos=123_456_000
    )
