"""Reading data files a few at a time, each a few batches ahead, in file order.

A scan decodes the next files while the current one is being sent, so decoding (which
pyarrow does outside the GIL) overlaps with the network, yet memory stays bounded: at most
``files_ahead`` files are open and each holds at most ``batches_ahead`` decoded batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

_END = object()
_POLL_SECONDS = 0.1


class _FileProducer:
    """Decodes one file in its own thread into a small queue."""

    def __init__(self, open_batches: Callable[[], Iterator[pa.RecordBatch]], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
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
                if not self._put(batch):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failed(exc))
            return
        self._put(_END)

    def batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def stop(self) -> None:
        self._stop.set()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def read_ahead(
    files: list[Callable[[], Iterator[pa.RecordBatch]]],
    *,
    files_ahead: int = 2,
    batches_ahead: int = 2,
) -> Iterator[pa.RecordBatch]:
    """Yields the batches of every file in order, decoding up to ``files_ahead`` at once.

    Closing the generator early (a cancelled read) stops every producer.
    """
    producers: list[_FileProducer] = []
    started = 0
    try:
        for index in range(len(files)):
            while started < len(files) and started < index + files_ahead:
                producers.append(_FileProducer(files[started], batches_ahead))
                started += 1
            yield from producers[index].batches()
            producers[index].stop()
    finally:
        for producer in producers:
            producer.stop()
