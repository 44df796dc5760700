"""One committer per table across replicas: the commit lease and handed batches.

With a shared database, the commits of a table branch are made by one replica at a time, its
commit owner, holding a lease in that database (``IngestFleetPort``). Every replica still
plans and writes the Parquet files of the rows it receives (that work spreads over replicas);
a replica that is not the owner hands its files to the owner as a batch, and the owner commits
its own rows and every handed batch of the window in one snapshot, the design of the Iceberg
sink of Kafka Connect. Without it, N replicas writing one table each committed their own
rows, lost 40-54% of their commit attempts to each other and answered some writes ABORTED.

Exactly-once holds as in one process, because the owner commits a batch only if it still
continues the table's state exactly: each request id new, each writer's next offset where the
batch's replica planned it from. A batch that no longer fits is rejected, and its replica
plans again on the committed state (a resend then counts as already written, or an offset gap
as OUT_OF_RANGE, as in one process). The batch id goes in the summary of the snapshot that
commits it, so that an owner taking over after a crash (between the commit and its record in
the database) never commits it twice. A write is acknowledged only once its batch is resolved
as committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from lakehouse import metrics
from lakehouse.config import IngestSettings
from lakehouse.core.ports import IngestFleetPort
from lakehouse.domain.errors import Unavailable
from lakehouse.domain.ingest import (
    AppendPlan,
    BatchEntry,
    BatchResolution,
    BatchStatus,
    IngestState,
    PendingBatch,
)

log = logging.getLogger(__name__)


def replica_id() -> str:
    """An id of this process, unique across the fleet and its restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Signals:
    """Wake-ups from the shared database's notifications, when a listener delivers them.

    An owner waits for ``pending`` of its table branch (a batch was handed to it) and a
    submitter for ``watch`` of its batch (an owner resolved it), each with a timeout: the
    slow safety poll while ``listening``, the hand-off poll otherwise. Both are set when the
    listener goes up or down, as notifications may have been lost meanwhile. Used on the
    event loop only.
    """

    def __init__(self) -> None:
        self.listening = False
        self._pending: dict[tuple[tuple[str, str], str], asyncio.Event] = {}
        self._resolved: dict[str, asyncio.Event] = {}

    def pending(self, table: tuple[str, str], branch: str) -> asyncio.Event:
        """Set when a batch was handed to this table branch's owner (cleared by the owner)."""
        return self._pending.setdefault((table, branch), asyncio.Event())

    def watch(self, batch_id: str) -> asyncio.Event:
        """Set when ``batch_id`` is resolved; call before handing it, ``unwatch`` after."""
        return self._resolved.setdefault(batch_id, asyncio.Event())

    def unwatch(self, batch_id: str) -> None:
        """Forgets a batch whose resolution was read."""
        self._resolved.pop(batch_id, None)

    def batch_pending(self, table: tuple[str, str], branch: str) -> None:
        """The listener's callback for a handed batch."""
        self.pending(table, branch).set()

    def batch_resolved(self, batch_id: str) -> None:
        """The listener's callback for a resolved batch (of this replica or another)."""
        event = self._resolved.get(batch_id)
        if event is not None:
            event.set()

    def listener_state(self, up: bool) -> None:
        """The listener's callback when it connects or loses its connection."""
        self.listening = up
        for event in (*self._pending.values(), *self._resolved.values()):
            event.set()  # anything may have been missed: look once


#: Rows ``Pruner`` deletes at most per pass, of each kind (a short transaction).
PRUNE_LIMIT = 1000
#: The longest between two passes of ``Pruner`` in one process.
_PRUNE_EVERY_SECONDS = 60.0


class Pruner:
    """Deletes the fleet's rows nobody needs any more, from the owners' loops.

    At most one pass per process every minute (or every retention, if shorter), bounded per
    pass; any owner's window may run it, so rows of dropped or idle tables go too.
    """

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._running = False

    async def maybe(self, store: IngestFleetPort, retention_seconds: float) -> None:
        """Runs a pass if one is due (a failure waits for the next one)."""
        now = time.monotonic()
        if self._running or now - self._last < min(_PRUNE_EVERY_SECONDS, retention_seconds):
            return
        self._last, self._running = now, True
        try:
            deleted = await store.prune(retention_seconds, PRUNE_LIMIT)
        except Unavailable as exc:
            log.warning("cannot prune ingest hand-off rows", extra={"error": exc.message})
            return
        finally:
            self._running = False
        if deleted:
            log.info("pruned ingest hand-off rows", extra={"rows": deleted})


@dataclass(frozen=True)
class Fleet:
    """What a committer needs to share a table with other replicas."""

    store: IngestFleetPort
    owner: str
    """This replica's id in the leases."""
    signals: Signals = field(default_factory=Signals)
    """The notifications of handed and resolved batches (never listening: polls only)."""
    pruner: Pruner = field(default_factory=Pruner)
    """This process's deletion of old resolutions and leases."""


