"""Namespaces and tables: validation, paging and purge on top of the Iceberg adapter."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder

from lakehouse.config import QuotaSettings
from lakehouse.core.paging import Page, paginate
from lakehouse.core.ports import CatalogPort, ObjectStorePort
from lakehouse.domain.buckets import S3_BUCKET_NAME
from lakehouse.domain.changes import (
    AddColumn,
    RemoveProperties,
    RenameColumn,
    SetProperties,
    TableChange,
)
from lakehouse.domain.errors import InvalidArgument, QuotaExceeded
from lakehouse.domain.names import check_column_name, check_identifier, check_property_key
from lakehouse.domain.table_properties import table_property_problem
from lakehouse.domain.tables import SnapshotInfo, TableInfo, snapshot_not_found
from lakehouse.metrics import QUOTA_REFUSALS

log = logging.getLogger(__name__)

MAX_PROPERTIES = 1000
MAX_PROPERTY_VALUE = 64 * 1024


@dataclass(frozen=True)
class NamespaceInfo:
    """A namespace and its properties."""

    name: str
    properties: dict[str, str]


@dataclass(frozen=True)
class PropertiesUpdate:
    """The outcome of a namespace property update."""

    namespace: NamespaceInfo
    updated: list[str]
    removed: list[str]
    missing: list[str]


_METADATA_SCHEMES = frozenset({"s3", "s3a", "s3n", "file"})


def _readable_location(location: str) -> bool:
    """Whether a location names an object store or disk the service can read."""
    try:
        parts = urlsplit(location)
    except ValueError:  # e.g. a malformed IPv6 host in s3://[...
        return False
    if parts.query or parts.fragment or "#" in location or "?" in location:
        # File systems drop them: file:///etc/passwd#.metadata.json read /etc/passwd.
        return False
    scheme = parts.scheme.lower()
    if scheme.startswith("s3") and (
        not S3_BUCKET_NAME.fullmatch(parts.netloc) or ".." in parts.netloc
    ):
        # No bucket is named that: a file system would look the name up as a host (seconds,
        # then UNAVAILABLE) for what is a typo or a probe (s3://../x.metadata.json).
        return False
    return scheme in _METADATA_SCHEMES or (not scheme and location.startswith("/"))


def check_properties(field: str, properties: dict[str, str]) -> dict[str, str]:
    """Checks client-supplied properties (count, key shape, value size).

    Raises:
        InvalidArgument: Too many properties, a bad key or an oversized value.
    """
    if len(properties) > MAX_PROPERTIES:
        raise InvalidArgument.field(field, f"at most {MAX_PROPERTIES} properties are allowed")
    for key, value in properties.items():
        check_property_key(f"{field}[{key[:64]!r}]", key)
        if len(value) > MAX_PROPERTY_VALUE:
            raise InvalidArgument.field(
                f"{field}[{key[:64]!r}]", f"value is longer than {MAX_PROPERTY_VALUE} characters"
            )
    return properties


class Tables:
    """The table-management use cases behind TableService.

    Args:
        catalog: The Iceberg catalog.
        store: The object store (for purges).
        quotas: The namespace and table quotas; None means the defaults.
    """

    def __init__(
        self, catalog: CatalogPort, store: ObjectStorePort, quotas: QuotaSettings | None = None
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._quotas = quotas or QuotaSettings()

    # --- quotas -----------------------------------------------------------------------
    #
    # Counted in the catalog, so every replica sees the same count. The count and the create
    # are two steps: creates racing for the last free slot (on one replica or several) may
    # all pass, so a quota can be overshot by the number of such races, never by more.

    async def _check_namespace_quota(self) -> None:
        """Refuses a new namespace when the catalog holds ``max_namespaces`` already.

        Raises:
            QuotaExceeded: Reason ``NAMESPACE_QUOTA_EXCEEDED``, the limit in its metadata.
        """
        limit = self._quotas.max_namespaces
        if not limit:
            return
        count = len(await self._catalog.list_namespaces())
        if count >= limit:
            QUOTA_REFUSALS.labels("namespaces").inc()
            raise QuotaExceeded(
                f"the catalog holds {count} namespaces, the quota is {limit}: delete one "
                "or ask an operator to raise quotas.max_namespaces",
                reason="NAMESPACE_QUOTA_EXCEEDED",
                metadata={"limit": str(limit)},
            )

    async def _check_table_quota(self, namespace: str) -> None:
        await check_table_quota(self._catalog.list_tables, namespace, self._quotas)

    # --- namespaces -------------------------------------------------------------------

    async def create_namespace(self, name: str, properties: dict[str, str]) -> NamespaceInfo:
        """Creates a namespace.

        Raises:
            InvalidArgument: Bad name or properties.
            AlreadyExists: The namespace exists.
            QuotaExceeded: The catalog holds ``quotas.max_namespaces`` namespaces.
        """
        check_identifier("name", name)
        check_properties("properties", properties)
        await self._check_namespace_quota()
        props = await self._catalog.create_namespace(name, properties)
        return NamespaceInfo(name, props)

    async def get_namespace(self, name: str) -> NamespaceInfo:
        """Gets a namespace.

        Raises:
            InvalidArgument: Bad name.
            NotFound: No such namespace.
        """
        check_identifier("name", name)
        return NamespaceInfo(name, await self._catalog.namespace_properties(name))

    async def list_namespaces(self, page_size: int, page_token: str) -> Page[NamespaceInfo]:
        """One page of namespaces in name order.

        Raises:
            InvalidArgument: Bad page size or token.
        """
        names = await self._catalog.list_namespaces()
        page = paginate(
            names, key=lambda n: n, scope="namespaces", requested_size=page_size, token=page_token
        )
        with_props = await self._catalog.namespaces_with_properties(page.items)
        return Page([NamespaceInfo(n, p) for n, p in with_props], page.next_page_token)

    async def update_namespace_properties(
        self, name: str, updates: dict[str, str], removals: list[str]
    ) -> PropertiesUpdate:
        """Sets and removes namespace properties.

        Raises:
            InvalidArgument: Bad name, keys, or a key both set and removed.
            NotFound: No such namespace.
        """
        check_identifier("name", name)
        check_properties("updates", updates)
        for i, key in enumerate(removals):
            check_property_key(f"removals[{i}]", key)
        both = sorted(set(updates) & set(removals))
        if both:
            raise InvalidArgument.field(
                "removals", f"keys {both} are both updated and removed; pick one"
            )
        props, updated, removed, missing = await self._catalog.update_namespace_properties(
            name, set(removals), updates
        )
        return PropertiesUpdate(NamespaceInfo(name, props), updated, removed, missing)

    async def delete_namespace(self, name: str) -> None:
        """Deletes an empty namespace.

        Raises:
            InvalidArgument: Bad name.
            NotFound: No such namespace.
            FailedPrecondition: The namespace holds tables (reason NAMESPACE_NOT_EMPTY).
        """
        check_identifier("name", name)
        await self._catalog.drop_namespace(name)

    # --- tables -----------------------------------------------------------------------

    async def create_table(
        self,
        namespace: str,
        name: str,
        schema: Schema,
        partition_spec: PartitionSpec,
        sort_order: SortOrder,
        properties: dict[str, str],
    ) -> TableInfo:
        """Creates a table from an already validated schema, spec and order.

        Raises:
            InvalidArgument: Bad names or properties.
            NotFound: No such namespace.
            AlreadyExists: The table exists.
            QuotaExceeded: The namespace holds ``quotas.max_tables_per_namespace`` tables.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        check_properties("properties", properties)
        problem = table_property_problem(properties, creating=True)
        if problem is not None:
            key, description = problem
            raise InvalidArgument.field(
                f"properties[{key[:64]!r}]", description, reason="INVALID_PROPERTY"
            )
        await self._check_table_quota(namespace)
        return await self._catalog.create_table(
            namespace, name, schema, partition_spec, sort_order, properties
        )

    async def get_table(self, namespace: str, name: str, *, max_age: float = 0.0) -> TableInfo:
        """Gets a table.

        Args:
            namespace: The table's namespace.
            name: The table name.
            max_age: Accept a cached copy validated this many seconds ago (for callers that
                only need the schema and are checked again at commit).

        Raises:
            InvalidArgument: Bad names.
            NotFound: No such table.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        return await self._catalog.load_table(namespace, name, max_age=max_age)

    async def list_tables(self, namespace: str, page_size: int, page_token: str) -> Page[str]:
        """One page of table names of a namespace, in name order.

        Raises:
            InvalidArgument: Bad namespace, page size or token.
            NotFound: No such namespace.
        """
        check_identifier("namespace", namespace)
        names = await self._catalog.list_tables(namespace)
        return paginate(
            names,
            key=lambda n: n,
            scope=f"tables:{namespace}",
            requested_size=page_size,
            token=page_token,
        )

    async def delete_table(self, namespace: str, name: str, purge: bool) -> int:
        """Drops a table; with ``purge`` also deletes every object under its location.

        The catalog entry goes first: once it is gone no reader can reach the files, so a
        purge interrupted halfway leaves orphans (removable later) but never a broken table.

        Returns:
            The number of objects deleted (0 without purge).

        Raises:
            InvalidArgument: Bad names.
            NotFound: No such table.
            Unavailable: The object store failed during purge (the table is already dropped).

        Purge deletes only under a table location strictly inside the warehouse; the files of
        a table elsewhere (registered before that was checked) are left, and logged.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        info = await self._catalog.load_table(namespace, name) if purge else None
        await self._catalog.drop_table(namespace, name)
        if info is None:
            return 0
        if not self._catalog.owns_location(info.location):
            # A table registered before RegisterTable checked where its files are: its folder
            # may be another system's. The catalog entry is gone; the files are left.
            log.warning(
                "purge left the files of a table whose location is outside the warehouse",
                extra={"namespace": namespace, "table": name},
            )
            return 0
        prefix = info.location.rstrip("/") + "/"
        deleted = await self._store.delete_prefix(prefix)
        log.info(
            "purged table files",
            extra={"namespace": namespace, "table": name, "objects_deleted": deleted},
        )
        return deleted

    async def rename_table(
        self, namespace: str, name: str, new_namespace: str, new_name: str
    ) -> TableInfo:
        """Renames a table, optionally into another namespace.

        Raises:
            InvalidArgument: Bad names, or the new name equals the old one.
            NotFound: No such table or target namespace.
            AlreadyExists: The target name is taken.
            QuotaExceeded: The target namespace is another one and is full.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        target_ns = new_namespace or namespace
        check_identifier("new_namespace", target_ns)
        check_identifier("new_table", new_name)
        if (target_ns, new_name) == (namespace, name):
            raise InvalidArgument.field("new_table", "is the table's current name")
        if target_ns != namespace:  # a move adds a table to the target namespace
            await self._check_table_quota(target_ns)
        return await self._catalog.rename_table(namespace, name, target_ns, new_name)

    async def register_table(self, namespace: str, name: str, metadata_location: str) -> TableInfo:
        """Adds an existing Iceberg table to the catalog from its metadata file.

        Raises:
            InvalidArgument: Bad names or an empty or non-JSON metadata location.
            NotFound: No such namespace, or no metadata file there.
            AlreadyExists: The name is taken.
            QuotaExceeded: The namespace holds ``quotas.max_tables_per_namespace`` tables.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        if not metadata_location:
            raise InvalidArgument.field("metadata_location", "is required")
        if not metadata_location.endswith(".metadata.json") or any(
            ord(c) < 32 for c in metadata_location
        ):
            raise InvalidArgument.field(
                "metadata_location", "must be the location of a *.metadata.json file"
            )
        if not _readable_location(metadata_location):
            # pyiceberg would guess a file system for other schemes (http, gs, ...) and fail
            # with whatever that one raises; the service only has S3 credentials and disks.
            raise InvalidArgument.field(
                "metadata_location",
                "must be an s3://bucket/ or file:// location or an absolute path, without ? or #",
            )
        await self._check_table_quota(namespace)
        return await self._catalog.register_table(namespace, name, metadata_location)

    async def update_table(
        self, namespace: str, name: str, changes: list[TableChange], expected_etag: str
    ) -> TableInfo:
        """Applies changes atomically.

        Raises:
            InvalidArgument: Bad names, no changes, a malformed or incompatible change.
            NotFound: No such table.
            Conflict: A stale etag (reason ETAG_MISMATCH) or a concurrent commit.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        if not changes:
            raise InvalidArgument.field("changes", "at least one change is required")
        for i, change in enumerate(changes):
            _check_change(f"changes[{i}]", change)
        return await self._catalog.update_table(namespace, name, changes, expected_etag)

    async def list_snapshots(
        self, namespace: str, name: str, page_size: int, page_token: str
    ) -> Page[SnapshotInfo]:
        """One page of a table's snapshots, newest first.

        Raises:
            InvalidArgument: Bad names, page size or token.
            NotFound: No such table.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        snapshots = await self._catalog.list_snapshots(namespace, name)
        return paginate(
            snapshots,
            key=_newest_first,
            scope=f"snapshots:{namespace}.{name}",
            requested_size=page_size,
            token=page_token,
        )

    async def get_snapshot(self, namespace: str, name: str, snapshot_id: int) -> SnapshotInfo:
        """One snapshot of a table.

        Raises:
            InvalidArgument: Bad names.
            NotFound: No such table or snapshot (reason SNAPSHOT_NOT_FOUND).
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        for snapshot in await self._catalog.list_snapshots(namespace, name):
            if snapshot.snapshot_id == snapshot_id:
                return snapshot
        raise snapshot_not_found(namespace, name, str(snapshot_id))

    async def rollback_table(
        self,
        namespace: str,
        name: str,
        *,
        snapshot_id: int | None,
        as_of_ms: int | None,
        expected_etag: str,
    ) -> TableInfo:
        """Moves the table's current snapshot back; data files stay.

        Raises:
            InvalidArgument: Bad names, no target, or a snapshot that is not an ancestor.
            NotFound: No such table or snapshot.
            Conflict: A stale etag or a concurrent commit.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", name)
        if (snapshot_id is None) == (as_of_ms is None):
            raise InvalidArgument.field("target", "set exactly one of snapshot_id or as_of_time")
        return await self._catalog.rollback(
            namespace, name, snapshot_id=snapshot_id, as_of_ms=as_of_ms, expected_etag=expected_etag
        )


