"""Ingest: group commit per table, exactly-once offsets, idempotent request ids.

Writes to one branch of a table (main unless a request names another) from every stream and
every WriteRows call go to that branch's single committer, which gathers them for up to
``commit_delay_ms`` (or until a row or byte threshold) and commits them as one Parquet append
and one Iceberg snapshot. A write is
answered only after the commit that holds it succeeded. Buffers are capped per table and per
process: a writer that outruns the committer waits for room, then gets RESOURCE_EXHAUSTED.

Request ids are remembered for the whole window: in the summaries of the retained snapshots,
and in the request-id ledger for those that expiry removed (see
``lakehouse.adapters.iceberg.ingest``). When the ledger is needed and cannot be read, the
requests it would have decided fail UNAVAILABLE (retryable) rather than risk a double write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse import metrics
from lakehouse.config import IngestSettings
from lakehouse.core.change_metrics import count_change
from lakehouse.core.commit_conflicts import ConflictLog
from lakehouse.core.commit_notifier import CommitNotifier
from lakehouse.core.ingest_fleet import Fleet, Lease, add_batches, new_batch, resolutions
from lakehouse.core.ports import CatalogPort, IngestFleetPort
from lakehouse.core.survival import EscapedError, own_cancellation
from lakehouse.deadlines import without_deadline
from lakehouse.domain.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LakehouseError,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from lakehouse.domain.ingest import (
    HANDED_FILES_REFUSED,
    LOST_BATCH_REASON,
    AppendPlan,
    BatchEntry,
    BatchResolution,
    BatchStatus,
    IngestState,
    PendingBatch,
    RequestIdLedger,
    StagedAppend,
)
from lakehouse.domain.names import check_identifier, check_writer_id
from lakehouse.domain.refs import MAIN, RefKind, check_branch
from lakehouse.domain.row_changes import ChangeStats, RowChange
from lakehouse.metrics import TableGauges

log = logging.getLogger(__name__)


def check_request_id(field: str, request_id: str) -> str:
    """Checks a request id: 1 to 128 printable ASCII characters.

    Raises:
        InvalidArgument: Otherwise.
    """
    if not 1 <= len(request_id) <= 128 or not all(33 <= ord(c) < 127 for c in request_id):
        raise InvalidArgument.field(
            field, "must be 1 to 128 printable ASCII characters", reason="INVALID_REQUEST_ID"
        )
    return request_id


@dataclass(frozen=True)
class WriteResult:
    """The outcome of one write.

    ``stats`` is what a write in a mode other than APPEND did to the rows already in the
    table (all zero for an append).
    """

    rows_written: int
    snapshot_id: int | None
    already_written: bool
    offset: int | None
    stats: ChangeStats = field(default_factory=ChangeStats)


@dataclass(frozen=True)
class WriterInfo:
    """A writer's committed position on a table."""

    next_offset: int
    last_snapshot_id: int | None
    last_commit_ms: int


@dataclass
class _Unit:
    data: pa.Table
    span: int
    """Rows the request counts in the writer's sequence (valid and dead-lettered)."""
    indices: pa.Array | None
    """Position in the request of each row of ``data``; None when all rows are there."""
    writer_id: str
    offset: int | None
    request_id: str
    nbytes: int
    future: asyncio.Future[WriteResult]
    change: RowChange | None = None
    """A write mode other than APPEND: the unit is committed alone."""
    enqueued: float = field(default_factory=time.monotonic)

    def rows_from(self, skip: int) -> pa.Table:
        """The rows at request positions ``skip`` and after."""
        if self.indices is None:
            return self.data.slice(skip)
        return self.data.filter(pc.greater_equal(self.indices, skip))


@dataclass
class _Decision:
    """What the plan does with one unit (recomputed on every commit attempt)."""

    rows: int = 0
    offset: int | None = None
    already: bool = False
    error: LakehouseError | None = None
    base: int | None = None
    """The writer's committed offset the unit's rows continue (None: no writer, no rows)."""
    end: int | None = None
    """The writer's next offset once the unit's rows are committed."""


def plan_group(
    units: list[_Unit], state: IngestState, now_ms: int
) -> tuple[AppendPlan, list[_Decision]]:
    """Decides, on one table state, which rows of which units to append.

    Exactly-once per writer: rows below the writer's committed offset are skipped (a unit
    entirely below it is already written), a unit starting beyond it is an offset gap. A
    request id already recorded within the window is already written; one the state could not
    verify (the ledger was down) fails retryably and writes nothing.
    """
    writers = dict(state.writers)
    seen_requests = dict(state.request_ids)
    new_requests: dict[str, int] = {}
    commit_writers: set[str] = set()
    pieces: list[pa.Table] = []
    decisions: list[_Decision] = []
    empty: pa.Table | None = None  # a unit to write that has no rows (an overwrite's)
    for unit in units:
        decision = _Decision()
        decisions.append(decision)
        rows = unit.span
        if unit.request_id and unit.request_id in seen_requests:
            decision.already = True
            decision.rows = seen_requests[unit.request_id]
            continue
        if unit.request_id and unit.request_id in state.unverified:
            decision.error = Unavailable(
                f"cannot tell whether request {unit.request_id} was written already: the "
                "request-id store is unavailable; retry later",
                reason="REQUEST_ID_STORE_UNAVAILABLE",
                metadata={"request_id": unit.request_id},
            )
            continue
        data = unit.data
        if unit.writer_id:
            committed = writers.get(unit.writer_id, (0, 0))[0]
            start = committed if unit.offset is None else unit.offset
            decision.offset = start
            if unit.offset is not None and start > committed:
                decision.error = OutOfRange(
                    f"offset {start} of writer {unit.writer_id} is beyond its next offset "
                    f"{committed}: resend from {committed}",
                    reason="OFFSET_GAP",
                    metadata={"next_offset": str(committed), "writer_id": unit.writer_id},
                )
                continue
            end = start + rows
            if rows == 0:
                continue
            if end <= committed:
                decision.already = True
                decision.rows = rows
                continue
            data = unit.rows_from(committed - start)
            decision.base, decision.end = committed, end
            writers[unit.writer_id] = (end, now_ms)
            commit_writers.add(unit.writer_id)
        decision.rows = data.num_rows
        if data.num_rows:
            pieces.append(data)
        else:
            empty = data
        if unit.request_id:
            seen_requests[unit.request_id] = decision.rows
            new_requests[unit.request_id] = decision.rows
    # A unit with no rows still counts in a write mode that removes rows: an overwrite with
    # no rows deletes what its filter matches.
    combined = pa.concat_tables(pieces) if pieces else empty
    plan = AppendPlan(
        data=combined,
        writers=writers,
        commit_writers=sorted(commit_writers),
        request_ids=new_requests,
    )
    return plan, decisions


