"""Exactly-once appends to Iceberg: writer offsets and request ids live in snapshot summaries.

Every commit made by the ingest path carries, in its snapshot summary:

- ``lakehouse.writers``: JSON ``{writer_id: [next_offset, commit_ms]}`` for every writer known
  to the table (carried forward from the previous state, so reading it is one lookup on the
  newest snapshot that has it);
- ``lakehouse.commit-writers``: JSON list of the writers with rows in this commit;
- ``lakehouse.request-ids``: JSON ``{request_id: rows}`` of the WriteRows requests in it;
- ``lakehouse.ingest-batches``: JSON list of the batches other replicas handed to this table's
  commit owner that the commit holds (``lakehouse.core.ingest_fleet``), so that an owner
  taking over never commits one twice.

A compaction's snapshot carries ``lakehouse.carried-writers``, a copy of the offsets, so that
expiring the ingest snapshots behind it loses none. Request ids are not carried forward (that
would grow every summary with the traffic of a whole window); instead they are also kept in
the request-id ledger (``lakehouse.adapters.request_id_store``): recorded after each commit
holding some, copied again by expiry from the snapshots it removes (which covers a crash
between a commit and its record), and read only when the retained snapshots of the current
lineage no longer reach back over the whole window. The summaries stay the atomic record;
the ledger only stretches how long they are remembered.

State therefore lives in the table itself: it survives restarts, every replica sees the same,
and a rollback rolls it back with the rows. A write to a branch reads and commits the state of
that branch's lineage: a branch created from main starts with main's offsets at the fork, and
later commits on either move only their own. pyiceberg's own commit retry is switched off for
these commits, because it would re-apply the append on fresh metadata blind to offsets
another replica may have committed meanwhile; the caller re-plans on fresh metadata instead.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table as IcebergTable
from pyiceberg.table import TableProperties
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import MAIN_BRANCH, SnapshotRefType
from pyiceberg.table.snapshots import Snapshot

from lakehouse.adapters.iceberg.ingest_files import dump_data_files, load_data_files
from lakehouse.adapters.iceberg.locations import canonical_location, within_location
from lakehouse.adapters.iceberg.references import delete_all
from lakehouse.adapters.iceberg.row_changes import without_commit_retries
from lakehouse.adapters.iceberg.snapshot_refs import commit_to_branch, write_head
from lakehouse.adapters.pyiceberg_private.commits import transaction as memoized_transaction
from lakehouse.adapters.pyiceberg_private.writes import (
    check_arrow_schema_fits,
    paged_by_bytes,
    writable_table,
    write_data_files,
)
from lakehouse.domain.errors import FailedPrecondition, Unavailable
from lakehouse.domain.ingest import (
    HANDED_FILES_REFUSED,
    WRITERS_SUMMARY_KEY,
    AppendOutcome,
    AppendPlan,
    IngestState,
    RecordedRequest,
    RequestIdLedger,
    StagedAppend,
)
from lakehouse.domain.row_changes import ChangeStats

WRITERS_KEY = WRITERS_SUMMARY_KEY
COMMIT_WRITERS_KEY = "lakehouse.commit-writers"
REQUEST_IDS_KEY = "lakehouse.request-ids"
BATCHES_KEY = "lakehouse.ingest-batches"
#: The writers' offsets as a maintenance snapshot (compaction) carries them forward.
CARRIED_WRITERS_KEY = "lakehouse.carried-writers"


def _summary(snapshot: Snapshot) -> Mapping[str, str]:
    return snapshot.summary.additional_properties if snapshot.summary is not None else {}


def _ancestors(table: IcebergTable, branch: str = MAIN_BRANCH) -> list[Snapshot]:
    chain = []
    snapshot = table.snapshot_by_name(branch)
    while snapshot is not None:
        chain.append(snapshot)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return chain


def read_state(
    table: IcebergTable, *, request_id_window_ms: int, branch: str = MAIN_BRANCH
) -> IngestState:
    """The writers and recent request ids recorded in the lineage of ``branch``'s head."""
    chain = _ancestors(table, branch)
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
    batch_ids: set[str] = set()
    horizon = int(time.time() * 1000) - request_id_window_ms
    covered = True
    for snapshot in chain:
        if snapshot.timestamp_ms < horizon:
            break
        summary = _summary(snapshot)
        raw = summary.get(REQUEST_IDS_KEY)
        if raw is not None:
            for rid, rows in json.loads(raw).items():
                request_ids.setdefault(rid, int(rows))
        raw_batches = summary.get(BATCHES_KEY)
        if raw_batches is not None:
            batch_ids.update(json.loads(raw_batches))
    else:
        # Every retained ancestor is inside the window: complete only if the oldest is the
        # table's first snapshot. pyiceberg clears the parent id of a snapshot whose parent
        # it expires, so only the sequence number (1 for the first commit of a format-2
        # table) tells the two apart; a format-1 table's cannot, and counts as cut.
        oldest = chain[-1] if chain else None
        covered = oldest is None or (
            oldest.parent_snapshot_id is None and oldest.sequence_number == 1
        )
    head = chain[0] if chain else None
    return IngestState(
        head.snapshot_id if head else None,
        writers,
        request_ids,
        window_covered=covered,
        batch_ids=frozenset(batch_ids),
    )


