"""Domain metrics (``lakehouse_*``); the gRPC ones live in ``lakehouse.server.metrics``."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

from prometheus_client import Counter, Gauge, Histogram
from pyiceberg.table import Table as IcebergTable

INGEST_ROWS = Counter("lakehouse_ingest_rows_total", "Rows committed by IngestService.")
INGEST_BYTES = Counter(
    "lakehouse_ingest_bytes_total", "Bytes (Arrow, as received) accepted by IngestService."
)
ROW_CHANGES = Counter(
    "lakehouse_row_changes_total",
    "Committed row changes by kind: delete (DeleteRows), overwrite, overwrite_partitions, "
    "upsert (write modes).",
    ("kind",),
)
ROW_CHANGE_ROWS = Counter(
    "lakehouse_row_change_rows_total",
    "Rows already in tables that row changes removed, by how: deleted or updated.",
    ("how",),
)
ROW_CHANGE_FILES = Counter(
    "lakehouse_row_change_files_total",
    "Data files row changes took out of tables, by how: rewritten (without the removed rows) "
    "or removed (whole).",
    ("how",),
)
INGEST_COMMITS = Counter(
    "lakehouse_ingest_commits_total", "Group commits by outcome.", ("outcome",)
)
INGEST_COMMIT_SECONDS = Histogram(
    "lakehouse_ingest_commit_seconds",
    "Duration of a group commit, from the start of planning to the committed snapshot.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INGEST_COMMIT_CONFLICTS = Counter(
    "lakehouse_ingest_commit_conflicts_total",
    "Commits that lost a race with another writer and were re-planned on fresh metadata.",
)
INGEST_OWNED_BRANCHES = Gauge(
    "lakehouse_ingest_commit_owned_branches",
    "Table branches whose ingest commits this replica owns (its commit leases).",
)
INGEST_HANDED_BATCHES = Counter(
    "lakehouse_ingest_handed_batches_total",
    "Batches of data files other replicas handed to this replica as commit owner, by fate: "
    "committed, or rejected for their replica to plan again.",
    ("outcome",),
)
INGEST_BUFFERED_BYTES = Gauge(
    "lakehouse_ingest_buffered_bytes", "Bytes waiting in the write buffers of all tables."
)
INGEST_BUFFER_LIMIT_BYTES = Gauge(
    "lakehouse_ingest_buffer_limit_bytes",
    "Most bytes the write buffers of all tables may hold together (LAKEHOUSE_INGEST__BUFFER_BYTES"
    "); alerts compare lakehouse_ingest_buffered_bytes with it.",
)
READ_AHEAD_BYTES = Gauge(
    "lakehouse_read_ahead_bytes",
    "Decoded bytes of ReadRows batches queued ahead of their streams, all streams together.",
)
INGEST_REJECTED_ROWS = Counter(
    "lakehouse_ingest_rejected_rows_total", "Rows that did not match the table schema.", ("reason",)
)
REQUEST_IDS_UNRECORDED = Counter(
    "lakehouse_request_ids_unrecorded_total",
    "Committed WriteRows request ids the request-id store could not record: each is "
    "remembered only while its snapshot is kept.",
)
INGEST_DEAD_LETTERED_ROWS = Counter(
    "lakehouse_ingest_dead_lettered_rows_total", "Invalid rows written to dead-letter tables."
)

JOBS_CREATED = Counter(
    "lakehouse_jobs_created_total",
    "Jobs created, by kind and origin (api, scheduler).",
    ("kind", "origin"),
)
JOB_QUOTA_REFUSALS = Counter(
    "lakehouse_job_quota_refusals_total",
    "CreateJob calls refused because the caller had as many unfinished jobs as it may.",
)
JOBS_FINISHED = Counter(
    "lakehouse_jobs_finished_total",
    "Jobs that reached a final state, by kind and state (succeeded, failed, cancelled); each "
    "job is counted once, by the process that recorded its end.",
    ("kind", "outcome"),
)
JOB_ATTEMPTS_ENDED = Counter(
    "lakehouse_job_attempts_ended_total",
    "Job attempts this process's workers ran that ended, by kind and outcome: succeeded, "
    "failed, cancelled, retried (queued again after a retryable failure), shutdown (handed "
    "back by a stopping worker), lease_lost (stopped because the lease was gone).",
    ("kind", "outcome"),
)
JOB_SECONDS = Histogram(
    "lakehouse_job_seconds",
    "Duration of one job attempt, from claim to its end, by kind.",
    ("kind",),
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600),
)
JOBS_RUNNING = Gauge("lakehouse_jobs_running", "Jobs this process runs now, by kind.", ("kind",))
JOBS_QUEUED = Gauge(
    "lakehouse_jobs_queued",
    "Jobs waiting for a worker in the shared job store, by kind. Every process reports the "
    "same store: aggregate with max, not sum.",
    ("kind",),
)
JOB_LEASE_LOSSES = Counter(
    "lakehouse_job_lease_losses_total",
    "Job leases that expired (a dead or stalled worker), counted once by the process that "
    "found it: taking the job over, or ending it when it must not run again.",
)

# Backing services: retries and circuit breakers (lakehouse.adapters.resilience). The
# dependency label is one of catalog, object_store, job_store, trino.
BREAKER_STATE = Gauge(
    "lakehouse_dependency_breaker_state",
    "Circuit breaker of a backing service: 0 closed, 1 open (calls fail at once), "
    "2 half-open (one trial call is let through).",
    ("dependency",),
)
BREAKER_TRANSITIONS = Counter(
    "lakehouse_dependency_breaker_transitions_total",
    "Circuit breaker state changes of a backing service, by the state entered.",
    ("dependency", "state"),
)
DEPENDENCY_RETRIES = Counter(
    "lakehouse_dependency_retries_total",
    "Calls to a backing service attempted again after a transient failure.",
    ("dependency",),
)
DEPENDENCY_REJECTED_CALLS = Counter(
    "lakehouse_dependency_rejected_calls_total",
    "Calls failed at once with UNAVAILABLE because the backing service's breaker was open.",
    ("dependency",),
)

QUOTA_REFUSALS = Counter(
    "lakehouse_quota_refusals_total",
    "Calls refused with RESOURCE_EXHAUSTED by a quota: namespaces, tables (per namespace) or "
    "rate (the per-principal call rate).",
    ("quota",),
)


TABLE_WATCHERS = Gauge(
    "lakehouse_table_watchers",
    "WatchTable streams open now in this process (at most LAKEHOUSE_MAX_WATCHERS).",
)


# -- Per-table gauges --------------------------------------------------------------------------
# A label per table would grow without end on a catalog of thousands of tables, and every
# scrape would carry them all: the gauges hold only the tables a process touched most
# recently (a commit of this process, or a GetTableHealth), LAKEHOUSE_TABLE_METRICS_MAX_TABLES
# of them; touching one more removes the series of the least recent.

TABLE_DATA_FILES = Gauge(
    "lakehouse_table_data_files",
    "Data files of a table's current snapshot (tables touched recently; see "
    "LAKEHOUSE_TABLE_METRICS_MAX_TABLES).",
    ("namespace", "table"),
)
TABLE_SNAPSHOTS = Gauge(
    "lakehouse_table_snapshots",
    "Snapshots in a table's metadata (tables touched recently).",
    ("namespace", "table"),
)
TABLE_SMALL_FILES = Gauge(
    "lakehouse_table_small_data_files",
    "Small data files of a table's current snapshot, as of its last GetTableHealth.",
    ("namespace", "table"),
)
TABLE_VERDICT = Gauge(
    "lakehouse_table_health_verdict",
    "A table's health verdict as of its last GetTableHealth: 1 healthy, 2 needs maintenance, "
    "3 unhealthy.",
    ("namespace", "table"),
)
_GAUGES = (TABLE_DATA_FILES, TABLE_SNAPSHOTS, TABLE_SMALL_FILES, TABLE_VERDICT)


class TableGauges:
    """Sets the per-table gauges, keeping series for at most ``max_tables`` tables."""

    def __init__(self, max_tables: int) -> None:
        self._max_tables = max_tables
        self._tables: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def touched(
        self,
        table: tuple[str, str],
        *,
        data_files: int | None = None,
        snapshots: int | None = None,
        small_files: int | None = None,
        verdict: int | None = None,
    ) -> None:
        """Sets what is known of ``table`` now, making it the most recently touched."""
        if self._max_tables <= 0:
            return
        with self._lock:
            self._tables[table] = None
            self._tables.move_to_end(table)
            while len(self._tables) > self._max_tables:
                evicted, _ = self._tables.popitem(last=False)
                for gauge in _GAUGES:
                    with contextlib.suppress(KeyError):  # that gauge was never set for it
                        gauge.remove(*evicted)
            for gauge, value in (
                (TABLE_DATA_FILES, data_files),
                (TABLE_SNAPSHOTS, snapshots),
                (TABLE_SMALL_FILES, small_files),
                (TABLE_VERDICT, verdict),
            ):
                if value is not None:
                    gauge.labels(*table).set(value)

    def committed(self, table: tuple[str, str], committed: IcebergTable) -> None:
        """Sets the counts a commit's table tells at no cost (its summary, its snapshots)."""
        snapshot = committed.current_snapshot()
        summary = snapshot.summary if snapshot is not None else None
        files = summary.additional_properties.get("total-data-files") if summary else None
        self.touched(
            table,
            data_files=int(files) if files is not None else None,
            snapshots=len(committed.metadata.snapshots),
        )

    def tracked(self) -> list[tuple[str, str]]:
        """The tables with series now, least recently touched first."""
        with self._lock:
            return list(self._tables)
