"""Row-level changes as domain values: write modes, change streams (CDC) and their outcomes.

A row change removes rows of a table (those a filter matches, those of the partitions a load
replaces, those whose key a change stream names) and may add rows, in one Iceberg snapshot.
This module holds what the change is and what it did, and the pure Arrow work on a change
stream's rows (checking change types, keeping the newest change of each key); the
copy-on-write itself is in ``lakehouse.adapters.iceberg.row_changes``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import BooleanExpression
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

from lakehouse.domain.errors import FieldViolation, InvalidArgument

#: The change-stream column naming what a row does: ``UPSERT`` (or null) or ``DELETE``.
CHANGE_TYPE_COLUMN = "_change_type"
#: The change-stream column ordering the changes of one key: the highest wins.
SEQUENCE_COLUMN = "_change_sequence_number"
#: The change-stream columns, which are not columns of the table.
CHANGE_COLUMNS = (CHANGE_TYPE_COLUMN, SEQUENCE_COLUMN)
UPSERT = "UPSERT"
DELETE = "DELETE"


class WriteMode(enum.Enum):
    """What a write does to the rows already in the table (``lakehouse.v1.WriteMode``)."""

    APPEND = 1
    OVERWRITE = 2
    OVERWRITE_PARTITIONS = 3
    UPSERT = 4

    @property
    def removes_rows(self) -> bool:
        """Whether the mode may remove rows already in the table."""
        return self is not WriteMode.APPEND

    @property
    def whole_stream(self) -> bool:
        """Whether an AppendRows stream in this mode is one write, committed at half-close."""
        return self in (WriteMode.OVERWRITE, WriteMode.OVERWRITE_PARTITIONS)


@dataclass(frozen=True)
class RowChange:
    """What a write in a mode other than APPEND removes, besides adding its rows.

    Attributes:
        mode: The write mode.
        overwrite_filter: OVERWRITE: the rows replaced (already parsed for the table).
        key_columns: UPSERT: the table's identifier columns (full dotted names).
    """

    mode: WriteMode
    overwrite_filter: BooleanExpression | None = None
    key_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChangeStats:
    """What a row change did to the rows and files already in the table.

    Attributes:
        rows_deleted: Rows removed (matched by the filter, in replaced partitions, or deleted
            by a change stream's DELETE).
        rows_updated: UPSERT: rows replaced by a row with the same key.
        files_rewritten: Data files written again without the removed rows.
        files_removed: Data files removed whole.
        files_added: Data files written by the change (rewrites and new rows).
        rows_added: Rows the change added (a change stream's DELETE rows add none).
    """

    rows_deleted: int = 0
    rows_updated: int = 0
    files_rewritten: int = 0
    files_removed: int = 0
    files_added: int = 0
    rows_added: int = 0


@dataclass(frozen=True)
class DeleteOutcome:
    """The result of DeleteRows.

    Attributes:
        stats: What the delete did (all zero when nothing matched, or already applied).
        snapshot_id: The snapshot that committed it; None when nothing was committed.
        already_applied: An earlier call with the same request id did the delete;
            ``stats.rows_deleted`` is that call's.
        etag: The table's etag afterwards.
    """

    stats: ChangeStats
    snapshot_id: int | None
    already_applied: bool
    etag: str


def change_stream_problems(data: pa.Table, *, has_sequence: bool) -> None:
    """Checks a change stream's rows: change types, and one change per key without an order.

    Args:
        data: The rows, with the key columns first checked by the schema; the change columns
            present as the request sent them.
        has_sequence: Whether the rows carry ``_change_sequence_number``.

    Raises:
        InvalidArgument: A change type outside UPSERT and DELETE, or a null sequence number
            (reason INVALID_ROWS), naming the first such row.
    """
    if CHANGE_TYPE_COLUMN in data.column_names:
        kinds = data[CHANGE_TYPE_COLUMN]
        bad = pc.and_(
            pc.is_valid(kinds), pc.invert(pc.is_in(kinds, value_set=pa.array([UPSERT, DELETE])))
        )
        _first_bad(bad, CHANGE_TYPE_COLUMN, f"must be {UPSERT} or {DELETE}")
    if has_sequence:
        _first_bad(pc.is_null(data[SEQUENCE_COLUMN]), SEQUENCE_COLUMN, "must not be null")


def with_change_columns(schema: Schema) -> Schema:
    """``schema`` with the two optional change-stream columns after its own (new field ids).

    A change stream's rows are decoded and checked against it, so the change columns get
    the same type checks and row errors as the table's own.
    """
    next_id = schema.highest_field_id + 1
    fields = (
        *schema.fields,
        NestedField(next_id, CHANGE_TYPE_COLUMN, StringType(), required=False),
        NestedField(next_id + 1, SEQUENCE_COLUMN, LongType(), required=False),
    )
    return Schema(
        *fields, schema_id=schema.schema_id, identifier_field_ids=schema.identifier_field_ids
    )


def latest_change_per_key(
    data: pa.Table, keys: tuple[str, ...], *, has_sequence: bool
) -> tuple[pa.Table, pa.Array | None]:
    """The newest change of each key (the highest sequence number wins), and their positions.

    Without a sequence number, two rows with the same key are refused: their order would be
    a guess.

    Returns:
        The rows kept, in request order, and the request position of each (None when every
        row is kept).

    Raises:
        InvalidArgument: Two rows with the same key and no sequence number (reason
            INVALID_ROWS), naming the second row.
    """
    if data.num_rows <= 1:
        return data, None
    position = "__lakehouse_position"
    indexed = data.select(list(keys)).append_column(
        position, pa.array(range(data.num_rows), pa.int64())
    )
    if has_sequence:
        indexed = indexed.append_column(SEQUENCE_COLUMN, data[SEQUENCE_COLUMN])
        # Highest sequence last within each key; ties keep the later row.
        ordered = indexed.sort_by([(SEQUENCE_COLUMN, "ascending"), (position, "ascending")])
        last = ordered.group_by(list(keys), use_threads=False).aggregate([(position, "last")])
        positions = pc.take(last[f"{position}_last"], pc.sort_indices(last[f"{position}_last"]))
        if len(positions) == data.num_rows:
            return data, None
        return data.take(positions), positions.combine_chunks()
    counts = indexed.group_by(list(keys), use_threads=False).aggregate(
        [(position, "count"), (position, "max")]
    )
    duplicated = counts.filter(pc.greater(counts[f"{position}_count"], 1))
    if duplicated.num_rows:
        row = int(pc.min(duplicated[f"{position}_max"]).as_py())
        raise _row_error(
            row,
            ",".join(keys),
            "has the same key as an earlier row of the request; send _change_sequence_number "
            "to order changes of one key",
        )
    return data, None


def _first_bad(mask: pa.ChunkedArray | pa.Array, column: str, description: str) -> None:
    found = pc.index(mask, True).as_py()
    if found is not None and found >= 0:
        raise _row_error(found, column, description)


def _row_error(row: int, column: str, description: str) -> InvalidArgument:
    field = f"rows[{row}].{column}"
    return InvalidArgument(
        f"{field}: {description}",
        violations=[FieldViolation(field, description)],
        reason="INVALID_ROWS",
    )
