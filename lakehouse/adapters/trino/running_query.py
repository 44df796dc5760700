"""One Trino query tied to its job: the query's progress goes out, the job's stop comes in.

Stopping the job sends ``DELETE`` to the query's ``nextUri`` (Trino's cancel), so a
cancelled job does not leave a query burning the cluster.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from lakehouse.adapters.trino.client import Cursor
from lakehouse.domain.job_context import JobContext

logger = logging.getLogger(__name__)


class RunningQuery:
    """Ties one Trino query to its job: progress out, cancellation in.

    ``cancel`` may be called from the worker's thread (``ctx.stop``) while the job's thread
    is inside the client waiting for a page. If the query has no id yet (its POST is in
    flight) there is nothing to cancel; ``on_stats`` runs as soon as the POST answers and
    cancels then.
    """

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._cursor: Cursor | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def attach(self, cursor: Cursor) -> None:
        """Sets the cursor the query runs on (made after this object: it needs on_stats)."""
        self._cursor = cursor

    def on_stats(self, stats: dict[str, Any]) -> None:
        """The client's per-page callback: forwards split progress, enforces a stop.

        Runs inside the client, so it must not raise.
        """
        state = str(stats.get("state", ""))
        total = stats.get("totalSplits")
        done = stats.get("completedSplits")
        query_id = stats.get("queryId", "")
        if isinstance(total, int) and isinstance(done, int) and total > 0:
            self._ctx.progress(
                done / total, f"Trino query {query_id} {state}: {done}/{total} splits"
            )
        elif state:
            self._ctx.progress(0.0, f"Trino query {query_id} {state}")
        if self._ctx.stopping:
            self.cancel()

    def cancel(self) -> None:
        """Asks Trino to cancel the query (once); never raises."""
        cursor = self._cursor
        with self._lock:
            if self._cancelled or cursor is None or cursor.query_id is None:
                return
            self._cancelled = True
        try:
            cursor.cancel()
        except Exception:  # a failed cancel must not hide why the job stopped
            logger.warning(
                "could not cancel Trino query %s",
                cursor.query_id,
                exc_info=True,
                extra={"job_id": self._ctx.job_id},
            )
        else:
            logger.info(
                "cancelled Trino query %s", cursor.query_id, extra={"job_id": self._ctx.job_id}
            )
