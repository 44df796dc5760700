"""Row changes planned on fresh metadata and committed exactly once: DeleteRows, write modes.

Both loops plan on the table as it is, commit on that exact state (pyiceberg's own retries
off), and plan again after a lost race, reusing the files already rewritten. A delete carries
the writers' offsets forward (as compaction does) and records its request id in the snapshot
summary and the request-id ledger, as ingest does, so a retried delete deletes once.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import BooleanExpression
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.refs import MAIN_BRANCH

from lakehouse.adapters.iceberg.ingest import (
    COMMIT_WRITERS_KEY,
    REQUEST_IDS_KEY,
    carried_writers,
    read_state,
    recall_request_ids,
    record_request_ids,
)
from lakehouse.adapters.iceberg.row_changes import (
    FileRewrite,
    RewriteCache,
    RowMatcher,
    change_stats,
    commit_change,
    pinned,
    rewrite_matching,
    write_rows,
)
from lakehouse.adapters.iceberg.row_matchers import filter_matcher, key_matcher, partition_matcher
from lakehouse.adapters.iceberg.snapshot_refs import write_head
from lakehouse.domain.errors import Conflict, FailedPrecondition, Unavailable
from lakehouse.domain.ingest import RequestIdLedger
from lakehouse.domain.row_changes import (
    CHANGE_COLUMNS,
    CHANGE_TYPE_COLUMN,
    DELETE,
    ChangeStats,
    DeleteOutcome,
    RowChange,
    WriteMode,
)

OPERATION_KEY = "lakehouse.operation"
#: Snapshot summary keys of what a planned change did (a retried SQL job reads them back).
ROWS_DELETED_KEY = "lakehouse.rows-deleted"
ROWS_UPDATED_KEY = "lakehouse.rows-updated"


def planned_delete(
    load: Callable[[], Table],
    row_filter: BooleanExpression,
    *,
    request_id: str,
    expected_etag: str,
    ledger: RequestIdLedger | None,
    request_id_window_ms: int,
    max_attempts: int,
    backoff_ms: tuple[int, int] = (20, 2000),
    branch: str = MAIN_BRANCH,
) -> DeleteOutcome:
    """Deletes the rows ``row_filter`` matches in one snapshot; see the module docstring.

    Raises:
        Conflict: A stale etag (ETAG_MISMATCH), or every attempt lost its race.
        Unavailable: The request-id ledger could not tell whether ``request_id`` was done.
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
    """
    return planned_change(
        load,
        lambda table: filter_matcher(table, row_filter),
        operation="delete",
        request_id=request_id,
        expected_etag=expected_etag,
        ledger=ledger,
        request_id_window_ms=request_id_window_ms,
        max_attempts=max_attempts,
        backoff_ms=backoff_ms,
        branch=branch,
    )


def planned_change(
    load: Callable[[], Table],
    matcher_for: Callable[[Table], RowMatcher],
    *,
    operation: str,
    max_attempts: int,
    properties: Mapping[str, str] | None = None,
    request_id: str = "",
    expected_etag: str = "",
    ledger: RequestIdLedger | None = None,
    request_id_window_ms: int = 0,
    backoff_ms: tuple[int, int] = (20, 2000),
    check: Callable[[], None] = lambda: None,
    branch: str = MAIN_BRANCH,
) -> DeleteOutcome:
    """Removes (and for an UPDATE replaces) the rows a matcher picks, in one snapshot.

    Each attempt plans on the table as it is: ``matcher_for`` builds the matcher for that
    state (a filter is bound to its schema), the files that hold matching rows are rewritten
    (reusing what earlier attempts did for files still live), and the commit is made on
    that exact state; a lost race plans again after a pause.

    Args:
        load: Loads the table as it is now (called again for each attempt).
        matcher_for: The rows removed, for the table as loaded.
        operation: What the snapshot summary records as ``lakehouse.operation``.
        max_attempts: Commit attempts before giving up (ABORTED, COMMIT_CONFLICT).
        properties: More snapshot summary properties (a SQL job's id).
        request_id: When set, a change already recorded under it is not done again.
        expected_etag: When set, the table must still be at this metadata location.
        ledger: Where request ids are also recorded (they outlive their snapshots there).
        request_id_window_ms: How long request ids are remembered.
        backoff_ms: The first and the longest pause between attempts.
        check: Called between files and right before the commit (a job's stop check).
        branch: The branch changed: planned on its head, committed to it (asserting that
            head), its lineage holding the request ids and the writers' offsets.

    Returns:
        What was done; ``snapshot_id`` None when nothing matched.

    Raises:
        Conflict: A stale etag (ETAG_MISMATCH), or every attempt lost its race.
        Unavailable: The request-id ledger could not tell whether ``request_id`` was done.
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
    """
    cache = RewriteCache()
    committed: list[DataFile] = []
    # Set while a commit is in flight: an error other than a refused commit leaves its
    # outcome unknown (a catalog that committed, then failed to answer), so the files it
    # names may be live and must stay (orphan removal takes them if they are not).
    in_flight = False
    table = pinned(load())
    try:
        for attempt in range(1, max_attempts + 1):
            if attempt > 1:
                table = pinned(load())
            write_head(table, branch)  # it may have been deleted since the last attempt
            if request_id:
                # Before the etag: a retry of a conditional delete that was applied finds the
                # table changed by itself, and is answered as applied.
                done = _recorded(table, request_id, ledger, request_id_window_ms, branch)
                if done is not None:
                    return DeleteOutcome(
                        ChangeStats(rows_deleted=done), None, True, table.metadata_location
                    )
            check_etag(table, expected_etag)
            rewrites = rewrite_matching(table, matcher_for(table), cache, check, branch=branch)
            if not rewrites:
                return DeleteOutcome(ChangeStats(), None, False, table.metadata_location)
            stats = change_stats(rewrites, [])
            summary = {
                OPERATION_KEY: operation,
                ROWS_DELETED_KEY: str(stats.rows_deleted),
                ROWS_UPDATED_KEY: str(stats.rows_updated),
                **(properties or {}),
                **carried_writers(table, branch),
            }
            if request_id:
                summary[REQUEST_IDS_KEY] = json.dumps({request_id: stats.rows_deleted})
            check()
            try:
                in_flight = True
                after, snapshot_id = commit_change(table, rewrites, [], summary, branch)
                in_flight = False
            except CommitFailedException:
                in_flight = False  # refused: nothing of it is live
                if expected_etag:
                    raise _etag_mismatch(table) from None
                _pause(attempt, backoff_ms)
                continue
            committed = [f for r in rewrites for f in r.written]
            if request_id and ledger is not None:
                record_request_ids(ledger, after, {request_id: stats.rows_deleted}, branch)
            return DeleteOutcome(stats, snapshot_id, False, after.metadata_location or "")
        raise Conflict(
            f"the {operation} on {'.'.join(table.name())} lost {max_attempts} commit races to "
            "concurrent commits; retry",
            reason="COMMIT_CONFLICT",
        )
    finally:
        if not in_flight:
            cache.discard_uncommitted(table, committed)


def _recorded(
    table: Table, request_id: str, ledger: RequestIdLedger | None, window_ms: int, branch: str
) -> int | None:
    state = read_state(table, request_id_window_ms=window_ms, branch=branch)
    if ledger is not None:
        state = recall_request_ids(
            table, state, [request_id], ledger, request_id_window_ms=window_ms, branch=branch
        )
    if request_id in state.unverified:
        raise Unavailable(
            f"cannot tell whether request {request_id} was applied already: the request-id "
            "store is unavailable; retry later",
            reason="REQUEST_ID_STORE_UNAVAILABLE",
            metadata={"request_id": request_id},
        )
    return state.request_ids.get(request_id)


class ChangeCommitter:
    """Commits the rows an ingest plan decided in a mode other than APPEND.

    Kept across the commit attempts of one group: the new rows' files and the rewrites of
    files still live are reused while the plan's rows stay the same. The change is planned on
    ``branch``'s head and committed to that branch.
    """

    def __init__(self, change: RowChange, branch: str = MAIN_BRANCH) -> None:
        self.change = change
        self.branch = branch
        self.cache = RewriteCache()
        self._data: pa.Table | None = None
        self._added: list[DataFile] = []
        self.committed: list[DataFile] = []
        #: A commit is in flight: an error other than a refused commit leaves its outcome
        #: unknown, so ``discard`` leaves the files (orphan removal takes them if not live).
        self.in_flight = False
        self._table: Table | None = None  # the last table planned on: its FileIO deletes

    def commit(
        self, table: Table, data: pa.Table, properties: dict[str, str]
    ) -> tuple[Table, int | None, ChangeStats]:
        """Removes what the change removes, adds ``data``'s rows, in one snapshot.

        Returns:
            The table as committed (``table`` when nothing changed), the snapshot id, what
            it did.

        Raises:
            CommitFailedException: ``table`` is no longer current; plan again.
            FailedPrecondition: The mode does not fit the table.
        """
        table = pinned(table)
        self._table = table
        if not self.cache.fit(table):
            self._added = []  # written with another spec or schema: write them again
        if self._data is None or not self._data.equals(data):
            # Other rows than the last attempt's: another matcher, nothing to reuse.
            self.cache.files.clear()
            self._data = data
            self._added = []
        rows = data.drop_columns([c for c in CHANGE_COLUMNS if c in data.column_names])
        if rows.num_rows == 0 and self.change.mode is not WriteMode.OVERWRITE:
            return table, None, ChangeStats()  # no key, no partition: nothing to replace
        inserted = rows
        if self.change.mode is WriteMode.UPSERT and CHANGE_TYPE_COLUMN in data.column_names:
            upserts = pc.fill_null(pc.not_equal(data[CHANGE_TYPE_COLUMN], DELETE), True)
            # Decoded with the key's columns alone required (a DELETE carries only those);
            # the rows written carry every required column (checked), typed as the table's.
            inserted = rows.filter(upserts).cast(_nullability_of(table, rows.schema))
        if not self._added:
            self._added = write_rows(table, inserted, self.cache)
        rewrites = self._rewrites(table, data, rows)
        stats = replace(change_stats(rewrites, self._added), rows_added=inserted.num_rows)
        if not rewrites and not self._added and not _records_progress(properties):
            return table, None, stats
        # Even a change that removes and adds nothing commits when it moves a writer's offset
        # or records a request id (a change stream's DELETE of a key that is not there): the
        # next request of the stream starts after it.
        properties = {OPERATION_KEY: self.change.mode.name.lower(), **properties}
        self.in_flight = True
        try:
            after, snapshot_id = commit_change(
                table, rewrites, self._added, properties, self.branch
            )
        except CommitFailedException:
            self.in_flight = False  # refused: nothing of it is live
            raise
        self.in_flight = False
        self.committed = [f for r in rewrites for f in r.written] + self._added
        return after, snapshot_id, stats

    def _rewrites(self, table: Table, data: pa.Table, rows: pa.Table) -> list[FileRewrite]:
        mode = self.change.mode
        if mode is WriteMode.OVERWRITE:
            assert self.change.overwrite_filter is not None
            matcher = filter_matcher(table, self.change.overwrite_filter)
        elif mode is WriteMode.OVERWRITE_PARTITIONS:
            if rows.num_rows == 0:
                return []
            matcher = partition_matcher(table, rows, self._added)
        elif mode is WriteMode.UPSERT:
            keys = identifier_columns(table)
            if CHANGE_TYPE_COLUMN in data.column_names:
                replacing = pc.fill_null(pc.not_equal(data[CHANGE_TYPE_COLUMN], DELETE), True)
            else:
                replacing = pa.array([True] * data.num_rows)
            matcher = key_matcher(table, keys, rows, replacing)
        else:  # pragma: no cover - APPEND never comes here
            raise AssertionError(mode)
        return rewrite_matching(table, matcher, self.cache, branch=self.branch)

    def discard(self) -> None:
        """Deletes the files written that the commit did not take (none while in doubt)."""
        if not self.in_flight and self._table is not None:
            self.cache.discard_uncommitted(self._table, self.committed)


def _nullability_of(table: Table, schema: pa.Schema) -> pa.Schema:
    """``schema`` with each top-level field as nullable as the table's column of that name."""
    required = {f.name for f in table.schema().fields if f.required}
    return pa.schema(
        [f.with_nullable(f.name not in required) for f in schema], metadata=schema.metadata
    )


def _records_progress(properties: dict[str, str]) -> bool:
    """Whether a commit's summary moves a writer's offset or records a request id."""
    return json.loads(properties.get(COMMIT_WRITERS_KEY, "[]")) != [] or (
        REQUEST_IDS_KEY in properties
    )


def identifier_columns(table: Table) -> tuple[str, ...]:
    """The table's identifier columns (full names), in field-id order.

    Raises:
        FailedPrecondition: It has none (NO_IDENTIFIER_FIELDS).
    """
    schema = table.schema()
    names = tuple(schema.find_column_name(i) or "" for i in sorted(schema.identifier_field_ids))
    if not names:
        raise FailedPrecondition(
            f"table {'.'.join(table.name())} has no identifier fields: UPSERT matches rows "
            "by them; set them with UpdateTable",
            reason="NO_IDENTIFIER_FIELDS",
        )
    return names


def check_etag(table: Table, expected_etag: str) -> None:
    """Raises ``Conflict`` (ETAG_MISMATCH) when ``expected_etag`` is set and stale."""
    if expected_etag and table.metadata_location != expected_etag:
        raise _etag_mismatch(table)


def _etag_mismatch(table: Table) -> Conflict:
    return Conflict(
        f"table {'.'.join(table.name())} changed since the etag sent; get it again",
        reason="ETAG_MISMATCH",
        metadata={"current_etag": table.metadata_location or ""},
    )


def _pause(attempt: int, backoff_ms: tuple[int, int]) -> None:
    low, high = backoff_ms
    wait = min(high, low * 2 ** (attempt - 1))
    time.sleep(random.uniform(wait / 2, wait) / 1000)
