"""The progress of a running DuckDB query, published through the job's context."""

from __future__ import annotations

import threading

import duckdb

from lakehouse.domain.job_context import JobContext

_PROGRESS_SECONDS = 1.0


class Progress:
    """Publishes DuckDB's own progress estimate once a second while a query runs."""

    def __init__(self, con: duckdb.DuckDBPyConnection, ctx: JobContext) -> None:
        self._con = con
        self._ctx = ctx
        self._rows = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def scanned(self, rows: int) -> None:
        """Adds ``rows`` to the table rows read (called by the scan sources)."""
        with self._lock:
            self._rows += rows

    def start(self, what: str) -> None:
        """Starts publishing, in a thread of its own, with ``what`` naming the step."""
        self._done.clear()
        self._thread = threading.Thread(
            target=self._run, args=(what,), name="lakehouse-sql-progress", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stops publishing and waits for the thread to end."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self, what: str) -> None:
        while not self._done.wait(_PROGRESS_SECONDS):
            try:
                percent = float(self._con.query_progress())
            except (duckdb.Error, RuntimeError):
                return
            with self._lock:
                rows = self._rows
            if percent >= 0:
                self._ctx.progress(percent / 100 * 0.9, f"{what}: {rows} table rows read")
