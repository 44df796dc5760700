"""Dead letters: invalid rows kept in an Iceberg table instead of failing the request.

Each namespace gets one dead-letter table, ``_dead_letters``, created on first use. Rows go
through the same group commit as any other write, and are committed before the request's
valid rows, so an acknowledged request has both durable. A resent request may dead-letter its
invalid rows again: dead letters are delivered at least once.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from lakehouse.core.ingest import Ingest
from lakehouse.core.tables import Tables
from lakehouse.domain.errors import AlreadyExists, FailedPrecondition
from lakehouse.domain.rows.problems import DecodedRows
from lakehouse.domain.schemas import schema_to_arrow

DEAD_LETTER_TABLE = "_dead_letters"

DEAD_LETTER_SCHEMA = Schema(
    NestedField(1, "table", StringType(), required=True, doc="The table the row was sent to."),
    NestedField(2, "row_index", LongType(), required=True, doc="The row's index in its request."),
    NestedField(3, "column", StringType(), doc="The column at fault; empty for the whole row."),
    NestedField(4, "reason", StringType(), required=True, doc="The RowErrorReason name."),
    NestedField(5, "message", StringType(), doc="What was wrong, for people."),
    NestedField(6, "payload", StringType(), doc="The original row (JSON)."),
    NestedField(7, "writer_id", StringType(), doc="The writer that sent it, if any."),
    NestedField(8, "request_offset", LongType(), doc="The request's offset, if any."),
    NestedField(9, "received_at", TimestamptzType(), required=True, doc="When it arrived."),
)


def _fits_dead_letters(schema: Schema) -> bool:
    """Whether dead letters can be written to a table of this schema.

    Every dead-letter column must be there with its type, and no other column may be
    required (a dead letter would have no value for it).
    """
    by_name = {f.name: f for f in schema.fields}
    expected = {f.name for f in DEAD_LETTER_SCHEMA.fields}
    return all(
        f.name in by_name and by_name[f.name].field_type == f.field_type
        for f in DEAD_LETTER_SCHEMA.fields
    ) and not any(f.required and f.name not in expected for f in schema.fields)


class DeadLetters:
    """Writes the invalid rows of a request to its namespace's dead-letter table."""

    def __init__(self, tables: Tables, ingest: Ingest) -> None:
        self._tables = tables
        self._ingest = ingest

    async def _ensure_table(self, namespace: str) -> Schema:
        try:
            info = await self._tables.get_table(namespace, DEAD_LETTER_TABLE)
        except Exception:
            try:
                info = await self._tables.create_table(
                    namespace,
                    DEAD_LETTER_TABLE,
                    DEAD_LETTER_SCHEMA,
                    PartitionSpec(),
                    SortOrder(),
                    {"comment": "invalid rows sent to IngestService"},
                )
            except AlreadyExists:  # another stream or replica made it first
                info = await self._tables.get_table(namespace, DEAD_LETTER_TABLE)
        return info.schema

    async def write(
        self,
        namespace: str,
        table: str,
        decoded: DecodedRows,
        *,
        writer_id: str,
        offset: int | None,
    ) -> int:
        """Commits one dead letter per invalid row; returns how many.

        Raises:
            Unavailable: The catalog or the object store failed (nothing acknowledged).
            FailedPrecondition: The namespace's dead-letter table has another schema.
        """
        first_problem: dict[int, tuple[str, str, str]] = {}
        for problem in decoded.problems:
            first_problem.setdefault(
                problem.row_index, (problem.column, problem.reason.name, problem.message)
            )
        rows = sorted(i for i in first_problem if i >= 0)
        if not rows:
            return 0
        schema = await self._ensure_table(namespace)
        if not _fits_dead_letters(schema):
            # A client may have created or altered a table of that name (found by the fuzz
            # test, which failed here with an INTERNAL KeyError).
            raise FailedPrecondition(
                f"{namespace}.{DEAD_LETTER_TABLE} does not have the dead-letter schema; "
                "rename or drop it, or send requests with the reject policy",
                reason="DEAD_LETTER_TABLE_INVALID",
                metadata={"namespace": namespace, "table": DEAD_LETTER_TABLE},
            )
        now = dt.datetime.now(dt.UTC)
        data = pa.table(
            {
                "table": [table] * len(rows),
                "row_index": rows,
                "column": [first_problem[i][0] for i in rows],
                "reason": [first_problem[i][1] for i in rows],
                "message": [first_problem[i][2] for i in rows],
                "payload": [decoded.invalid_payloads.get(i) for i in rows],
                "writer_id": [writer_id or None] * len(rows),
                "request_offset": [offset] * len(rows),
                "received_at": [now] * len(rows),
            },
            schema=schema_to_arrow(schema),
        )
        await self._ingest.write(namespace, DEAD_LETTER_TABLE, data)
        return len(rows)
