"""Idempotency of SQL jobs: finding what an earlier attempt of the same job committed.

Whatever a job writes lands in one commit that records the job id (``JOB_ID_PROPERTY``), so
a retried attempt finds its own commit and returns its outcome instead of writing twice.
"""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.io.pyarrow import (
    schema_to_pyarrow,
)

from lakehouse.adapters.duckdb.preview import fitting_rows
from lakehouse.adapters.iceberg.errors import translate_errors
from lakehouse.adapters.iceberg.planned_changes import ROWS_DELETED_KEY, ROWS_UPDATED_KEY
from lakehouse.adapters.iceberg.scan import small_offsets
from lakehouse.domain.errors import (
    AlreadyExists,
    NotFound,
)
from lakehouse.domain.sql_result import SqlOutcome

JOB_ID_PROPERTY = "lakehouse.job-id"
"""Recorded in the snapshot summary (INSERT, DELETE, UPDATE) or the table properties
(destination) of what a job commits."""


def earlier_insert(catalog: Catalog, target: tuple[str, str], job_id: str) -> SqlOutcome | None:
    """The outcome of this job's INSERT if an earlier attempt committed it already."""
    with translate_errors(*target):
        table = catalog.load_table(target)
    for snapshot in table.metadata.snapshots:
        summary = snapshot.summary
        if summary is not None and summary.get(JOB_ID_PROPERTY) == job_id:
            rows = int(summary.get("added-records") or 0)
            return SqlOutcome(rows, pa.table({}), False, snapshot.snapshot_id)
    return None


def earlier_change(catalog: Catalog, target: tuple[str, str], job_id: str) -> SqlOutcome | None:
    """The outcome of this job's DELETE or UPDATE if an earlier attempt committed it already."""
    with translate_errors(*target):
        table = catalog.load_table(target)
    for snapshot in table.metadata.snapshots:
        summary = snapshot.summary
        if summary is not None and summary.get(JOB_ID_PROPERTY) == job_id:
            rows = int(summary.get(ROWS_DELETED_KEY) or 0) + int(summary.get(ROWS_UPDATED_KEY) or 0)
            return SqlOutcome(rows, pa.table({}), False, snapshot.snapshot_id)
    return None


def earlier_destination(
    catalog: Catalog,
    destination: tuple[str, str],
    job_id: str,
    preview_limit: int,
    preview_max_bytes: int,
) -> SqlOutcome | None:
    """Refuses an existing destination, unless an earlier attempt of this job made it.

    The table is created and filled in one commit, so if it exists with this job's id the
    whole result is in it: the outcome is read back (row count and preview) instead of
    running the query again.
    """
    namespace, name = destination
    with translate_errors(namespace):
        catalog.load_namespace_properties(namespace)
    try:
        with translate_errors(namespace, name):
            table = catalog.load_table(destination)
    except NotFound:
        return None
    if table.properties.get(JOB_ID_PROPERTY) != job_id:
        raise AlreadyExists(
            f"table {namespace}.{name} already exists",
            reason="TABLE_ALREADY_EXISTS",
            metadata={"namespace": namespace, "table": name},
        )
    snapshot = table.current_snapshot()
    summary = snapshot.summary if snapshot is not None else None
    rows = int(summary.get("total-records") or 0) if summary is not None else 0
    schema = small_offsets(schema_to_pyarrow(table.schema()))
    with translate_errors(namespace, name):
        preview = table.scan(limit=preview_limit).to_arrow() if preview_limit else None
    preview = schema.empty_table() if preview is None else preview.cast(schema)
    preview = preview.slice(0, fitting_rows(preview, preview.num_rows, preview_max_bytes))
    return SqlOutcome(
        rows, preview, rows > preview.num_rows, snapshot.snapshot_id if snapshot else None
    )
