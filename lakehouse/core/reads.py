"""ReadRows: a lazy, bounded stream of a table's rows.

Files are read one batch at a time in the blocking pool, and each batch is cut into pieces
under a byte budget, so a table far larger than memory streams through a fixed amount of it.
The caller awaits each piece before the next is read, so a slow client slows the scan (gRPC
flow control) instead of making the server buffer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.schema import Schema

from lakehouse.core.ports import CatalogPort
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.names import check_identifier
from lakehouse.domain.refs import check_ref_name
from lakehouse.domain.row_filter import parse_row_filter_off_loop
from lakehouse.domain.tables import OpenScan, ScanRequest


@dataclass(frozen=True)
class ReadOptions:
    """What to read."""

    columns: tuple[str, ...] = ()
    row_filter: str = ""
    snapshot_id: int | None = None
    as_of_ms: int | None = None
    limit: int = 0
    start_snapshot_id: int | None = None
    """An incremental read: what changed after this snapshot."""
    end_snapshot_id: int | None = None
    """The last snapshot of an incremental read (default: the current one)."""
    ref: str = ""
    """A branch or tag to read (its head or snapshot); empty: the current snapshot."""


@dataclass(frozen=True)
class ReadStart:
    """The first item of a read: the Arrow schema of every batch, and the snapshot read."""

    schema: pa.Schema
    snapshot_id: int | None


def split_batch(batch: pa.RecordBatch, budget_bytes: int) -> Iterator[pa.RecordBatch]:
    """Cuts a batch into zero-copy slices of about ``budget_bytes`` each (at least one row)."""
    if batch.num_rows == 0:
        return
    size = batch.nbytes
    if size <= budget_bytes:
        yield batch
        return
    rows = max(1, batch.num_rows * budget_bytes // size)
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def _check_columns(schema: Schema, columns: tuple[str, ...]) -> None:
    for i, column in enumerate(columns):
        try:
            schema.find_field(column, case_sensitive=True)
        except ValueError:
            raise InvalidArgument.field(
                f"columns.paths[{i}]", f"no column {column!r}", reason="UNKNOWN_COLUMN"
            ) from None


def _check_incremental(options: ReadOptions) -> None:
    """Checks the version options: one of snapshot, time, ref or incremental range.

    An incremental read names its start, and no other version of the table; a read of a ref
    names no other version either.
    """
    if options.ref:
        check_ref_name("ref", options.ref, allow_main=True)
        if (
            options.snapshot_id is not None
            or options.as_of_ms is not None
            or options.start_snapshot_id is not None
        ):
            raise InvalidArgument.field(
                "ref",
                "names the version to read: not with snapshot_id, as_of_time or start_snapshot_id",
            )
    if options.start_snapshot_id is None:
        if options.end_snapshot_id is not None:
            raise InvalidArgument.field(
                "end_snapshot_id", "is the end of an incremental read: set start_snapshot_id too"
            )
        return
    if options.snapshot_id is not None or options.as_of_ms is not None:
        raise InvalidArgument.field(
            "start_snapshot_id",
            "reads the changes between two snapshots: not with snapshot_id or as_of_time",
        )


async def checked_scan_request(
    catalog: CatalogPort, namespace: str, name: str, options: ReadOptions
) -> ScanRequest:
    """The scan ``options`` ask for, once names, limit, versions, columns and filter are checked.

    Raises:
        InvalidArgument: Bad names, columns, filter, limit or versions.
        NotFound: No such table.
        Unavailable: The catalog failed.
    """
    check_identifier("namespace", namespace)
    check_identifier("table", name)
    if options.limit < 0:
        raise InvalidArgument.field("row_limit", f"must not be negative, got {options.limit}")
    _check_incremental(options)
    info = await catalog.load_table(namespace, name)
    _check_columns(info.schema, options.columns)
    expression = await parse_row_filter_off_loop(options.row_filter, info.schema)
    return ScanRequest(
        columns=options.columns,
        row_filter=expression,
        snapshot_id=options.snapshot_id,
        as_of_ms=options.as_of_ms,
        limit=options.limit or None,
        start_snapshot_id=options.start_snapshot_id,
        end_snapshot_id=options.end_snapshot_id,
        ref=options.ref,
    )


class _RowLimit:
    """The rows a read may still yield: its limit's count down (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.remaining = limit

    @property
    def reached(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def take(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` cut to the rows left, which it then uses up."""
        if self.remaining is None:
            return batch
        batch = batch.slice(0, self.remaining)
        self.remaining -= batch.num_rows
        return batch


async def scan_items(
    catalog: CatalogPort, namespace: str, name: str, request: ScanRequest, *, budget_bytes: int
) -> AsyncIterator[ReadStart | pa.RecordBatch]:
    """Opens ``request``'s scan; yields a ReadStart, then batches of about ``budget_bytes``.

    Raises:
        NotFound: No such table or snapshot.
        Unavailable: The catalog or the object store failed.
    """
    scan = await catalog.open_scan(namespace, name, request)
    try:
        yield ReadStart(scan.schema, scan.snapshot_id)
        limit = _RowLimit(request.limit)
        while not limit.reached:
            batch = await catalog.next_batch(scan)
            if batch is None:
                break
            for piece in split_batch(limit.take(batch), budget_bytes):
                yield piece
    finally:
        await catalog.close_scan(scan)


class OpenRead:
    """A read opened on the loop, whose batches are then pulled on the caller's own thread.

    For a transport with its own threads (Flight's do_get): the scan is planned and opened
    once on the loop (what needs the loop-bound catalog state), then every batch is read with
    the catalog's blocking calls on the pulling thread, with no hop to the loop per batch.
    The scan's read-ahead and its charge to the process's read budget are the same as the
    async read's; ``close`` (or the end of ``batches``) gives them back.

    Args:
        catalog: The catalog the scan was opened on.
        scan: The open scan.
        limit: The most rows to yield (None: all).
        budget_bytes: About the size of each batch yielded.
    """

    def __init__(
        self, catalog: CatalogPort, scan: OpenScan, limit: int | None, *, budget_bytes: int
    ) -> None:
        self._catalog = catalog
        self._scan = scan
        self._limit = limit
        self._budget_bytes = budget_bytes
        self.start = ReadStart(scan.schema, scan.snapshot_id)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of every batch."""
        return self.start.schema

    @classmethod
    async def open(
        cls,
        catalog: CatalogPort,
        namespace: str,
        name: str,
        request: ScanRequest,
        *,
        budget_bytes: int,
    ) -> OpenRead:
        """Opens ``request``'s scan (on the loop).

        Raises:
            NotFound: No such table or snapshot.
            Unavailable: The catalog or the object store failed.
        """
        scan = await catalog.open_scan(namespace, name, request)
        return cls(catalog, scan, request.limit, budget_bytes=budget_bytes)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The batches, read on the calling thread (blocking); the scan is closed at the end.

        Raises:
            Unavailable: The object store failed.
        """
        try:
            limit = _RowLimit(self._limit)
            while not limit.reached:
                batch = self._catalog.next_batch_sync(self._scan)
                if batch is None:
                    break
                yield from split_batch(limit.take(batch), self._budget_bytes)
        finally:
            self.close()

    def close(self) -> None:
        """Stops reading and gives back the scan's read-ahead (blocking; idempotent)."""
        self._catalog.close_scan_sync(self._scan)


class Reads:
    """The read use case behind TableService.ReadRows."""

    def __init__(self, catalog: CatalogPort) -> None:
        self._catalog = catalog

    async def read(
        self, namespace: str, name: str, options: ReadOptions, *, budget_bytes: int
    ) -> AsyncIterator[ReadStart | pa.RecordBatch]:
        """Yields a ReadStart, then record batches of at most about ``budget_bytes``.

        Raises:
            InvalidArgument: Bad names, columns, filter or limit.
            NotFound: No such table or snapshot.
            Unavailable: The catalog or the object store failed.
        """
        request = await checked_scan_request(self._catalog, namespace, name, options)
        async for item in scan_items(
            self._catalog, namespace, name, request, budget_bytes=budget_bytes
        ):
            yield item

    async def open(
        self, namespace: str, name: str, options: ReadOptions, *, budget_bytes: int
    ) -> OpenRead:
        """``read``, opened on the loop and read on the caller's thread (see :class:`OpenRead`).

        Raises:
            InvalidArgument: Bad names, columns, filter or limit.
            NotFound: No such table or snapshot.
            Unavailable: The catalog or the object store failed.
        """
        request = await checked_scan_request(self._catalog, namespace, name, options)
        return await OpenRead.open(
            self._catalog, namespace, name, request, budget_bytes=budget_bytes
        )
