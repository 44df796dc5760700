"""The invalid-row policy: a request's choice, else its table's property, else reject."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakehouse.core.invalid_rows import (
    MAX_LISTED_ROW_ERRORS,
    POLICY_PROPERTY,
    InvalidRowPolicy,
    RowsRejected,
    UnknownPolicy,
    resolve_policy,
)
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.rows.problems import DecodedRows, RowErrorReason, RowProblem


@pytest.mark.parametrize("requested", list(InvalidRowPolicy))
@pytest.mark.parametrize("property_value", [None, "reject", "dead-letter"])
def test_a_request_s_own_policy_wins(
    requested: InvalidRowPolicy, property_value: str | None
) -> None:
    properties = {} if property_value is None else {POLICY_PROPERTY: property_value}
    assert resolve_policy(requested, properties) is requested


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({}, InvalidRowPolicy.REJECT),
        ({POLICY_PROPERTY: "reject"}, InvalidRowPolicy.REJECT),
        ({POLICY_PROPERTY: "dead-letter"}, InvalidRowPolicy.DEAD_LETTER),
        ({POLICY_PROPERTY: "something else"}, InvalidRowPolicy.REJECT),
    ],
)
def test_without_one_the_table_property_decides(
    properties: dict[str, str], expected: InvalidRowPolicy
) -> None:
    assert resolve_policy(None, properties) is expected


def test_an_unknown_policy_is_refused_on_its_field() -> None:
    with pytest.raises(InvalidArgument) as raised:
        resolve_policy(UnknownPolicy(7), {POLICY_PROPERTY: "dead-letter"})
    assert [v.field for v in raised.value.violations] == ["invalid_row_policy"]
    assert "unknown policy 7" in str(raised.value)


def test_rows_rejected_lists_the_first_problems_and_counts_all() -> None:
    problems = [
        RowProblem(i, "a" if i % 2 else "", RowErrorReason.TYPE_MISMATCH, f"bad {i}")
        for i in range(MAX_LISTED_ROW_ERRORS + 5)
    ]
    decoded = DecodedRows(pa.table({"a": pa.array([], pa.int64())}), [], problems, {}, 105)
    rejected = RowsRejected(decoded)
    assert rejected.problems == problems[:MAX_LISTED_ROW_ERRORS]
    assert rejected.reason == "INVALID_ROWS"
    assert [v.field for v in rejected.violations[:2]] == ["rows[0]", "rows[1].a"]
    assert str(rejected).startswith("105 row(s) do not match the table schema; first: rows[0]:")
