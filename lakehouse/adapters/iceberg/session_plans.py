"""Read sessions on Iceberg: a scan planned once per process, split into streams.

A session pins a snapshot; every replica that serves one of its streams plans that snapshot
with the session's filter and columns (pyiceberg lists the data files in manifest order, the
same on every replica) and reads the stream's contiguous share of the files. The plan is
cached per process, so the streams of one session served by one replica plan once, even when
they arrive together.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import DataScan, FileScanTask
from pyiceberg.table import Table as IcebergTable

from lakehouse.adapters.iceberg.scan import small_offsets
from lakehouse.adapters.iceberg.snapshot_refs import resolve_ref
from lakehouse.domain.errors import FailedPrecondition
from lakehouse.domain.read_sessions import StreamEstimate, StreamShare, split_by_bytes
from lakehouse.domain.tables import PlannedRead, ScanRequest, snapshot_not_found

#: Plans kept per process. A plan is its data files' task objects: a few hundred bytes each.
PLAN_CACHE_SIZE = 64

_PlanKey = tuple[str, str, int, str, tuple[str, ...]]
_Plan = tuple[FileScanTask, ...]


class PlanCache:
    """The planned files of recent session reads, by table, snapshot, filter and columns.

    One planning per key: the streams of a session reach a replica that did not create it at
    once, and the first to miss plans while the others wait for its plan (a future in the
    cache). A planning that fails leaves no entry, so the next read plans again.
    """

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        self._size = size
        self._plans: OrderedDict[_PlanKey, Future[_Plan]] = OrderedDict()
        self._lock = threading.Lock()

    def tasks(self, key: _PlanKey, plan: Callable[[], _Plan], *, keep: bool = True) -> _Plan:
        """The cached plan of ``key``, planned with ``plan`` on a miss.

        Args:
            key: What the plan is of.
            plan: Plans it.
            keep: Cache a plan made on a miss; False for a plan nothing reads again (a
                one-stream plan whose read plans for itself): it would only push out the
                plans of sessions being read.

        Raises:
            Exception: Whatever ``plan`` raised, to the caller that planned and to those that
                waited for it.
        """
        with self._lock:
            found = self._plans.get(key)
            if not keep:
                pass  # used if there, neither added nor moved: the cache stays as it was
            elif found is not None:
                self._plans.move_to_end(key)
            else:
                pending: Future[_Plan] = Future()
                self._plans[key] = pending
                while len(self._plans) > self._size:
                    # A planning still under way stays its waiters' own: they hold its future.
                    self._plans.popitem(last=False)
        if found is not None:
            # Blocks this worker thread while another plans: it would plan otherwise.
            return found.result()
        if not keep:
            return plan()
        return self._plan(key, pending, plan)

    def _plan(self, key: _PlanKey, pending: Future[_Plan], plan: Callable[[], _Plan]) -> _Plan:
        try:
            planned = plan()  # the lock is not held: planning reads manifests
        except BaseException as exc:
            with self._lock:
                if self._plans.get(key) is pending:
                    del self._plans[key]
            pending.set_exception(exc)
            raise
        pending.set_result(planned)
        return planned


def pinned_snapshot(
    table: IcebergTable, namespace: str, name: str, request: ScanRequest
) -> int | None:
    """The snapshot a read of ``request`` reads: by id, ref or time, else the current one.

    Raises:
        NotFound: No such snapshot or ref.
    """
    snapshot_id = request.snapshot_id
    if request.ref:
        snapshot_id = resolve_ref(table, request.ref)
    if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
        raise snapshot_not_found(namespace, name, str(snapshot_id))
    if request.as_of_ms is not None:
        snapshot = table.snapshot_as_of_timestamp(request.as_of_ms)
        if snapshot is None:
            raise snapshot_not_found(namespace, name, "as old as the given time")
        snapshot_id = snapshot.snapshot_id
    if snapshot_id is None and table.current_snapshot() is not None:
        snapshot_id = table.metadata.current_snapshot_id
    return snapshot_id


def data_scan(table: IcebergTable, request: ScanRequest, snapshot_id: int | None) -> DataScan:
    """Pyiceberg's scan of ``request`` on ``snapshot_id``."""
    return table.scan(
        row_filter=request.row_filter,
        selected_fields=request.columns or ("*",),
        snapshot_id=snapshot_id,
        limit=request.limit,
    )