def recall_request_ids(
    table: IcebergTable,
    state: IngestState,
    wanted: Collection[str],
    ledger: RequestIdLedger,
    *,
    request_id_window_ms: int,
    branch: str = MAIN_BRANCH,
) -> IngestState:
    """``state`` with those of ``wanted`` that only the ledger still remembers.

    The ledger is asked only when expiry cut the lineage inside the window and some wanted
    id is not in the retained summaries. An id whose snapshot is still in the metadata but
    off the current lineage was rolled back with its rows, and stays unwritten. When the
    ledger cannot be read, the missing ids come back in ``unverified``.
    """
    missing = [rid for rid in wanted if rid not in state.request_ids]
    if state.window_covered or not missing:
        return state
    since_ms = int(time.time() * 1000) - request_id_window_ms
    try:
        found = ledger.find(str(table.metadata.table_uuid), missing, since_ms=since_ms)
    except Unavailable:
        return replace(state, unverified=frozenset(missing))
    lineage = {s.snapshot_id for s in _ancestors(table, branch)}
    known = {s.snapshot_id for s in table.metadata.snapshots}
    recalled = {
        rid: r.rows
        for rid, r in found.items()
        if r.snapshot_id in lineage or r.snapshot_id not in known
    }
    return replace(state, request_ids={**state.request_ids, **recalled})


def keep_expiring_request_ids(
    metadata: TableMetadata,
    expiring: Collection[int],
    ledger: RequestIdLedger,
    *,
    request_id_window_ms: int,
) -> None:
    """Before expiry: copies the ids of expiring snapshots still inside the window.

    Ids of expiring snapshots off every branch's lineage (rolled back) are deleted from the
    ledger instead, so that they stay unwritten once their snapshot is gone.

    Raises:
        Unavailable: The ledger cannot be written; do not expire.
    """
    horizon = int(time.time() * 1000) - request_id_window_ms
    lineage: set[int] = set()
    for ref in metadata.refs.values():
        if ref.snapshot_ref_type != SnapshotRefType.BRANCH:
            continue
        snapshot = metadata.snapshot_by_id(ref.snapshot_id)
        while snapshot is not None and snapshot.snapshot_id not in lineage:
            lineage.add(snapshot.snapshot_id)
            parent = snapshot.parent_snapshot_id
            snapshot = metadata.snapshot_by_id(parent) if parent is not None else None
    records: list[RecordedRequest] = []
    rolled_back: list[int] = []
    for snapshot_id in expiring:
        found = metadata.snapshot_by_id(snapshot_id)
        if found is None:
            continue
        if snapshot_id not in lineage:
            rolled_back.append(snapshot_id)
            continue
        raw = _summary(found).get(REQUEST_IDS_KEY)
        if raw is None or found.timestamp_ms < horizon:
            continue
        records.extend(
            RecordedRequest(rid, int(rows), snapshot_id, found.timestamp_ms)
            for rid, rows in json.loads(raw).items()
        )
    table_uuid = str(metadata.table_uuid)
    ledger.record(table_uuid, records)
    ledger.forget_snapshots(table_uuid, rolled_back)


def _merge_writers(writers: dict[str, tuple[int, int]], raw: str) -> None:
    for writer, (offset, commit_ms) in json.loads(raw).items():
        known = writers.get(writer)
        if known is None or int(offset) > known[0]:
            writers[writer] = (int(offset), int(commit_ms))


