"""Exactly-once appends to Iceberg: writer offsets and request ids live in snapshot summaries.

Every commit made by the ingest path carries, in its snapshot summary:

- ``lakehouse.writers``: JSON ``{writer_id: [next_offset, commit_ms]}`` for every writer known
  to the table (carried forward from the previous state, so reading it is one lookup on the
  newest snapshot that has it);
- ``lakehouse.commit-writers``: JSON list of the writers with rows in this commit;
- ``lakehouse.request-ids``: JSON ``{request_id: rows}`` of the WriteRows requests in it.

A compaction's snapshot carries ``lakehouse.carried-writers``, a copy of the offsets, so that
expiring the ingest snapshots behind it loses none. Request ids are not carried: one is
remembered while the snapshot that committed it is kept, for at most the request-id window.

State therefore lives in the table itself: it survives restarts, every replica sees the same,
and a rollback rolls it back with the rows. pyiceberg's own commit retry is switched off for
these commits, because it would re-apply the append on fresh metadata blind to offsets
another replica may have committed meanwhile; the caller re-plans on fresh metadata instead.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table as IcebergTable
from pyiceberg.table import TableProperties
from pyiceberg.table.snapshots import Snapshot

WRITERS_KEY = "lakehouse.writers"
COMMIT_WRITERS_KEY = "lakehouse.commit-writers"
REQUEST_IDS_KEY = "lakehouse.request-ids"
#: The writers' offsets as a maintenance snapshot (compaction) carries them forward.
CARRIED_WRITERS_KEY = "lakehouse.carried-writers"


@dataclass(frozen=True)
class IngestState:
    """What the table says about writers and recent requests, at one snapshot."""

    snapshot_id: int | None
    writers: dict[str, tuple[int, int]]
    """writer_id -> (next_offset, last commit epoch ms)."""
    request_ids: dict[str, int]
    """request_id -> rows, for requests committed within the retention window."""


@dataclass
class AppendPlan:
    """What to append, decided on one state: the rows and the state to record with them."""

    data: pa.Table | None
    writers: dict[str, tuple[int, int]] = field(default_factory=dict)
    commit_writers: list[str] = field(default_factory=list)
    request_ids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AppendOutcome:
    """The result of a planned append: the plan that was committed, and its snapshot."""

    plan: AppendPlan
    snapshot_id: int | None
    attempts: int
    conflicts: int
    table: IcebergTable | None = None
    """The table as committed (None when nothing was appended)."""


def _summary(snapshot: Snapshot) -> Mapping[str, str]:
    return snapshot.summary.additional_properties if snapshot.summary is not None else {}


def _ancestors(table: IcebergTable) -> list[Snapshot]:
    chain = []
    snapshot = table.current_snapshot()
    while snapshot is not None:
        chain.append(snapshot)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return chain


def read_state(table: IcebergTable, *, request_id_window_ms: int) -> IngestState:
    """The writers and recent request ids recorded in the table's current lineage."""
    chain = _ancestors(table)
    writers: dict[str, tuple[int, int]] = {}
    for snapshot in chain:
        summary = _summary(snapshot)
        carried = summary.get(CARRIED_WRITERS_KEY)
        if carried is not None:
            # A maintenance snapshot's copy: maybe older than an ingest commit below it (a
            # commit retried on top of it), so look on to that commit and keep the higher.
            _merge_writers(writers, carried)
            continue
        raw = summary.get(WRITERS_KEY)
        if raw is not None:
            _merge_writers(writers, raw)
            break
    request_ids: dict[str, int] = {}
    horizon = int(time.time() * 1000) - request_id_window_ms
    for snapshot in chain:
        if snapshot.timestamp_ms < horizon:
            break
        raw = _summary(snapshot).get(REQUEST_IDS_KEY)
        if raw is not None:
            for rid, rows in json.loads(raw).items():
                request_ids.setdefault(rid, int(rows))
    current = table.current_snapshot()
    return IngestState(current.snapshot_id if current else None, writers, request_ids)


def _merge_writers(writers: dict[str, tuple[int, int]], raw: str) -> None:
    for writer, (offset, commit_ms) in json.loads(raw).items():
        known = writers.get(writer)
        if known is None or int(offset) > known[0]:
            writers[writer] = (int(offset), int(commit_ms))


def carried_writers(table: IcebergTable) -> dict[str, str]:
    """Summary entries that keep the writers' offsets in a snapshot made by maintenance.

    A compaction's snapshot carries no offsets of its own; once expiry removes the ingest
    snapshots behind a few compactions in a row, the offsets would be gone and a writer's
    resend written twice. Its snapshot therefore carries a copy, which ``read_state`` reads
    as a lower bound.
    """
    for snapshot in _ancestors(table):
        summary = _summary(snapshot)
        raw = summary.get(WRITERS_KEY) or summary.get(CARRIED_WRITERS_KEY)
        if raw is not None:
            return {CARRIED_WRITERS_KEY: raw}
    return {}


def writer_last_commit(table: IcebergTable, writer_id: str) -> Snapshot | None:
    """The newest snapshot in the current lineage that committed rows of ``writer_id``."""
    for snapshot in _ancestors(table):
        raw = _summary(snapshot).get(COMMIT_WRITERS_KEY)
        if raw is not None and writer_id in json.loads(raw):
            return snapshot
    return None


def _without_commit_retries(table: IcebergTable) -> IcebergTable:
    """The same table whose transactions do not retry conflicts by themselves.

    pyiceberg reads the retry count from the table properties of the object the transaction
    was opened on; this in-memory copy changes only that, nothing is written to the table.
    """
    metadata = table.metadata
    properties = {**metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    return IcebergTable(
        table.name(),
        metadata=metadata.model_copy(update={"properties": properties}),
        metadata_location=table.metadata_location,
        io=table.io,
        catalog=table.catalog,
    )


def planned_append(
    load: Callable[[], IcebergTable],
    plan: Callable[[IngestState], AppendPlan],
    *,
    request_id_window_ms: int,
    max_attempts: int,
    backoff_ms: tuple[int, int] = (20, 2000),
) -> AppendOutcome:
    """Plans on the freshest state and appends, re-planning after every conflict.

    Raises:
        CommitFailedException: Still conflicting after ``max_attempts``.
    """
    conflicts = 0
    for attempt in range(1, max_attempts + 1):
        table = load()
        state = read_state(table, request_id_window_ms=request_id_window_ms)
        decided = plan(state)
        if decided.data is None or decided.data.num_rows == 0:
            return AppendOutcome(decided, state.snapshot_id, attempt, conflicts)
        properties = {
            WRITERS_KEY: json.dumps(decided.writers, separators=(",", ":"), sort_keys=True),
            COMMIT_WRITERS_KEY: json.dumps(sorted(decided.commit_writers)),
        }
        if decided.request_ids:
            properties[REQUEST_IDS_KEY] = json.dumps(decided.request_ids, separators=(",", ":"))
        transaction = _without_commit_retries(table).transaction()
        transaction.append(decided.data, snapshot_properties=properties)
        try:
            committed = transaction.commit_transaction()
        except CommitFailedException:
            conflicts += 1
            if attempt == max_attempts:
                raise
            low, high = backoff_ms
            wait = min(high, low * 2 ** (attempt - 1))
            time.sleep(random.uniform(wait / 2, wait) / 1000)
            continue
        snapshot = committed.current_snapshot()
        return AppendOutcome(
            decided, snapshot.snapshot_id if snapshot else None, attempt, conflicts, committed
        )
    raise AssertionError("unreachable")  # pragma: no cover
