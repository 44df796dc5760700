"""Reading data files a few at a time, each a few batches ahead, in file order.

A scan decodes the next files while the current one is being sent, so decoding (which
pyarrow does outside the GIL) overlaps with the network, yet memory stays bounded: at most
``files_ahead`` files are open and each holds at most ``batches_ahead`` decoded batches.

Batches waiting in those queues are charged, in decoded bytes, to a :class:`ReadBudget`: a
per-stream cap and one per process that every stream shares. Counting batches is not enough:
a batch of highly compressible rows can decode to hundreds of megabytes, and a client that
reads one message and then holds the call must not make the server decode the rest of its
files into memory. A producer without budget waits (its stream's client is slow or stalled;
the other streams go on). A producer with nothing queued may always queue one batch, so a
stream never waits forever for budget held by other streams' stalled clients, and a scan
never deadlocks on its own budget (its current file can always make progress). The batch the
consumer holds stays charged until it asks for the next one: a stream may go past its share
by that batch and one queued, but both are counted, so the other streams wait for them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from lakehouse import metrics
from lakehouse.adapters.resilience import OBJECT_STORE
from lakehouse.deadlines import remaining_seconds
from lakehouse.domain.errors import DeadlineExceeded

_END = object()
_POLL_SECONDS = 0.1


class ReadBudget:
    """Decoded bytes of read-ahead batches, capped for the whole process (thread-safe).

    Args:
        total_bytes: The cap shared by every stream of the process.
    """

    def __init__(self, total_bytes: int) -> None:
        self._total = total_bytes
        self._held = 0
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Bytes charged now."""
        return self._held

    def _acquire(
        self,
        nbytes: int,
        fits_stream: Callable[[], bool],
        alone: Callable[[], bool],
        stop: threading.Event,
        charge_stream: Callable[[], None],
    ) -> bool:
        with self._changed:
            while not (alone() or (fits_stream() and self._held + nbytes <= self._total)):
                if stop.is_set():
                    return False
                self._changed.wait(_POLL_SECONDS)
            self._held += nbytes
            # Under the same lock as the check: two producers of one stream (its next files)
            # must not both see the stream's share free and both take it.
            charge_stream()
            metrics.READ_AHEAD_BYTES.set(self._held)
            return True

    def _release(self, nbytes: int) -> None:
        with self._changed:
            self._held -= nbytes
            metrics.READ_AHEAD_BYTES.set(self._held)
            self._changed.notify_all()


class _StreamBudget:
    """One scan's share of a :class:`ReadBudget`, with its own cap."""

    def __init__(self, budget: ReadBudget | None, stream_bytes: int) -> None:
        self._budget = budget
        self._cap = stream_bytes
        self._held = 0
        self._lock = threading.Lock()

    def acquire(self, nbytes: int, stop: threading.Event, alone: Callable[[], bool]) -> bool:
        """Waits until ``nbytes`` fit, or ``alone`` (the producer holds nothing queued).

        Returns:
            False when ``stop`` was set while waiting.
        """
        if self._budget is None:
            return True

        def charge() -> None:
            with self._lock:
                self._held += nbytes

        return self._budget._acquire(
            nbytes,
            fits_stream=lambda: self._held + nbytes <= self._cap,
            alone=alone,
            stop=stop,
            charge_stream=charge,
        )

    def release(self, nbytes: int) -> None:
        """Gives ``nbytes`` back."""
        if self._budget is None or nbytes == 0:
            return
        with self._lock:
            self._held -= nbytes
        self._budget._release(nbytes)


class _FileProducer:
    """Decodes one file in its own thread into a small queue."""

    def __init__(
        self,
        open_batches: Callable[[], Iterator[pa.RecordBatch]],
        depth: int,
        budget: _StreamBudget,
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._budget = budget
        # Charged bytes in this producer's queue. Each producer may queue one batch whatever
        # the budget: the consumer reads the files in order, so a later file's producer must
        # not take the last budget the current file's producer needs (that deadlocks).
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, args=(open_batches,), name="lakehouse-readahead", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, open_batches: Callable[[], Iterator[pa.RecordBatch]]) -> None:
        try:
            for batch in open_batches():
                nbytes = batch.get_total_buffer_size()
                if not self._budget.acquire(nbytes, self._stop, lambda: self._queued == 0):
                    return
                with self._queued_lock:
                    self._queued += nbytes
                if not self._put((batch, nbytes)):
                    self._given_back(nbytes)
                    return
                if self._stop.is_set():  # stopped while it was put: nothing will take it
                    self._drain()
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failed(exc))
            return
        self._put(_END)

    def batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._next_item()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            batch, nbytes = item
            # The consumer holds it from now on: it leaves this producer's queue (so the
            # producer may queue one more whatever the budget), but stays charged to the
            # budget until the consumer asks for the next batch or closes the stream.
            with self._queued_lock:
                self._queued -= nbytes
            try:
                yield batch
            finally:
                self._budget.release(nbytes)

    def _next_item(self) -> Any:
        """The next item of the queue, waited for until the current call's deadline at most.

        The consumer may be a transport's own thread (Flight's do_get) rather than a pool
        thread the loop waits on with its own timeout: a file whose reads hang must not hold
        that thread past the call's limit.

        Raises:
            DeadlineExceeded: Nothing came before the deadline.
        """
        left = remaining_seconds()
        if left is None:
            return self._queue.get()
        try:
            return self._queue.get(timeout=max(left, 0.0))
        except queue.Empty:
            raise DeadlineExceeded(
                "the next batch was not read from the object store within the call's limit",
                metadata={"dependency": OBJECT_STORE},
            ) from None

    def _given_back(self, nbytes: int) -> None:
        with self._queued_lock:
            self._queued -= nbytes
        self._budget.release(nbytes)

    def stop(self) -> None:
        """Stops the thread and gives back what its queue was charged."""
        self._stop.set()
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                self._given_back(item[1])


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def read_ahead(
    files: list[Callable[[], Iterator[pa.RecordBatch]]],
    *,
    files_ahead: int = 2,
    batches_ahead: int = 2,
    budget: ReadBudget | None = None,
    stream_bytes: int = 64 * 1024 * 1024,
) -> Iterator[pa.RecordBatch]:
    """Yields the batches of every file in order, decoding up to ``files_ahead`` at once.

    Args:
        files: One callable per file, opening its batches.
        files_ahead: Files decoded at once.
        batches_ahead: Batches queued per file.
        budget: The process's read-ahead budget; None charges nothing (counts only).
        stream_bytes: This stream's cap on decoded bytes queued ahead.

    Closing the generator early (a cancelled read) stops every producer.
    """
    share = _StreamBudget(budget, stream_bytes)
    producers: list[_FileProducer] = []
    started = 0
    try:
        for index in range(len(files)):
            while started < len(files) and started < index + files_ahead:
                producers.append(_FileProducer(files[started], batches_ahead, share))
                started += 1
            yield from producers[index].batches()
            producers[index].stop()
    finally:
        for producer in producers:
            producer.stop()
