"""What decoding ingest payloads gives: valid rows, and a problem per bad row.

``DecodedRows`` holds the valid rows; each bad row has a ``RowProblem`` with a stable
``RowErrorReason``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.types import IcebergType, ListType, MapType, StructType


class RowErrorReason(enum.Enum):
    """Why a row does not match the table schema (mirrors ``lakehouse.v1.RowErrorReason``)."""

    MISSING_REQUIRED_COLUMN = 1
    TYPE_MISMATCH = 2
    UNKNOWN_COLUMN = 3
    UNPARSEABLE_ROW = 4
    CORRUPT_ARROW = 5
    VALUE_OUT_OF_RANGE = 6


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One problem of one row.

    Attributes:
        row_index: The row's index in the request, from 0; -1 for the whole payload
            (``CORRUPT_ARROW``).
        column: The dotted path of the column at fault (``address.city``, ``tags.element``,
            ``attrs.key``); empty when the problem concerns the whole row or payload.
        reason: Why the row is invalid.
        message: A human-readable description.
    """

    row_index: int
    column: str
    reason: RowErrorReason
    message: str


@dataclass(frozen=True)
class DecodedRows:
    """The outcome of decoding one request's rows.

    Attributes:
        valid: The valid rows, conformed exactly to the table's Arrow schema (names, order,
            types, nullability and field-id metadata of ``schema_to_arrow``).
        valid_indices: The request index of each row of ``valid``, in the same order.
        problems: The first problem of each invalid row, by row index (one entry with
            ``row_index`` -1 for corrupt Arrow bytes). For Arrow input it is computed on
            access: ``problems[:100]`` costs 100 rows however many are invalid.
        invalid_payloads: Each invalid row's original content as JSON text (the Arrow row
            rendered like JSON rows), keyed by row index, for the dead-letter table. Rendered
            on access for Arrow input.
        row_count: The number of rows in the request, valid or not; 0 for corrupt Arrow.
    """

    valid: pa.Table
    valid_indices: Sequence[int]
    problems: Sequence[RowProblem]
    invalid_payloads: Mapping[int, str]
    row_count: int

    @property
    def invalid_count(self) -> int:
        """The number of invalid rows (0 for corrupt Arrow, where no row could be read)."""
        return self.row_count - len(self.valid_indices)


# --- Arrow ------------------------------------------------------------------------------


# --- Arrow IPC sizes, read from the message headers before any body is decoded ------------


# --- JSON -------------------------------------------------------------------------------


def type_name(itype: IcebergType) -> str:
    """An Iceberg type as error messages name it (``struct``, ``list``, ``map``, ``long``...)."""
    if isinstance(itype, StructType):
        return "struct"
    if isinstance(itype, ListType):
        return "list"
    if isinstance(itype, MapType):
        return "map"
    return str(itype)
