"""Exactly-once ingest state: what a table says about writers and request ids, and plans."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, Protocol

import pyarrow as pa
from pyiceberg.table import Table as IcebergTable

from lakehouse.domain.errors import LakehouseError, Unavailable
from lakehouse.domain.row_changes import ChangeStats

#: The snapshot summary key every ingest commit writes (the writers' offsets): a snapshot
#: that has it was committed by the ingest path.
WRITERS_SUMMARY_KEY = "lakehouse.writers"


#: The reason of the failure a handed batch resolves to once its row is gone (taken back, or
#: its answer pruned before its replica read it).
LOST_BATCH_REASON: Final = "INGEST_BATCH_LOST"


@dataclass(frozen=True)
class RecordedRequest:
    """One committed WriteRows request id.

    Attributes:
        request_id: The client's request id.
        rows: Rows the request wrote (what a resend is answered).
        snapshot_id: The snapshot that committed it.
        committed_ms: That snapshot's timestamp, epoch milliseconds.
    """

    request_id: str
    rows: int
    snapshot_id: int
    committed_ms: int


@dataclass(frozen=True)
class IngestState:
    """What the table says about writers and recent requests, at one snapshot."""

    snapshot_id: int | None
    writers: dict[str, tuple[int, int]]
    """writer_id -> (next_offset, last commit epoch ms)."""
    request_ids: dict[str, int]
    """request_id -> rows, for requests committed within the retention window."""
    window_covered: bool = True
    """Whether the retained snapshots reach back over the whole window (else expiry removed
    some inside it, and ``request_ids`` may miss ids only the ledger still knows)."""
    unverified: frozenset[str] = frozenset()
    """Ids neither found nor ruled out: the ledger was needed and could not be read."""
    batch_ids: frozenset[str] = frozenset()
    """Handed-off batches (``PendingBatch``) committed within the retention window."""


class RequestIdLedger(Protocol):
    """Where request ids outlive their snapshots (``request_id_store.RequestIdStore``)."""

    def record(self, table_uuid: str, requests: Sequence[RecordedRequest]) -> None:
        """Upserts committed request ids; raises ``Unavailable`` when it cannot."""

    def find(
        self, table_uuid: str, request_ids: Collection[str], *, since_ms: int
    ) -> dict[str, RecordedRequest]:
        """The given ids committed since ``since_ms``; raises ``Unavailable`` when it cannot."""

    def forget_snapshots(self, table_uuid: str, snapshot_ids: Collection[int]) -> None:
        """Deletes the ids these snapshots committed; raises ``Unavailable`` when it cannot."""

    def prune(self, *, before_ms: int, limit: int = 5000) -> int:
        """Deletes up to ``limit`` ids committed before ``before_ms``; returns how many."""


@dataclass
class AppendPlan:
    """What to append, decided on one state: the rows and the state to record with them."""

    data: pa.Table | None
    writers: dict[str, tuple[int, int]] = field(default_factory=dict)
    commit_writers: list[str] = field(default_factory=list)
    request_ids: dict[str, int] = field(default_factory=dict)
    files: list[bytes] = field(default_factory=list)
    """Data files written by other replicas (serialized by the catalog adapter), committed
    in the same snapshot as ``data``."""
    batch_ids: list[str] = field(default_factory=list)
    """The handed-off batches whose ``files`` this plan commits (recorded in the summary)."""


#: The reason of the commit error that refuses handed files which no longer fit the table
#: (its partition spec changed since they were written, or they cannot be read): the commit
#: owner then rejects the batches, and their replicas stage them again.
HANDED_FILES_REFUSED = "HANDED_FILES_REFUSED"


@dataclass(frozen=True)
class BatchEntry:
    """One request of a handed-off batch, as its replica planned it on committed state.

    The owner commits the batch only if every entry still continues the state exactly: the
    request id is new and the writer's next offset is still ``start``.
    """

    request_id: str
    rows: int
    writer_id: str
    start: int | None
    end: int | None


@dataclass(frozen=True)
class PendingBatch:
    """Data files a replica wrote and handed to the table's commit owner.

    Attributes:
        batch_id: Unique; recorded in the summary of the snapshot that commits it.
        entries: The requests it holds, in order.
        files: Serialized data files (opaque to the core).
        rows: Rows in ``files``.
    """

    batch_id: str
    entries: tuple[BatchEntry, ...]
    files: bytes
    rows: int


class BatchStatus(IntEnum):
    """Where a handed batch is (stored as its int value)."""

    PENDING = 0
    CLAIMED = 1
    COMMITTED = 2
    REJECTED = 3
    FAILED = 4


@dataclass(frozen=True)
class BatchResolution:
    """What the commit owner did with a handed batch.

    Attributes:
        batch_id: The batch.
        status: COMMITTED, REJECTED (no longer fits the table: re-plan and hand again) or
            FAILED.
        snapshot_id: The snapshot holding it (COMMITTED).
        error: Why it failed (FAILED).
    """

    batch_id: str
    status: BatchStatus
    snapshot_id: int | None = None
    error: LakehouseError | None = None


@dataclass(frozen=True)
class StagedAppend:
    """Rows planned on committed state and written to data files, not committed yet."""

    plan: AppendPlan
    snapshot_id: int | None
    files: bytes
    """The written data files, serialized; empty when the plan had no rows."""
    paths: tuple[str, ...]


@dataclass(frozen=True)
class AppendOutcome:
    """The result of a planned append: the plan that was committed, and its snapshot."""

    plan: AppendPlan
    snapshot_id: int | None
    attempts: int
    conflicts: int
    table: IcebergTable | None = None
    """The table as committed (None when nothing was appended)."""
    unrecorded: Unavailable | None = None
    """Why the committed request ids could not be put in the ledger (None: they were, or
    there were none). The commit stands: its summary holds them."""
    stats: ChangeStats | None = None
    """What a write in a mode other than APPEND did to the rows already in the table."""