def add_batches(
    plan: AppendPlan, batches: Sequence[PendingBatch], state: IngestState, now_ms: int
) -> dict[str, BatchStatus]:
    """Adds to ``plan`` the handed batches that still continue the state exactly.

    ``plan`` already holds this replica's own rows (planned first). Returns each batch's
    fate: COMMITTED when it is in the plan or already in a committed snapshot, REJECTED when
    it must be planned again by its replica, FAILED when whether it was written cannot be
    told (the request-id store is unavailable).
    """
    fates: dict[str, BatchStatus] = {}
    seen = {**state.request_ids, **plan.request_ids}
    commit_writers = set(plan.commit_writers)
    for batch in batches:
        if batch.batch_id in state.batch_ids:
            fates[batch.batch_id] = BatchStatus.COMMITTED  # an owner died after committing it
            continue
        if any(e.request_id in state.unverified for e in batch.entries if e.request_id):
            # Not REJECTED: a rejected batch's files are deleted, and this doubt passes. An
            # owner that lost its lease while committing (a commit slower than the TTL) may
            # still commit the batch once the ids can be read, and would then commit deleted
            # files. FAILED keeps the files; the writes fail as on one replica (retryable).
            fates[batch.batch_id] = BatchStatus.FAILED
            continue
        writers: dict[str, tuple[int, int]] = {}
        requests: dict[str, int] = {}
        fits = True
        for entry in batch.entries:
            if entry.request_id and (entry.request_id in seen or entry.request_id in requests):
                fits = False
                break
            if entry.writer_id and entry.start is not None and entry.end is not None:
                committed = writers.get(entry.writer_id, plan.writers.get(entry.writer_id, (0, 0)))
                if committed[0] != entry.start:
                    fits = False
                    break
                writers[entry.writer_id] = (entry.end, now_ms)
            if entry.request_id:
                requests[entry.request_id] = entry.rows
        if not fits:
            fates[batch.batch_id] = BatchStatus.REJECTED
            continue
        fates[batch.batch_id] = BatchStatus.COMMITTED
        plan.writers.update(writers)
        commit_writers.update(writers)
        plan.request_ids.update(requests)
        seen.update(requests)
        plan.files.append(batch.files)
        plan.batch_ids.append(batch.batch_id)
    plan.commit_writers = sorted(commit_writers)
    return fates


def resolutions(fates: dict[str, BatchStatus], snapshot_id: int | None) -> list[BatchResolution]:
    """What to record for each batch after the owner's commit succeeded."""
    return [
        BatchResolution(
            batch_id,
            fate,
            snapshot_id if fate is BatchStatus.COMMITTED else None,
            _UNVERIFIED if fate is BatchStatus.FAILED else None,
        )
        for batch_id, fate in fates.items()
    ]


#: Why ``add_batches`` fails a batch.
_UNVERIFIED = Unavailable(
    "cannot tell whether the request ids were written already: the request-id store is "
    "unavailable; retry later",
    reason="REQUEST_ID_STORE_UNAVAILABLE",
)


def new_batch(entries: Sequence[BatchEntry], files: bytes, rows: int) -> PendingBatch:
    """A batch with a fresh id."""
    return PendingBatch(uuid.uuid4().hex, tuple(entries), files, rows)


class Lease:
    """This replica's view of its commit lease on one table branch."""

    def __init__(
        self, fleet: Fleet, key: tuple[str, str], branch: str, settings: IngestSettings
    ) -> None:
        self._fleet = fleet
        self._key = key
        self._branch = branch
        self._ttl = settings.commit_lease_seconds
        self.epoch: int | None = None
        self._renewed = 0.0
        self._asked = -self._ttl
        self._busy = time.monotonic()

    def _set(self, epoch: int | None) -> None:
        if (epoch is None) != (self.epoch is None):
            metrics.INGEST_OWNED_BRANCHES.inc(1 if epoch is not None else -1)
            log.info(
                "ingest commit lease %s",
                "taken" if epoch is not None else "lost",
                extra={"table": ".".join(self._key), "branch": self._branch, "epoch": epoch},
            )
        self.epoch = epoch

    async def hold(self) -> int | None:
        """Takes or renews the lease; its epoch, or None while another replica holds it.

        Renewed every third of the TTL; a replica that does not hold it asks at most every
        tenth.

        Raises:
            Unavailable: The database cannot be reached (the lease is then counted lost).
        """
        now = time.monotonic()
        if self.epoch is not None and now - self._renewed < self._ttl / 3:
            return self.epoch
        if self.epoch is None and now - self._asked < self._ttl / 10:
            return None  # another replica held it a moment ago; the next look is soon enough
        self._asked = now
        try:
            epoch = await self._fleet.store.acquire(
                self._key, self._branch, self._fleet.owner, self._ttl
            )
        except Unavailable:
            self._set(None)
            raise
        if epoch is not None:
            self._renewed = now
        self._set(epoch)
        return epoch

    def busy(self) -> None:
        """Notes that the owner had work (an idle owner gives its lease up)."""
        self._busy = time.monotonic()

    def idle(self) -> bool:
        """Whether the owner had no work for a whole TTL."""
        return time.monotonic() - self._busy > self._ttl

    async def release(self) -> None:
        """Gives the lease up (drain, or idle), so another replica takes it at once."""
        if self.epoch is None:
            return
        self._set(None)
        with contextlib.suppress(Unavailable):  # it expires by itself
            await self._fleet.store.release(self._key, self._branch, self._fleet.owner)
