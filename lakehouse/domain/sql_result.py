"""What a SQL engine adapter (DuckDB, Trino) hands back for one statement."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class SqlOutcome:
    """The outcome of one SQL statement.

    Attributes:
        rows_affected: Rows inserted, updated or deleted by a data-changing statement; for a
            query, the number of rows of its full result.
        preview: The first result rows (at most the requested limit), with the result's
            schema; empty with an empty schema for a statement that returns no rows.
        truncated: True when the result had more rows than ``preview`` holds.
        snapshot_id: The snapshot committed in the destination table (or the table a
            data-changing statement wrote), when the engine knows it.
    """

    rows_affected: int
    preview: pa.Table
    truncated: bool
    snapshot_id: int | None = None