class _BufferBudget:
    """Bytes being decoded or waiting to be committed, capped per table and for the process.

    A request is charged before it is decoded (what its Arrow headers say decoding may take),
    its charge becomes the size of its conformed rows once they are queued, and it is
    released when they are committed: concurrent requests share one hard bound.
    """

    def __init__(self, total: int, per_table: int) -> None:
        self._total_cap = total
        self._table_cap = per_table
        metrics.INGEST_BUFFER_LIMIT_BYTES.set(total)
        self._total = 0
        self._tables: dict[tuple[str, str], int] = {}
        self._changed = asyncio.Event()

    def _fits(self, key: tuple[str, str], nbytes: int, held: int) -> bool:
        table = self._tables.get(key, 0)
        if table == held and self._total == held:
            return True  # a single oversized write still goes through, alone
        return table + nbytes <= self._table_cap and self._total + nbytes <= self._total_cap

    async def reserve(
        self, key: tuple[str, str], nbytes: int, timeout: float, *, held: int = 0
    ) -> None:
        """Waits (at most ``timeout`` seconds) for room for ``nbytes`` more, and takes it.

        ``held`` is what the caller already holds of ``key``'s bytes: a request that holds
        everything there is counts as alone, and grows past the caps rather than waiting for
        itself.

        Raises:
            ResourceExhausted: No room in time (reason WRITE_BUFFER_FULL, with RetryInfo).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.try_take(key, nbytes, held=held):
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise ResourceExhausted(
                    f"the write buffer of {key[0]}.{key[1]} is full; retry later",
                    reason="WRITE_BUFFER_FULL",
                    retry_after_seconds=1.0,
                ) from None

    def try_take(self, key: tuple[str, str], nbytes: int, *, held: int = 0) -> bool:
        """Takes room for ``nbytes`` more if there is some now; returns whether it did."""
        if not self._fits(key, nbytes, held):
            return False
        self._total += nbytes
        self._tables[key] = self._tables.get(key, 0) + nbytes
        metrics.INGEST_BUFFERED_BYTES.set(self._total)
        return True

    def release(self, key: tuple[str, str], nbytes: int) -> None:
        """Gives ``nbytes`` back and wakes the waiters (synchronous: safe in any ``finally``)."""
        if nbytes <= 0:
            return
        self._total -= nbytes
        self._tables[key] = self._tables.get(key, 0) - nbytes
        if self._tables[key] <= 0:
            del self._tables[key]
        metrics.INGEST_BUFFERED_BYTES.set(self._total)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Reservation:
    """Write-buffer bytes held for one request while it is decoded (see ``Ingest.reserve``).

    Queuing the request's rows takes the reservation over (resized to the rows' size);
    :meth:`release` gives back whatever was not taken over, and is safe to call twice.
    """

    def __init__(self, budget: _BufferBudget, key: tuple[str, str], nbytes: int) -> None:
        self._budget = budget
        self.key = key
        self.nbytes = nbytes

    async def grow(self, nbytes: int, timeout: float) -> None:
        """Reserves ``nbytes`` more, waiting for room as :meth:`Ingest.reserve` does.

        Raises:
            ResourceExhausted: No room within ``timeout`` (reason WRITE_BUFFER_FULL, with
                RetryInfo); what was reserved before is still held.
        """
        if nbytes <= 0:
            return
        await self._budget.reserve(self.key, nbytes, timeout, held=self.nbytes)
        self.nbytes += nbytes

    def release(self) -> None:
        """Gives the reserved bytes back (nothing if they were taken over or released)."""
        nbytes, self.nbytes = self.nbytes, 0
        self._budget.release(self.key, nbytes)


#: Seconds a non-owner plans on the table as it last saw it (see ``_TableCommitter._stage``).
_STAGE_MAX_AGE = 5.0
#: Handed batches one owner's commit takes at most (the rest wait for the next window).
_MAX_BATCHES = 256


class _TableCommitter:
    """The one committer of one branch of one table in this process.

    Branches commit independently (each asserts only its own head), so each has its own
    queue; the write buffers are still charged per table (``key``).
    """

    def __init__(
        self,
        key: tuple[str, str],
        branch: str,
        catalog: CatalogPort,
        settings: IngestSettings,
        budget: _BufferBudget,
        ledger: RequestIdLedger | None,
        conflicts: ConflictLog | None = None,
        gauges: TableGauges | None = None,
        notifier: CommitNotifier | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self._notifier = notifier
        self._fleet = fleet
        self._lease = Lease(fleet, key, branch, settings) if fleet is not None else None
        # Writers' next offsets once this replica's handed batches committed (see _stage).
        self._known_writers: dict[str, int] = {}
        # When and under which epoch this owner last claimed handed batches (see _claim).
        self._claimed_at = 0.0
        self._claimed_epoch: int | None = None
        # Claims that failed in a row, and when the next may be tried (see _claim).
        self._claim_failures = 0
        self._claim_retry_at = 0.0
        self._key = key
        self._branch = branch
        self._conflicts = conflicts
        self._gauges = gauges
        self._catalog = catalog
        self._settings = settings
        self._budget = budget
        self._ledger = ledger
        self._queue: asyncio.Queue[_Unit] = asyncio.Queue()
        # A unit taken off the queue that could not join the group gathered (a row change
        # after appends, or an append after a row change): first in the next group.
        self._held: _Unit | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # Made while handling the table's first write, but it outlives that call: its commits
        # must not be cut at that call's deadline.
        self._task = asyncio.create_task(
            self._run(),
            name=f"committer-{key[0]}.{key[1]}@{branch}",
            context=without_deadline(),
        )

    async def enqueue(
        self, unit: _Unit, reservation: Reservation | None = None
    ) -> asyncio.Future[WriteResult]:
        """Waits for buffer room, queues the unit, and returns the future of its commit.

        With a ``reservation`` (made while the request was decoded), the unit takes it over:
        only bytes beyond it are waited for, and bytes it reserved in excess are given back.
        """
        held = 0
        if reservation is not None and reservation.key == self._key:
            held, reservation.nbytes = reservation.nbytes, 0
        try:
            if unit.nbytes > held:
                await self._budget.reserve(
                    self._key, unit.nbytes - held, self._settings.buffer_wait_seconds, held=held
                )
        except BaseException:
            self._budget.release(self._key, held)
            raise
        self._budget.release(self._key, held - unit.nbytes)
        self._queue.put_nowait(unit)
        return unit.future

    async def _gather(self) -> list[_Unit]:
        if self._held is not None:
            first, self._held = self._held, None
        elif self._lease is not None and self._lease.epoch is not None:
            # An owner wakes up for the batches other replicas hand it, with or without
            # writes of its own: when notified, or at the latest after a poll interval.
            got = await self._next_or_pending()
            if got is None:
                got = await self._after_notification()
            if got is None:
                return []
            first = got
        else:
            first = await self._queue.get()
        group = [first]
        if first.change is not None:
            return group  # a row change is committed alone
        rows, nbytes = first.data.num_rows, first.nbytes
        deadline = first.enqueued + self._settings.commit_delay_ms / 1000
        if self._lease is not None and self._lease.epoch is None:
            # A replica that hands its files over takes what is queued: the owner's window
            # groups the batches, and the next group forms while this one waits for it.
            deadline = 0.0
        while rows < self._settings.commit_rows and nbytes < self._settings.commit_bytes:
            try:
                unit = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    unit = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if unit.change is not None:
                self._held = unit  # after this group, in queue order
                break
            group.append(unit)
            rows += unit.data.num_rows
            nbytes += unit.nbytes
        return group

    def _poll_seconds(self) -> float:
        """How long to wait for a notification before looking in the database anyway."""
        assert self._fleet is not None
        if self._fleet.signals.listening:
            return self._settings.handoff_safety_poll_ms / 1000
        return self._settings.handoff_poll_ms / 1000

    async def _next_or_pending(self) -> _Unit | None:
        """The next queued unit, or None once batches are pending or the poll is due."""
        assert self._fleet is not None
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()
        pending = self._fleet.signals.pending(self._key, self._branch)
        if pending.is_set():
            return None
        getting = asyncio.ensure_future(self._queue.get())
        notified = asyncio.ensure_future(pending.wait())
        try:
            await asyncio.wait(
                (getting, notified),
                timeout=self._poll_seconds(),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            notified.cancel()
            if not getting.done():
                getting.cancel()
        if getting.done() and not getting.cancelled():
            return getting.result()
        return None

    async def _after_notification(self) -> _Unit | None:
        """Once notified of a handed batch, a short wait (the hand-off poll) for more.

        Batches handed at nearly the same time (replicas answering the same burst of
        clients), and the owner's own writes, then share one commit: claiming at the first
        notification committed one batch at a time, and the rest waited a whole commit.
        """
        assert self._fleet is not None
        if not self._fleet.signals.pending(self._key, self._branch).is_set():
            return None  # the safety poll is due, nothing notified
        try:
            return await asyncio.wait_for(self._queue.get(), self._settings.handoff_poll_ms / 1000)
        except TimeoutError:
            return None

    async def _run(self) -> None:
        while True:
            group = await self._gather()
            self._idle.clear()
            try:
                if self._lease is None or (group and group[0].change is not None):
                    await self._commit(group)  # a row change commits where it is received
                else:
                    await self._commit_in_fleet(group)
            except Exception as exc:
                # Only the fleet path can get here (``_commit`` hands its failures to the
                # futures): the committer must outlive it, its writers get the error.
                log.exception("ingest hand-off failed", extra={"table": ".".join(self._key)})
                _fail(group, exc)
            except asyncio.CancelledError as exc:
                if own_cancellation(exc):
                    raise
                # A cancelled future inside a library (as ``_commit`` handles it): it would
                # end the committer, and every later write to the table would wait forever.
                log.exception("ingest hand-off failed", extra={"table": ".".join(self._key)})
                _fail(group, Unavailable("the hand-off to the commit owner was interrupted"))
            finally:
                for unit in group:
                    self._budget.release(self._key, unit.nbytes)
                if self._queue.empty() and self._held is None:
                    self._idle.set()

    async def _commit_in_fleet(self, group: list[_Unit]) -> None:
        """Commits as the table's owner, or hands the group's files to the owner."""
        assert self._lease is not None and self._fleet is not None
        try:
            epoch = await self._lease.hold()
        except Unavailable as exc:
            # Without the shared database, commit here: a race with another committer costs
            # a conflict and a re-plan, never a double write.
            log.warning(
                "ingest commit lease unavailable; committing locally",
                extra={"table": ".".join(self._key), "error": exc.message},
            )
            if group:
                await self._commit(group)
            return
        if epoch is not None:
            await self._commit_as_owner(group, epoch)
        elif group:
            await self._hand_off(group)

    async def _commit_as_owner(self, group: list[_Unit], epoch: int) -> None:
        assert self._lease is not None and self._fleet is not None
        store = self._fleet.store
        batches = await self._claim(epoch)
        if not group and not batches:
            if self._lease.idle():
                await self._lease.release()
            return
        self._lease.busy()
        recorded = False
        done: list[BatchResolution] = []
        try:
            done = await self._commit_batches(group, batches)
            for r in done:
                metrics.INGEST_HANDED_BATCHES.labels(r.status.name.lower()).inc()
            try:
                await store.resolve(epoch, done)
                recorded = True
            except Unavailable as exc:
                # The batches stay claimed: the next owner (or this one) finds the committed
                # ones in the snapshot summaries.
                log.warning(
                    "cannot record handed ingest batches",
                    extra={"table": ".".join(self._key), "error": exc.message},
                )
        finally:
            unresolved = {b.batch_id for b in batches} - (
                {r.batch_id for r in done} if recorded else set()
            )
            if unresolved:
                # Still claimed, and nothing will notify them: the next window claims them
                # again, not the safety poll.
                self._fleet.signals.pending(self._key, self._branch).set()
        await self._fleet.pruner.maybe(store, self._settings.handoff_retention_seconds)

    async def _commit_batches(
        self, group: list[_Unit], batches: list[PendingBatch]
    ) -> list[BatchResolution]:
        """Commits the owner's group with the handed batches; what to record of each batch."""
        fates: dict[str, BatchStatus] = {}
        included: list[str] = []
        result = await self._commit(group, batches, fates, included)
        if _refused(result):
            # Files staged on a table that changed since (or unreadable): their replicas
            # stage them again, and the owner's own writes are committed without them. Only
            # the batches whose files were refused go back: one already committed (by an
            # owner that died before recording it) must not, its replica would delete its
            # files. Those, and the rest, stay claimed and are decided in the next window.
            fates = dict.fromkeys(included, BatchStatus.REJECTED)
            done = resolutions(fates, None)
            if group:
                await self._commit(group)
        elif isinstance(result, LakehouseError):
            done = [BatchResolution(b.batch_id, BatchStatus.FAILED, error=result) for b in batches]
        else:
            done = resolutions(fates, result)
        return done

    async def _claim(self, epoch: int) -> list[PendingBatch]:
        """The batches handed to this owner, when some may be pending.

        The claim is skipped while the listener is up and nothing was notified since the
        last one, unless the safety poll is due (a lost notification) or the lease is new
        (batches left by the previous owner): a busy owner of a table nobody hands files to
        costs no query per window.
        """
        assert self._fleet is not None
        signals = self._fleet.signals
        pending = signals.pending(self._key, self._branch)
        now = time.monotonic()
        if now < self._claim_retry_at:
            return []  # the database failed the last claim: backing off
        due = (
            not signals.listening
            or pending.is_set()
            or epoch != self._claimed_epoch
            or now - self._claimed_at >= self._settings.handoff_safety_poll_ms / 1000
        )
        if not due:
            return []
        pending.clear()  # before the query: a batch handed during it sets it again
        self._claimed_at, self._claimed_epoch = now, epoch
        try:
            batches = await self._fleet.store.claim(self._key, self._branch, epoch, _MAX_BATCHES)
        except Unavailable as exc:
            # Still pending: claimed again once the backoff ends. The backoff doubles from
            # the hand-off poll up to the safety poll, so an outage of the database costs a
            # few queries and one warning, not one of each per window (every 20 ms).
            self._claim_failures += 1
            poll = self._settings.handoff_poll_ms / 1000
            backoff = min(
                poll * 2 ** (self._claim_failures - 1),
                self._settings.handoff_safety_poll_ms / 1000,
            )
            self._claim_retry_at = now + backoff
            pending.set()
            log.log(
                logging.WARNING if self._claim_failures == 1 else logging.DEBUG,
                "cannot claim handed ingest batches",
                extra={
                    "table": ".".join(self._key),
                    "error": exc.message,
                    "failures": self._claim_failures,
                    "retry_seconds": round(backoff, 3),
                },
            )
            return []
        if self._claim_failures:
            log.info(
                "handed ingest batches claimed again",
                extra={"table": ".".join(self._key), "failures": self._claim_failures},
            )
            self._claim_failures = 0
        if len(batches) == _MAX_BATCHES:
            pending.set()  # more may wait
        return batches

    async def _hand_off(self, group: list[_Unit]) -> None:
        """Writes the group's files here, hands them to the owner, answers once committed."""
        assert self._fleet is not None
        pending = group
        rejected = False
        for _ in range(self._settings.commit_attempts):
            # After a rejection the table moved on: plan on it as it is, not as cached.
            staged, waiting = await self._stage(pending, fresh=rejected)
            if staged is None or not waiting:
                return
            entries = [
                BatchEntry(
                    unit.request_id if unit.request_id in staged.plan.request_ids else "",
                    decision.rows,
                    unit.writer_id,
                    decision.base,
                    decision.end,
                )
                for unit, decision in waiting
            ]
            rows = staged.plan.data.num_rows if staged.plan.data is not None else 0
            batch = new_batch(entries, staged.files, rows)
            # Watched before it is handed: the owner may resolve it before submit returns.
            resolved = self._fleet.signals.watch(batch.batch_id)
            try:
                resolution = await self._submit_and_wait(batch, staged.paths, resolved)
            finally:
                self._fleet.signals.unwatch(batch.batch_id)
            if resolution.status is BatchStatus.COMMITTED:
                metrics.INGEST_ROWS.inc(rows)  # counted where they were received
                for unit, decision in waiting:
                    _answer(unit, decision, resolution.snapshot_id)
                    if unit.writer_id and decision.end is not None:
                        self._known_writers[unit.writer_id] = decision.end
                return
            self._known_writers.clear()  # the table moved on otherwise: plan afresh
            if resolution.status is BatchStatus.REJECTED:
                await self._discard(staged.paths)
                pending = [unit for unit, _ in waiting]
                rejected = True
                continue
            # Failed: whether the owner's commit took the files is not known (a commit state
            # unknown); orphan removal takes them if it did not.
            _fail(pending, resolution.error or Unavailable("the handed batch failed"))
            return
        _fail(
            pending,
            Conflict(
                f"the writes to {'.'.join(self._key)} kept conflicting with others",
                reason="COMMIT_CONFLICT",
            ),
        )

    async def _stage(
        self, group: list[_Unit], *, fresh: bool = False
    ) -> tuple[StagedAppend | None, list[tuple[_Unit, _Decision]]]:
        """Plans ``group`` on committed state and writes its files; answers what it can.

        Units already written, or in error, are answered here; the others come back. The
        plan is made on the table as this replica last saw it (up to ``_STAGE_MAX_AGE``
        seconds old; the table changes with every commit of the owner, and loading it afresh
        for each group cost more than writing the group's file), with the offsets of its own
        committed batches on top: the owner takes the batch only if it continues the state
        exactly, and rejects it otherwise. What that plan decides against a unit (already
        written, an offset gap) is decided again on fresh metadata before it is answered.
        """
        decisions: list[_Decision] = []
        negative = False

        def plan(state: IngestState) -> AppendPlan:
            nonlocal decisions, negative
            if not fresh:
                state = self._with_known_writers(state)
            decided, decisions = plan_group(group, state, int(time.time() * 1000))
            negative = not fresh and any(d.error is not None or d.already for d in decisions)
            return AppendPlan(None) if negative else decided  # nothing written on a doubt

        try:
            staged = await self._catalog.stage_append(
                *self._key,
                plan,
                request_id_window_ms=int(self._settings.request_id_window_seconds * 1000),
                ledger=self._ledger,
                request_ids=[unit.request_id for unit in group if unit.request_id],
                branch=self._branch,
                max_age=0.0 if fresh else _STAGE_MAX_AGE,
            )
        except LakehouseError as exc:
            if not fresh:  # a branch or a schema the cached table does not know yet?
                return await self._stage(group, fresh=True)
            _fail(group, exc)
            return None, []
        if negative:
            return await self._stage(group, fresh=True)
        waiting = []
        for unit, decision in zip(group, decisions, strict=True):
            if decision.error is not None:
                # Not set_exception: a caller that went away cancelled its future, and the
                # InvalidStateError would fail every other write of the group.
                _fail([unit], decision.error)
            elif decision.already or not staged.files:
                _answer(unit, decision, staged.snapshot_id)
            else:
                waiting.append((unit, decision))
        return staged, waiting

    async def _commit_here(self, batch: PendingBatch) -> BatchResolution:
        """Commits a batch of this replica's files as its owner would (its id checked)."""
        fates: dict[str, BatchStatus] = {}
        result = await self._commit([], [batch], fates)
        if _refused(result):
            return BatchResolution(batch.batch_id, BatchStatus.REJECTED)
        if isinstance(result, LakehouseError):
            return BatchResolution(batch.batch_id, BatchStatus.FAILED, error=result)
        return BatchResolution(
            batch.batch_id, fates.get(batch.batch_id, BatchStatus.FAILED), result
        )

    def _with_known_writers(self, state: IngestState) -> IngestState:
        """``state`` with the offsets this replica's committed batches moved writers to."""
        if not self._known_writers:
            return state
        writers = dict(state.writers)
        for writer, end in self._known_writers.items():
            if end > writers.get(writer, (0, 0))[0]:
                writers[writer] = (end, 0)
        return dataclasses.replace(state, writers=writers)

    async def _submit_and_wait(
        self, batch: PendingBatch, paths: tuple[str, ...], resolved: asyncio.Event
    ) -> BatchResolution:
        """Hands ``batch`` to the owner and waits for its resolution."""
        assert self._fleet is not None
        try:
            await self._fleet.store.submit(self._key, self._branch, batch)
        except Unavailable as exc:
            # As when the lease cannot be read: commit here rather than fail the writes.
            # But the row may be stored all the same (only the acknowledgement was lost)
            # and an owner then commits it: so commit the batch itself, its files and its
            # id, never the units again, and whichever of the two commits comes second
            # finds the batch id in the table and adds nothing.
            log.warning(
                "cannot hand ingest files over; committing locally",
                extra={"table": ".".join(self._key), "error": exc.message},
            )
            return await self._commit_here(batch)
        return await self._await_batch(batch, paths, resolved)

    async def _await_batch(
        self, batch: PendingBatch, paths: tuple[str, ...], resolved: asyncio.Event
    ) -> BatchResolution:
        """Waits for the owner to resolve ``batch``, taking the lease over if it lapses.

        Woken by ``resolved`` (the owner's notification), and at the latest after a poll
        interval: the database is read then, in case the notification was lost.
        """
        assert self._fleet is not None and self._lease is not None
        store = self._fleet.store
        deadline = time.monotonic() + self._settings.handoff_timeout_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resolved.wait(), self._poll_seconds())
            resolved.clear()
            try:
                resolution = await store.resolution(batch.batch_id)
                if resolution is not None:
                    return await self._unless_committed(batch, resolution)
                epoch = await self._lease.hold()
                if epoch is not None:  # the owner died or drained: commit them here
                    await self._commit_as_owner([], epoch)
                    continue
            except Unavailable as exc:
                if time.monotonic() < deadline:
                    continue
                # Not withdrawn: whether an owner commits it is unknown, so no answer but a
                # retryable error (a resend with the same request id writes once).
                return BatchResolution(batch.batch_id, BatchStatus.FAILED, error=exc)
            if time.monotonic() >= deadline:
                if await _withdrawn(store, batch.batch_id):
                    await self._discard(paths)
                    return BatchResolution(
                        batch.batch_id,
                        BatchStatus.FAILED,
                        error=Unavailable(
                            f"no replica committed the writes to {'.'.join(self._key)} in "
                            f"{self._settings.handoff_timeout_seconds:g} s; retry later",
                            reason="COMMIT_OWNER_UNAVAILABLE",
                        ),
                    )
                deadline = time.monotonic() + self._settings.handoff_timeout_seconds

    async def _unless_committed(
        self, batch: PendingBatch, resolution: BatchResolution
    ) -> BatchResolution:
        """``resolution``, or COMMITTED if the batch is gone yet in a snapshot summary.

        A batch's row is gone when its answer was pruned before it was read (the replica
        paused past the retention); the owner may have committed it all the same, and its
        id is then in a snapshot summary of the request-id window (read as the owner reads
        it). The snapshot answered is the branch's head, at or after the one that holds it.
        """
        error = resolution.error
        if error is None or error.reason != LOST_BATCH_REASON:
            return resolution
        found: list[bool] = []

        def plan(state: IngestState) -> AppendPlan:
            found.append(batch.batch_id in state.batch_ids)
            return AppendPlan(None)  # nothing written: a look at the summaries only

        try:
            staged = await self._catalog.stage_append(
                *self._key,
                plan,
                request_id_window_ms=int(self._settings.request_id_window_seconds * 1000),
                branch=self._branch,
            )
        except LakehouseError:
            return resolution
        if found and found[-1]:
            return BatchResolution(batch.batch_id, BatchStatus.COMMITTED, staged.snapshot_id)
        return resolution

    async def _discard(self, paths: tuple[str, ...]) -> None:
        with contextlib.suppress(LakehouseError):  # orphan removal takes them
            await self._catalog.discard_files(*self._key, paths)

    async def _commit(
        self,
        group: list[_Unit],
        batches: Sequence[PendingBatch] = (),
        fates: dict[str, BatchStatus] | None = None,
        included: list[str] | None = None,
    ) -> int | LakehouseError | None:
        """Commits the group (and handed batches); the snapshot id, or the failure.

        ``fates`` gets each batch's fate, ``included`` the batches whose files the last
        attempt added (the others were already committed, or did not fit).
        """
        decisions: list[_Decision] = []
        included = [] if included is None else included

        def plan(state: IngestState) -> AppendPlan:
            nonlocal decisions
            now_ms = int(time.time() * 1000)
            decided, decisions = plan_group(group, state, now_ms)
            if batches and fates is not None:
                fates.clear()
                fates.update(add_batches(decided, batches, state, now_ms))
                included[:] = decided.batch_ids
            return decided

        started = time.perf_counter()
        try:
            outcome = await self._catalog.planned_append(
                *self._key,
                plan,
                request_id_window_ms=int(self._settings.request_id_window_seconds * 1000),
                max_attempts=self._settings.commit_attempts,
                ledger=self._ledger,
                request_ids=[unit.request_id for unit in group if unit.request_id]
                + [e.request_id for b in batches for e in b.entries if e.request_id],
                change=group[0].change if group else None,
                branch=self._branch,
            )
        except LakehouseError as exc:
            if batches and exc.reason == HANDED_FILES_REFUSED:
                return exc  # the owner commits its own writes again, without the batches
            metrics.INGEST_COMMITS.labels("error").inc()
            for unit in group:
                if not unit.future.done():
                    unit.future.set_exception(exc)
            return exc
        except BaseException as exc:
            if own_cancellation(exc):
                raise
            log.exception("ingest commit failed", extra={"table": ".".join(self._key)})
            # A SystemExit handed to the writers' futures would stop their tasks' event loop.
            failure = exc if isinstance(exc, Exception) else EscapedError(type(exc).__name__)
            for unit in group:
                if not unit.future.done():
                    unit.future.set_exception(failure)
            return Unavailable(f"the commit failed: {type(exc).__name__}")
        wrote = outcome.table is not None  # a commit was made
        if wrote:
            metrics.INGEST_COMMITS.labels("ok").inc()
            metrics.INGEST_COMMIT_SECONDS.observe(time.perf_counter() - started)
            metrics.INGEST_ROWS.inc(outcome.plan.data.num_rows if outcome.plan.data else 0)
        metrics.INGEST_COMMIT_CONFLICTS.inc(outcome.conflicts)
        if self._conflicts is not None:
            self._conflicts.record(self._key, outcome.conflicts)
        if self._gauges is not None and outcome.table is not None:
            self._gauges.committed(self._key, outcome.table)
        if self._notifier is not None and outcome.table is not None:
            self._notifier.committed(self._key)
        change = group[0].change if group else None
        if change is not None and outcome.stats is not None and outcome.table is not None:
            count_change(change.mode.name.lower(), outcome.stats)
        if outcome.unrecorded is not None:
            # The ids are in the commit's summary; only their life past its expiry is lost.
            metrics.REQUEST_IDS_UNRECORDED.inc(len(outcome.plan.request_ids))
            log.warning(
                "request ids committed but not recorded in the request-id store",
                extra={
                    "table": ".".join(self._key),
                    "request_ids": len(outcome.plan.request_ids),
                    "error": outcome.unrecorded.message,
                },
            )
        for unit, decision in zip(group, decisions, strict=True):
            if unit.future.done():
                continue
            if decision.error is not None:
                unit.future.set_exception(decision.error)
                continue
            rows = decision.rows
            if outcome.stats is not None and not decision.already:
                rows = outcome.stats.rows_added  # a change stream's DELETE rows add none
            unit.future.set_result(
                WriteResult(
                    rows_written=rows,
                    snapshot_id=outcome.snapshot_id,
                    already_written=decision.already,
                    offset=decision.offset,
                    stats=(outcome.stats or ChangeStats())
                    if not decision.already
                    else ChangeStats(),
                )
            )
        return outcome.snapshot_id

    async def close(self, timeout: float) -> None:
        """Commits what is queued (for at most ``timeout`` seconds), then stops.

        An owner then gives its commit lease up, so that another replica takes the batches
        handed to it at once rather than after the lease's TTL.
        """
        deadline = time.monotonic() + timeout
        while (
            not self._queue.empty() or self._held is not None or not self._idle.is_set()
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        if self._lease is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self._lease.release()


def _answer(unit: _Unit, decision: _Decision, snapshot_id: int | None) -> None:
    """Answers an appended unit (its commit, or the state that already held it)."""
    if not unit.future.done():
        unit.future.set_result(
            WriteResult(
                rows_written=decision.rows,
                snapshot_id=snapshot_id,
                already_written=decision.already,
                offset=decision.offset,
            )
        )


def _fail(group: Sequence[_Unit], error: BaseException) -> None:
    for unit in group:
        if not unit.future.done():
            unit.future.set_exception(error)


def _refused(result: int | LakehouseError | None) -> bool:
    """Whether a commit refused the handed files as they are (see ``HANDED_FILES_REFUSED``)."""
    return isinstance(result, LakehouseError) and result.reason == HANDED_FILES_REFUSED


async def _withdrawn(store: IngestFleetPort, batch_id: str) -> bool:
    try:
        return await store.withdraw(batch_id)
    except Unavailable:
        return False


class Ingest:
    """The ingest use cases behind IngestService."""

    def __init__(
        self,
        catalog: CatalogPort,
        settings: IngestSettings,
        *,
        request_ids: RequestIdLedger | None = None,
        conflicts: ConflictLog | None = None,
        gauges: TableGauges | None = None,
        notifier: CommitNotifier | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        """The ingest use cases.

        Args:
            catalog: The Iceberg catalog adapter.
            settings: The ingest settings.
            request_ids: The request-id ledger that keeps ids past snapshot expiry; None
                keeps them only as long as the snapshots that committed them.
            conflicts: Where lost commit races are counted per table (GetTableHealth).
            gauges: The per-table gauges, set after each commit.
            notifier: Wakes the table's watchers after each commit.
            fleet: The shared database where replicas agree on one committer per table
                branch (``lakehouse.core.ingest_fleet``); None commits in this process.
        """
        self._fleet = fleet
        self._notifier = notifier
        self._conflicts = conflicts
        self._gauges = gauges
        self._catalog = catalog
        self._settings = settings
        self._ledger = request_ids
        self._budget: _BufferBudget | None = None
        self._committers: dict[tuple[str, str, str], _TableCommitter] = {}

    @property
    def settings(self) -> IngestSettings:
        """The ingest settings (request limits for the servicer)."""
        return self._settings

    def _buffers(self) -> _BufferBudget:
        if self._budget is None:  # made on first use: it needs the running loop's objects
            self._budget = _BufferBudget(
                self._settings.buffer_bytes, self._settings.table_buffer_bytes
            )
        return self._budget

    def _committer(self, key: tuple[str, str], branch: str) -> _TableCommitter:
        committer = self._committers.get((*key, branch))
        if committer is None:
            committer = self._committers[(*key, branch)] = _TableCommitter(
                key,
                branch,
                self._catalog,
                self._settings,
                self._buffers(),
                self._ledger,
                self._conflicts,
                self._gauges,
                self._notifier,
                self._fleet,
            )
        return committer

    async def reserve(self, namespace: str, table: str, nbytes: int) -> Reservation:
        """Reserves write-buffer bytes for a request about to be decoded.

        Decoding is charged to the same buffers as queued rows, so concurrent requests
        cannot decode more together than the buffers hold. Pass the reservation to
        :meth:`enqueue`, and release it when the request fails before that.

        Raises:
            ResourceExhausted: No room within ``buffer_wait_seconds`` (reason
                WRITE_BUFFER_FULL, with RetryInfo).
        """
        key = (namespace, table)
        budget = self._buffers()
        await budget.reserve(key, nbytes, self._settings.buffer_wait_seconds)
        return Reservation(budget, key, nbytes)

    def try_reserve(self, namespace: str, table: str, nbytes: int) -> Reservation | None:
        """Reserves write-buffer bytes if they are free now, without waiting (see ``reserve``).

        Returns:
            The reservation, or None when there is no room now (``reserve`` waits for it).
        """
        key = (namespace, table)
        budget = self._buffers()
        return Reservation(budget, key, nbytes) if budget.try_take(key, nbytes) else None

    async def grow(self, reservation: Reservation, nbytes: int) -> None:
        """Reserves ``nbytes`` more for a request being decoded (see :meth:`reserve`).

        For what decoding turns out to take beyond the first estimate (dictionary-encoded
        columns), charged before that work starts.

        Raises:
            ResourceExhausted: No room within ``buffer_wait_seconds`` (reason
                WRITE_BUFFER_FULL, with RetryInfo).
        """
        await reservation.grow(nbytes, self._settings.buffer_wait_seconds)

    async def write(
        self,
        namespace: str,
        table: str,
        data: pa.Table,
        *,
        span: int | None = None,
        indices: pa.Array | None = None,
        writer_id: str = "",
        offset: int | None = None,
        request_id: str = "",
        change: RowChange | None = None,
        branch: str = "",
    ) -> WriteResult:
        """Writes rows already conformed to the table's schema; returns once committed.

        Args:
            namespace: The table's namespace.
            table: The table name.
            data: The rows, in the table's Arrow schema.
            span: Rows the request counts in the writer's sequence (default: those of data;
                more when invalid rows were dead-lettered).
            indices: Request position of each row of ``data`` when ``span`` is larger.
            writer_id: For exactly-once delivery.
            offset: Position of the request's first row in the writer's sequence.
            request_id: Makes a retried request write once.
            change: A write mode other than APPEND (committed alone, in queue order).
            branch: The branch committed to (empty: main).

        Raises:
            InvalidArgument: Bad names, ids or offset.
            NotFound: No such table, or branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
            OutOfRange: An offset beyond the writer's next one (nothing written).
            ResourceExhausted: The write buffer stayed full.
            Conflict: Commits kept conflicting.
            Unavailable: The catalog or the object store failed (nothing acknowledged).
        """
        future = await self.enqueue(
            namespace,
            table,
            data,
            span=span,
            indices=indices,
            writer_id=writer_id,
            offset=offset,
            request_id=request_id,
            change=change,
            branch=branch,
        )
        return await future

    async def enqueue(
        self,
        namespace: str,
        table: str,
        data: pa.Table,
        *,
        span: int | None = None,
        indices: pa.Array | None = None,
        writer_id: str = "",
        offset: int | None = None,
        request_id: str = "",
        reservation: Reservation | None = None,
        change: RowChange | None = None,
        branch: str = "",
    ) -> asyncio.Future[WriteResult]:
        """Queues a write (waiting for buffer room) and returns the future of its commit.

        Writes queued in order are committed in order, so a stream's requests keep theirs.
        A ``reservation`` from :meth:`reserve` is taken over by the queued rows. ``branch``
        (empty: main) is the branch committed to; whether it exists is checked at commit.

        Raises:
            InvalidArgument: Bad names, ids or offset.
            ResourceExhausted: The write buffer stayed full.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", table)
        branch = check_branch("branch", branch)
        if writer_id:
            check_writer_id("writer_id", writer_id)
        if request_id:
            check_request_id("request_id", request_id)
        if offset is not None:
            if not writer_id:
                raise InvalidArgument.field("offset", "an offset needs a writer_id")
            if offset < 0:
                raise InvalidArgument.field("offset", f"must not be negative, got {offset}")
        unit = _Unit(
            data=data,
            span=data.num_rows if span is None else span,
            indices=indices,
            writer_id=writer_id,
            offset=offset,
            request_id=request_id,
            nbytes=max(data.nbytes, 1),
            future=asyncio.get_running_loop().create_future(),
            change=change,
        )
        return await self._committer((namespace, table), branch).enqueue(unit, reservation)

    async def check_branch(self, namespace: str, table: str, branch: str) -> None:
        """Checks, on fresh metadata, that a write can go to ``branch`` (empty or main: yes).

        The commit checks again (the branch may go meanwhile); this is for work done before
        it that the commit cannot undo, such as dead-lettering a request's invalid rows.

        Raises:
            InvalidArgument: A malformed name (INVALID_NAME).
            NotFound: No such table, or branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
        """
        branch = check_branch("branch", branch)
        if branch == MAIN:
            return
        refs = {ref.name: ref for ref in await self._catalog.list_refs(namespace, table)}
        found = refs.get(branch)
        if found is None:
            raise NotFound(
                f"table {namespace}.{table} has no branch or tag {branch}",
                reason="REF_NOT_FOUND",
                metadata={"ref": branch},
            )
        if found.kind is not RefKind.BRANCH:
            raise FailedPrecondition(
                f"{branch} of table {namespace}.{table} is a tag: a tag never moves, so rows "
                "are written to a branch",
                reason="NOT_A_BRANCH",
                metadata={"ref": branch},
            )

    async def get_writer(
        self, namespace: str, table: str, writer_id: str, branch: str = ""
    ) -> WriterInfo:
        """A writer's committed position on a branch (empty: main).

        Raises:
            InvalidArgument: Bad names or writer id.
            NotFound: No such table, or branch (REF_NOT_FOUND), or the writer never
                committed on it (reason WRITER_NOT_FOUND).
            FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
        """
        check_identifier("namespace", namespace)
        check_identifier("table", table)
        check_writer_id("writer_id", writer_id)
        branch = check_branch("branch", branch)
        found = await self._catalog.writer_position(
            namespace,
            table,
            writer_id,
            request_id_window_ms=int(self._settings.request_id_window_seconds * 1000),
            branch=branch,
        )
        if found is None:
            where = f"{namespace}.{table}" + (f" (branch {branch})" if branch != MAIN else "")
            raise NotFound(
                f"writer {writer_id} has no committed rows in {where}; start at 0",
                reason="WRITER_NOT_FOUND",
                metadata={"writer_id": writer_id},
            )
        next_offset, snapshot_id, commit_ms = found
        return WriterInfo(next_offset, snapshot_id, commit_ms)

    async def close(self, timeout: float = 30.0) -> None:
        """Commits what is buffered (within ``timeout``) and stops every committer."""
        for committer in list(self._committers.values()):
            await committer.close(timeout)
