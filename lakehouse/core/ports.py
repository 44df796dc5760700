"""What core needs from the world outside it, as typed Protocols: the ports.

Core is written against these; only the wiring (``server/app.py``, ``server/worker_app.py``,
``server/job_runtime.py``) names the adapters that implement them and hands them in
(docs/development/architecture.md). An adapter implements a port by its shape (structural
typing): it does not import this module, since adapters import only the domain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Protocol, TypeVar

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder

from lakehouse.blocking import BlockingPool
from lakehouse.domain.changes import TableChange
from lakehouse.domain.ingest import AppendOutcome, AppendPlan, IngestState, RequestIdLedger
from lakehouse.domain.objects import ObjectInfo
from lakehouse.domain.tables import OpenScan, ScanRequest, SnapshotInfo, TableInfo

T = TypeVar("T")


class CatalogPort(Protocol):
    """Iceberg tables and namespaces (``lakehouse.adapters.iceberg.IcebergCatalog``)."""

    async def run_on_catalog(
        self,
        fn: Callable[[Catalog], T],
        namespace: str = "",
        table: str = "",
        *,
        pool: BlockingPool,
    ) -> T:
        """Runs ``fn`` with the pyiceberg catalog in ``pool``, translating its errors."""

    async def create_namespace(self, name: str, properties: dict[str, str]) -> dict[str, str]:
        """Creates a namespace; returns its properties."""

    async def namespace_properties(self, name: str) -> dict[str, str]:
        """The properties of a namespace. Raises NotFound."""

    async def list_namespaces(self) -> list[str]:
        """All top-level namespace names."""

    async def namespaces_with_properties(
        self, names: list[str]
    ) -> list[tuple[str, dict[str, str]]]:
        """The properties of several namespaces, in one trip to the pool."""

    async def update_namespace_properties(
        self, name: str, removals: set[str], updates: dict[str, str]
    ) -> tuple[dict[str, str], list[str], list[str], list[str]]:
        """Updates properties; returns (properties, updated, removed, missing)."""

    async def drop_namespace(self, name: str) -> None:
        """Drops an empty namespace. Raises NotFound or FailedPrecondition."""

    async def create_table(
        self,
        namespace: str,
        name: str,
        schema: Schema,
        partition_spec: PartitionSpec,
        sort_order: SortOrder,
        properties: dict[str, str],
    ) -> TableInfo:
        """Creates a table. Raises NotFound (namespace) or AlreadyExists."""

    async def load_table(self, namespace: str, name: str, *, max_age: float = 0.0) -> TableInfo:
        """Loads a table's metadata (cached, revalidated by metadata location). Raises NotFound."""

    async def register_table(self, namespace: str, name: str, metadata_location: str) -> TableInfo:
        """Adds an existing table to the catalog from its metadata file."""

    def owns_location(self, location: str) -> bool:
        """Whether ``location`` lies strictly inside the warehouse (see ``within_location``)."""

    async def list_snapshots(self, namespace: str, name: str) -> list[SnapshotInfo]:
        """Every snapshot kept in the table's metadata. Raises NotFound."""

    async def update_table(
        self,
        namespace: str,
        name: str,
        changes: Sequence[TableChange],
        expected_etag: str,
    ) -> TableInfo:
        """Applies ``changes`` in one commit, optionally only if the table is unchanged."""

    async def rollback(
        self,
        namespace: str,
        name: str,
        *,
        snapshot_id: int | None,
        as_of_ms: int | None,
        expected_etag: str,
    ) -> TableInfo:
        """Moves the current snapshot back to an ancestor (by id, or as of a time)."""

    async def planned_append(
        self,
        namespace: str,
        name: str,
        plan: Callable[[IngestState], AppendPlan],
        *,
        request_id_window_ms: int,
        max_attempts: int,
        ledger: RequestIdLedger | None = None,
        request_ids: Collection[str] = (),
    ) -> AppendOutcome:
        """Appends what ``plan`` decides on the freshest table state, in one commit."""

    async def writer_position(
        self, namespace: str, name: str, writer_id: str, *, request_id_window_ms: int
    ) -> tuple[int, int | None, int] | None:
        """(next_offset, last snapshot id, last commit ms) of a writer, or None if unknown."""

    async def open_scan(self, namespace: str, name: str, request: ScanRequest) -> OpenScan:
        """Plans a scan (files and row groups pruned by the filter) and opens a lazy reader."""

    async def next_batch(self, scan: OpenScan) -> pa.RecordBatch | None:
        """The next record batch of an open scan, or None at its end."""

    async def close_scan(self, scan: OpenScan) -> None:
        """Stops reading (the client went away or the limit was reached)."""

    async def list_tables(self, namespace: str) -> list[str]:
        """The table names of a namespace. Raises NotFound."""

    async def drop_table(self, namespace: str, name: str) -> None:
        """Drops a table from the catalog, leaving its files. Raises NotFound."""

    async def rename_table(
        self, namespace: str, name: str, new_namespace: str, new_name: str
    ) -> TableInfo:
        """Renames (and possibly moves) a table. Raises NotFound or AlreadyExists."""


class ObjectStorePort(Protocol):
    """What the core needs from object storage (shaped like pyiceberg's FileIO, but async)."""

    async def check(self) -> None:
        """Raises Unavailable if the store cannot be reached or the location is unusable."""

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Lists the objects whose URI starts with ``prefix``."""

    async def get(self, uri: str) -> bytes:
        """Reads one object. Raises NotFound if it does not exist."""

    async def put(self, uri: str, data: bytes) -> None:
        """Writes one object, replacing any previous one."""

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under ``prefix``; returns how many were deleted."""

    async def close(self) -> None:
        """Releases connections."""
