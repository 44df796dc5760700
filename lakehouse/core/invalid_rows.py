"""The invalid-row policy: what an ingest request does with rows that do not match the schema.

A request asks to reject or to dead-letter, or leaves the choice to its table's property
``lakehouse.ingest.invalid-row-policy`` (reject unless it says ``dead-letter``). A request
that is rejected raises ``RowsRejected``, which lists its first ``MAX_LISTED_ROW_ERRORS``
problems; nothing of it is written.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from lakehouse.domain.errors import FieldViolation, InvalidArgument
from lakehouse.domain.rows.problems import DecodedRows, RowProblem

MAX_LISTED_ROW_ERRORS = 100
POLICY_PROPERTY = "lakehouse.ingest.invalid-row-policy"


class InvalidRowPolicy(enum.Enum):
    """What happens to a request holding rows that do not match the table schema."""

    REJECT = "reject"
    """The whole request fails with ``RowsRejected``; nothing of it is written."""
    DEAD_LETTER = "dead-letter"
    """The invalid rows go to the namespace's dead-letter table, the valid rows to the table."""


@dataclass(frozen=True)
class UnknownPolicy:
    """A policy value this server does not know.

    It is refused only when a row needs a policy: a request whose rows are all valid never
    consults it.

    Attributes:
        value: The value as the client sent it.
    """

    value: int


RequestedPolicy = InvalidRowPolicy | UnknownPolicy | None
"""A request's policy; None leaves the choice to the table's property."""


def resolve_policy(requested: RequestedPolicy, properties: Mapping[str, str]) -> InvalidRowPolicy:
    """The policy that applies to a request with invalid rows.

    Raises:
        InvalidArgument: On field ``invalid_row_policy``: a value this server does not know.
    """
    if isinstance(requested, UnknownPolicy):
        raise InvalidArgument.field("invalid_row_policy", f"unknown policy {requested.value}")
    if requested is not None:
        return requested
    if properties.get(POLICY_PROPERTY, "reject") == "dead-letter":
        return InvalidRowPolicy.DEAD_LETTER
    return InvalidRowPolicy.REJECT


def listed_problems(decoded: DecodedRows) -> list[RowProblem]:
    """The problems a response lists: the first ``MAX_LISTED_ROW_ERRORS`` of them."""
    return list(decoded.problems[:MAX_LISTED_ROW_ERRORS])


class RowsRejected(InvalidArgument):
    """A request whose rows do not match the table schema; nothing of it was written.

    Attributes:
        problems: The listed row problems, sent in AppendRows acknowledgements too.
    """

    def __init__(self, decoded: DecodedRows) -> None:
        problems = decoded.problems[:MAX_LISTED_ROW_ERRORS]
        violations = [
            FieldViolation(
                f"rows[{p.row_index}]" + (f".{p.column}" if p.column else ""),
                f"{p.reason.name}: {p.message}",
            )
            for p in problems
        ]
        first = violations[0]
        # invalid_count is derived, not counted: a rejected million-row batch costs no loop
        bad_rows = max(decoded.invalid_count, 1)
        super().__init__(
            f"{bad_rows} row(s) do not match the table schema; first: {first.field}: "
            f"{first.description}; nothing was written",
            violations=violations,
            reason="INVALID_ROWS",
        )
        self.problems = listed_problems(decoded)