def carried_writers(table: IcebergTable, branch: str = MAIN_BRANCH) -> dict[str, str]:
    """Summary entries that keep the writers' offsets in a snapshot made by maintenance.

    A compaction's snapshot carries no offsets of its own; once expiry removes the ingest
    snapshots behind a few compactions in a row, the offsets would be gone and a writer's
    resend written twice. Its snapshot therefore carries a copy, which ``read_state`` reads
    as a lower bound. ``branch`` is the branch the snapshot is committed to.
    """
    for snapshot in _ancestors(table, branch):
        summary = _summary(snapshot)
        raw = summary.get(WRITERS_KEY) or summary.get(CARRIED_WRITERS_KEY)
        if raw is not None:
            return {CARRIED_WRITERS_KEY: raw}
    return {}


def committed_offsets(snapshot: Snapshot) -> dict[str, int]:
    """The exactly-once writers whose rows ``snapshot`` committed, and their next offsets."""
    summary = _summary(snapshot)
    raw_writers, raw_committed = summary.get(WRITERS_KEY), summary.get(COMMIT_WRITERS_KEY)
    if raw_writers is None or raw_committed is None:
        return {}
    writers = json.loads(raw_writers)
    return {w: int(writers[w][0]) for w in json.loads(raw_committed) if w in writers}


def writer_last_commit(
    table: IcebergTable, writer_id: str, branch: str = MAIN_BRANCH
) -> Snapshot | None:
    """The newest snapshot in ``branch``'s lineage that committed rows of ``writer_id``."""
    for snapshot in _ancestors(table, branch):
        raw = _summary(snapshot).get(COMMIT_WRITERS_KEY)
        if raw is not None and writer_id in json.loads(raw):
            return snapshot
    return None


def _without_commit_retries(table: IcebergTable, data: pa.Table) -> IcebergTable:
    """The same table whose transactions do not retry conflicts by themselves.

    pyiceberg reads the retry count from the table properties of the object the transaction
    was opened on; this in-memory copy changes only that, nothing is written to the table.
    """
    # Writes also only with writer values pyiceberg can use (see writable_table), in pages
    # sized by bytes for ``data`` (see paged_by_bytes).
    paged = writable_table(table)
    metadata = paged_by_bytes(paged.metadata, data)
    if TableProperties.MANIFEST_MERGE_ENABLED not in metadata.properties:
        # Ingest commits merge manifests (see _append_or_discard) unless the table says not to.
        merging = {**metadata.properties, TableProperties.MANIFEST_MERGE_ENABLED: "true"}
        metadata = metadata.model_copy(update={"properties": merging})
    return without_commit_retries(
        IcebergTable(
            table.name(),
            metadata=metadata,
            metadata_location=table.metadata_location,
            io=table.io,
            catalog=table.catalog,
        )
    )


def _append_or_discard(
    table: IcebergTable,
    data: pa.Table,
    properties: dict[str, str],
    branch: str = MAIN_BRANCH,
    handed: Sequence[DataFile] = (),
) -> IcebergTable:
    """Appends ``data`` in one snapshot on exactly ``table``; a refused commit leaves no file.

    The snapshot's parent is ``branch``'s head, and the commit asserts that head (pyiceberg's
    ``branch=``): a commit on another branch meanwhile does not refuse it.

    pyiceberg's ``Transaction.append`` deletes its manifests when the catalog refuses the
    commit, but not the data files it wrote. Appends lose such races to row changes
    (DeleteRows, overwrites) and compactions, and each would leave an unreferenced data file
    on storage until orphan removal; so the files are written here, as that append writes
    them, and deleted when the commit is refused (the next attempt writes its own).
    ``handed`` are files other replicas wrote (``stage_append``), appended as they are and
    never deleted here: the next attempt commits them again.

    Raises:
        CommitFailedException: ``table`` is no longer current.
        ValueError: ``data`` does not fit the table's schema.
    """
    writable = _without_commit_retries(table, data)
    metadata = writable.metadata
    check_arrow_schema_fits(metadata.schema(), data.schema, format_version=metadata.format_version)
    transaction = memoized_transaction(writable)
    written: list[DataFile] = []
    update = transaction.update_snapshot(snapshot_properties=properties, branch=branch)
    # A merge append: each commit adds a manifest, and expiry removes none, so the manifest
    # list every commit reads and rewrites would grow with the commits since the last
    # compaction (1,000 manifests: ~half of a group commit's CPU). Once a table has
    # ``commit.manifest.min-count-to-merge`` (100) of them, pyiceberg merges them into one,
    # as Iceberg's Java appends do; ``commit.manifest-merge.enabled=false`` on a table keeps
    # pyiceberg's fast append.
    with update.merge_append() as append:
        if data.num_rows:
            for data_file in write_data_files(
                metadata, data, table.io, append.commit_uuid, itertools.count(0)
            ):
                written.append(data_file)
                append.append_data_file(data_file)
        for data_file in handed:
            append.append_data_file(data_file)
    try:
        return commit_to_branch(transaction)
    except CommitFailedException:
        delete_all(table.io, (f.file_path for f in written))
        raise