def arrow_schema(scan: DataScan) -> pa.Schema:
    """The Arrow schema of a scan's batches, as ``lazy_batch_reader`` yields them."""
    return small_offsets(schema_to_pyarrow(scan.projection()))


class SessionPlanner:
    """Plans session reads and finds each stream's share of the files."""

    def __init__(self, cache: PlanCache | None = None) -> None:
        self._cache = cache or PlanCache()

    def _tasks(
        self,
        table: IcebergTable,
        request: ScanRequest,
        scan: DataScan,
        snapshot_id: int,
        *,
        keep: bool = True,
    ) -> tuple[FileScanTask, ...]:
        key = (
            table.metadata.table_uuid.hex,
            table.metadata.location,
            snapshot_id,
            repr(request.row_filter),
            request.columns,
        )
        return self._cache.tasks(key, lambda: tuple(scan.plan_files()), keep=keep)

    def plan(
        self,
        table: IcebergTable,
        namespace: str,
        name: str,
        request: ScanRequest,
        max_streams: int,
        *,
        keep_plan: bool = True,
    ) -> PlannedRead:
        """Pins the snapshot, plans its files and splits them into streams.

        ``keep_plan``: cache the files planned for the streams' reads (see ``PlanCache``).

        Raises:
            NotFound: No such snapshot or ref.
            ValueError: An unknown column (pyiceberg's projection).
        """
        snapshot_id = pinned_snapshot(table, namespace, name, request)
        scan = data_scan(table, request, snapshot_id)
        schema = arrow_schema(scan)
        if snapshot_id is None:
            return PlannedRead(None, schema, (StreamEstimate(0, 0),))
        tasks = self._tasks(table, request, scan, snapshot_id, keep=keep_plan)
        runs = split_by_bytes([t.file.file_size_in_bytes for t in tasks], max_streams)
        streams = tuple(
            StreamEstimate(
                sum(tasks[i].file.record_count for i in run),
                sum(tasks[i].file.file_size_in_bytes for i in run),
            )
            for run in runs
        )
        return PlannedRead(snapshot_id, schema, streams)

    def share(
        self,
        table: IcebergTable,
        namespace: str,
        name: str,
        request: ScanRequest,
        share: StreamShare,
    ) -> tuple[DataScan, tuple[FileScanTask, ...]] | None:
        """The scan of a session's pinned snapshot and one stream's files (None: no data).

        Raises:
            NotFound: The pinned snapshot is no longer in the table (SNAPSHOT_NOT_FOUND).
            FailedPrecondition: The snapshot plans to fewer files than the session's streams.
            ValueError: An unknown column (pyiceberg's projection).
        """
        if request.snapshot_id is None:
            return None
        if table.snapshot_by_id(request.snapshot_id) is None:
            raise snapshot_not_found(namespace, name, str(request.snapshot_id))
        scan = data_scan(table, request, request.snapshot_id)
        tasks = self._tasks(table, request, scan, request.snapshot_id)
        runs = split_by_bytes([t.file.file_size_in_bytes for t in tasks], share.count)
        if len(runs) != share.count:
            # Planning is deterministic for a snapshot; a replica whose pyiceberg plans
            # differently must not serve a share of another plan (rows lost or doubled).
            raise FailedPrecondition(
                f"table {namespace}.{name}: snapshot {request.snapshot_id} plans into "
                f"{len(runs)} streams here, not the session's {share.count}: create a new session",
                metadata={"namespace": namespace, "table": name},
            )
        run = runs[share.index]
        return scan, tasks[run.start : run.stop]