# Keys that sort snapshots newest first under plain string order (the paging key).
_MAX_MS = 10**15


def _newest_first(snapshot: SnapshotInfo) -> str:
    return (
        f"{_MAX_MS - snapshot.timestamp_ms:016d}:{_MAX_MS - snapshot.sequence_number:016d}:"
        f"{snapshot.snapshot_id + 2**63:020d}"
    )


def _check_change(field: str, change: TableChange) -> None:
    """Validates what can be checked without the table: names and property keys."""
    if isinstance(change, AddColumn):
        check_column_name(f"{field}.add_column.field.name", change.name)
    elif isinstance(change, RenameColumn):
        check_column_name(f"{field}.rename_column.new_name", change.new_name)
    elif isinstance(change, SetProperties):
        check_properties(f"{field}.set_properties.properties", change.properties)
    elif isinstance(change, RemoveProperties):
        for i, key in enumerate(change.keys):
            check_property_key(f"{field}.remove_properties.keys[{i}]", key)


async def check_table_quota(
    list_tables: Callable[[str], Awaitable[list[str]]], namespace: str, quotas: QuotaSettings
) -> None:
    """Refuses a new table in ``namespace`` when it holds ``max_tables_per_namespace``.

    Every path that creates a table calls it: CreateTable, RegisterTable, RenameTable into
    another namespace, and a SQL job's destination table.

    Raises:
        QuotaExceeded: Reason ``TABLE_QUOTA_EXCEEDED``, the limit and namespace in its
            metadata.
        NotFound: No such namespace.
    """
    limit = quotas.max_tables_per_namespace
    if not limit:
        return
    count = len(await list_tables(namespace))
    if count >= limit:
        QUOTA_REFUSALS.labels("tables").inc()
        raise QuotaExceeded(
            f"namespace {namespace!r} holds {count} tables, the quota is {limit}: delete "
            "one or ask an operator to raise quotas.max_tables_per_namespace",
            reason="TABLE_QUOTA_EXCEEDED",
            metadata={"limit": str(limit), "namespace": namespace},
        )