#: Commits an ingest plan's rows in a write mode other than APPEND on exactly the table given
#: (on the branch the plan is for): (table, rows, snapshot summary properties) -> (table as
#: committed, snapshot id or None when nothing changed, what it did). Raises
#: ``CommitFailedException`` when the branch moved on.
ChangeCommit = Callable[
    [IcebergTable, pa.Table, dict[str, str]], tuple[IcebergTable, int | None, ChangeStats]
]


def _loaded_state(
    load: Callable[[], IcebergTable],
    request_id_window_ms: int,
    ledger: RequestIdLedger | None,
    request_ids: Collection[str],
    branch: str,
) -> tuple[IcebergTable, IngestState]:
    """The table and the exactly-once state of ``branch`` (ids only the ledger knows too).

    Raises:
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
    """
    table = load()
    write_head(table, branch)
    state = read_state(table, request_id_window_ms=request_id_window_ms, branch=branch)
    if ledger is not None and request_ids:
        state = recall_request_ids(
            table,
            state,
            request_ids,
            ledger,
            request_id_window_ms=request_id_window_ms,
            branch=branch,
        )
    return table, state


def planned_append(
    load: Callable[[], IcebergTable],
    plan: Callable[[IngestState], AppendPlan],
    *,
    request_id_window_ms: int,
    max_attempts: int,
    backoff_ms: tuple[int, int] = (20, 2000),
    ledger: RequestIdLedger | None = None,
    request_ids: Collection[str] = (),
    change: ChangeCommit | None = None,
    branch: str = MAIN_BRANCH,
) -> AppendOutcome:
    """Plans on the freshest state and appends, re-planning after every conflict.

    Args:
        load: Loads the table, fresh.
        plan: Decides what to append on one state.
        request_id_window_ms: How long request ids are remembered.
        max_attempts: Commit attempts before giving up on conflicts.
        backoff_ms: The first and the longest wait between attempts.
        ledger: The request-id ledger; None remembers ids only in snapshot summaries.
        request_ids: The ids of the requests being planned (looked up in the ledger).
        change: Commits the plan's rows in a write mode other than APPEND (removing rows
            too), on exactly the table given; None appends them.
        branch: The branch committed to; its lineage holds the exactly-once state.

    Raises:
        CommitFailedException: Still conflicting after ``max_attempts``.
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
    """
    conflicts = 0
    for attempt in range(1, max_attempts + 1):
        # Again on every attempt: the branch may have been deleted, and expiry may have cut
        # the lineage since the last one.
        table, state = _loaded_state(load, request_id_window_ms, ledger, request_ids, branch)
        decided = plan(state)
        handed = _handed_files(table, decided.files)
        nothing = not handed and (
            decided.data is None or (decided.data.num_rows == 0 and change is None)
        )
        if nothing:
            return AppendOutcome(decided, state.snapshot_id, attempt, conflicts)
        data = decided.data if decided.data is not None else _no_rows(table)
        properties = {
            WRITERS_KEY: json.dumps(decided.writers, separators=(",", ":"), sort_keys=True),
            COMMIT_WRITERS_KEY: json.dumps(sorted(decided.commit_writers)),
        }
        if decided.request_ids:
            properties[REQUEST_IDS_KEY] = json.dumps(decided.request_ids, separators=(",", ":"))
        if decided.batch_ids:
            properties[BATCHES_KEY] = json.dumps(decided.batch_ids, separators=(",", ":"))
        stats = None
        try:
            if change is not None:
                committed, changed_id, stats = change(table, data, properties)
                if changed_id is None:  # nothing matched and no row to add
                    return AppendOutcome(
                        decided, state.snapshot_id, attempt, conflicts, stats=stats
                    )
            else:
                committed = _append_or_discard(table, data, properties, branch, handed)
        except CommitFailedException:
            conflicts += 1
            if attempt == max_attempts:
                raise
            low, high = backoff_ms
            wait = min(high, low * 2 ** (attempt - 1))
            time.sleep(random.uniform(wait / 2, wait) / 1000)
            continue
        snapshot = committed.snapshot_by_name(branch)
        unrecorded = None
        if ledger is not None and decided.request_ids and snapshot is not None:
            unrecorded = record_request_ids(ledger, committed, decided.request_ids, branch)
        return AppendOutcome(
            decided,
            snapshot.snapshot_id if snapshot else None,
            attempt,
            conflicts,
            committed,
            unrecorded,
            stats,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def record_request_ids(
    ledger: RequestIdLedger,
    table: IcebergTable,
    request_ids: dict[str, int],
    branch: str = MAIN_BRANCH,
) -> Unavailable | None:
    """Puts the request ids of the head snapshot of ``table``'s ``branch`` in the ledger.

    Returns:
        The failure, if any, for the caller to log (the ids are in the commit's summary).
    """
    snapshot = table.snapshot_by_name(branch)
    if snapshot is None:
        return None
    records = [
        RecordedRequest(rid, rows, snapshot.snapshot_id, snapshot.timestamp_ms)
        for rid, rows in request_ids.items()
    ]
    try:
        ledger.record(str(table.metadata.table_uuid), records)
    except Unavailable as exc:
        return exc
    return None


def _handed_files(table: IcebergTable, files: Sequence[bytes]) -> list[DataFile]:
    """The data files other replicas handed over, if ``table`` can take them as they are.

    pyiceberg lists every added file under the table's current partition spec: a file staged
    before the spec changed would be listed under the wrong one (the commit failed with an
    IndexError, or the partition tuple is misread). And a file path is taken from a database
    row: one outside the table's locations would put another table's data (or anything the
    service can read) in this one.

    Raises:
        FailedPrecondition: HANDED_FILES_REFUSED; the batches are to be staged again.
    """
    try:
        handed = [f for raw in files for f in load_data_files(raw)]
    except Exception as exc:  # written by another pyiceberg version, or not by a replica
        raise FailedPrecondition(
            f"handed data files cannot be read: {type(exc).__name__}",
            reason=HANDED_FILES_REFUSED,
        ) from exc
    roots = [table.location()] + [
        path
        for key in ("write.data.path", "write.object-storage.path")
        if (path := table.properties.get(key))
    ]
    checked = canonical_location(roots[0]) is not None
    spec_id = table.metadata.default_spec_id
    for data_file in handed:
        if data_file.spec_id != spec_id:
            raise FailedPrecondition(
                "the table's partition spec changed since handed files were written",
                reason=HANDED_FILES_REFUSED,
            )
        if checked and not any(within_location(data_file.file_path, r) for r in roots):
            raise FailedPrecondition(
                "a handed data file lies outside the table's locations",
                reason=HANDED_FILES_REFUSED,
            )
    return handed


def _no_rows(table: IcebergTable) -> pa.Table:
    """An empty Arrow table of ``table``'s schema (a commit of handed files only)."""
    return table.schema().as_arrow().empty_table()


def stage_append(
    load: Callable[[], IcebergTable],
    plan: Callable[[IngestState], AppendPlan],
    *,
    request_id_window_ms: int,
    ledger: RequestIdLedger | None = None,
    request_ids: Collection[str] = (),
    branch: str = MAIN_BRANCH,
) -> StagedAppend:
    """Plans on the freshest committed state and writes the rows' data files, uncommitted.

    What a replica that does not own the table's commits does with its writes: the owner
    commits the files (``planned_append`` with ``AppendPlan.files``) if the plan still holds
    on the state it commits on.

    Raises:
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
        ValueError: The rows do not fit the table's schema.
    """
    table, state = _loaded_state(load, request_id_window_ms, ledger, request_ids, branch)
    decided = plan(state)
    if decided.data is None or decided.data.num_rows == 0:
        return StagedAppend(decided, state.snapshot_id, b"", ())
    metadata = _without_commit_retries(table, decided.data).metadata
    check_arrow_schema_fits(
        metadata.schema(), decided.data.schema, format_version=metadata.format_version
    )
    written = list(
        write_data_files(metadata, decided.data, table.io, uuid.uuid4(), itertools.count(0))
    )
    return StagedAppend(
        decided,
        state.snapshot_id,
        dump_data_files(written, metadata.default_spec_id),
        tuple(f.file_path for f in written),
    )
