"""What a running job's code sees of the worker that runs it.

Job code (compaction, imports, SQL) runs in a worker thread. It reports progress and asks,
at each safe point, whether it must stop: because ``CancelJob`` was called, because the
worker lost the job's lease (another worker may have taken it over), or because the worker
is shutting down. Stopping before the final commit is what guarantees that a cancelled job
commits nothing partial.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


class JobStopped(Exception):
    """Raised at a safe point when the job must stop without committing.

    Attributes:
        why: ``"cancelled"``, ``"lease_lost"``, ``"shutdown"`` or ``"timeout"`` (the job ran
            past its wall-clock limit).
    """

    def __init__(self, why: str) -> None:
        super().__init__(f"job stopped: {why}")
        self.why = why


@dataclass
class JobContext:
    """The running job's link to its worker; thread-safe.

    Attributes:
        job_id: The job's id, recorded in what the job commits (snapshot summaries, table
            properties) so that a retried attempt can tell its own earlier commit apart.
        attempt: The attempt number, from 1.
    """

    job_id: str
    attempt: int = 1
    _stop: threading.Event = field(default_factory=threading.Event)
    _why: str = ""
    _progress: tuple[float, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _on_stop: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, why: str) -> None:
        """Asks the job to stop (called by the worker); runs the registered stop callbacks.

        Called from an event loop (the worker's heartbeat, CancelJob), the callbacks run in a
        thread of their own: cancelling a Trino query is an HTTP call. From any other thread
        they run at once, before this returns.
        """
        with self._lock:
            if self._stop.is_set():
                return
            self._why = why
            self._stop.set()
            callbacks = list(self._on_stop)
        if not callbacks:
            return
        if _in_event_loop():
            threading.Thread(
                target=_run_all, args=(callbacks,), name=f"stop-job-{self.job_id}", daemon=True
            ).start()
        else:  # a worker thread (the job's own, a timer) may block: interrupt right away
            _run_all(callbacks)

    @property
    def why(self) -> str:
        """Why the job was asked to stop (see ``JobStopped.why``); empty while it runs on."""
        with self._lock:
            return self._why

    @property
    def stopping(self) -> bool:
        """True once the job was asked to stop."""
        return self._stop.is_set()

    def check(self) -> None:
        """A safe point: raises JobStopped if the job was asked to stop."""
        if self._stop.is_set():
            raise JobStopped(self._why)

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Registers ``callback`` to run (in the worker's thread) when the job is asked to stop.

        Engines use this to interrupt a running query (DuckDB's ``interrupt``, Trino's
        query cancel). If the job is stopping already, the callback runs at once. Returns a
        function that unregisters it.
        """
        with self._lock:
            run_now = self._stop.is_set()
            if not run_now:
                self._on_stop.append(callback)
        if run_now:
            callback()

        def remove() -> None:
            with self._lock:
                if callback in self._on_stop:
                    self._on_stop.remove(callback)

        return remove

    def progress(self, fraction: float, message: str) -> None:
        """Records how far the job has come; the worker publishes it with its next heartbeat."""
        with self._lock:
            self._progress = (min(max(fraction, 0.0), 1.0), message[:500])

    def take_progress(self) -> tuple[float, str] | None:
        """The progress recorded since the last call, if any (used by the worker)."""
        with self._lock:
            progress, self._progress = self._progress, None
            return progress


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # a failed interrupt must not hide the others; the stop still holds
            logging.getLogger(__name__).exception("a job's stop callback failed")


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
