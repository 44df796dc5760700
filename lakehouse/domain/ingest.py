"""Exactly-once ingest state: what a table says about writers and request ids, and plans."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
from pyiceberg.table import Table as IcebergTable

from lakehouse.domain.errors import Unavailable
from lakehouse.domain.row_changes import ChangeStats


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
