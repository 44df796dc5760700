"""The Iceberg adapter: catalog and table operations over pyiceberg.

The catalog is chosen by configuration alone (SQL on SQLite or PostgreSQL, or REST). Every
pyiceberg call blocks, so each runs in the blocking pool; backend exceptions are translated
into domain errors right here, at the call site.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    ServiceUnavailableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table as IcebergTable
from pyiceberg.table.sorting import SortOrder
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError

from lakehouse.adapters.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.errors import (
    AlreadyExists,
    CommitStateUnknown,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LakehouseError,
    NotFound,
    Unavailable,
)

T = TypeVar("T")


@dataclass(frozen=True)
class TableStats:
    """Counts of the current snapshot, from its Iceberg summary."""

    row_count: int = 0
    file_count: int = 0
    total_bytes: int = 0
    snapshot_count: int = 0


@dataclass(frozen=True)
class TableInfo:
    """A table's metadata as the core and the servicers see it."""

    namespace: str
    name: str
    uuid: str
    schema: Schema
    partition_spec: PartitionSpec
    sort_order: SortOrder
    properties: dict[str, str]
    location: str
    metadata_location: str
    current_snapshot_id: int | None
    format_version: int
    created_ms: int
    updated_ms: int
    stats: TableStats = field(default_factory=TableStats)


def _summary_int(summary: Any, key: str) -> int:
    if summary is None:
        return 0
    try:
        return int(summary.get(key, 0) or 0)
    except (TypeError, ValueError):
        return 0


def table_info(namespace: str, name: str, table: IcebergTable) -> TableInfo:
    """Builds the domain view of a loaded pyiceberg table."""
    md = table.metadata
    snapshot = table.current_snapshot()
    summary = snapshot.summary if snapshot is not None else None
    created = min([e.timestamp_ms for e in md.metadata_log] + [md.last_updated_ms])
    return TableInfo(
        namespace=namespace,
        name=name,
        uuid=str(md.table_uuid),
        schema=table.schema(),
        partition_spec=table.spec(),
        sort_order=table.sort_order(),
        properties=dict(md.properties),
        location=md.location,
        metadata_location=table.metadata_location,
        current_snapshot_id=md.current_snapshot_id,
        format_version=int(md.format_version),
        created_ms=created,
        updated_ms=md.last_updated_ms,
        stats=TableStats(
            row_count=_summary_int(summary, "total-records"),
            file_count=_summary_int(summary, "total-data-files"),
            total_bytes=_summary_int(summary, "total-files-size"),
            snapshot_count=len(md.snapshots),
        ),
    )


@contextlib.contextmanager
def translate_errors(namespace: str = "", table: str = "") -> Iterator[None]:
    """Maps pyiceberg and database errors to domain errors (one map, used at every call)."""
    meta = {k: v for k, v in (("namespace", namespace), ("table", table)) if v}
    qualified = f"{namespace}.{table}" if table else namespace
    try:
        yield
    except LakehouseError:
        raise
    except NoSuchTableError as exc:
        raise NotFound(
            f"table {qualified} does not exist", reason="TABLE_NOT_FOUND", metadata=meta
        ) from exc
    except NoSuchNamespaceError as exc:
        raise NotFound(
            f"namespace {namespace} does not exist", reason="NAMESPACE_NOT_FOUND", metadata=meta
        ) from exc
    except TableAlreadyExistsError as exc:
        raise AlreadyExists(
            f"table {qualified} already exists", reason="TABLE_ALREADY_EXISTS", metadata=meta
        ) from exc
    except NamespaceAlreadyExistsError as exc:
        raise AlreadyExists(
            f"namespace {namespace} already exists",
            reason="NAMESPACE_ALREADY_EXISTS",
            metadata=meta,
        ) from exc
    except NamespaceNotEmptyError as exc:
        raise FailedPrecondition(
            f"namespace {namespace} still holds tables; delete them first",
            reason="NAMESPACE_NOT_EMPTY",
            metadata=meta,
        ) from exc
    except CommitFailedException as exc:
        raise Conflict(f"table {qualified} was changed concurrently; retry", metadata=meta) from exc
    except CommitStateUnknownException as exc:
        raise CommitStateUnknown(
            f"the commit to {qualified} may or may not have happened", metadata=meta
        ) from exc
    except (OperationalError, SqlTimeoutError, ServiceUnavailableError) as exc:
        raise Unavailable(
            "catalog unavailable: " + _brief(exc), reason="CATALOG_UNAVAILABLE"
        ) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(
                "catalog unavailable: " + _brief(exc), reason="CATALOG_UNAVAILABLE"
            ) from exc
        raise
    except (ConnectionError, TimeoutError) as exc:
        raise Unavailable(
            "backing service unavailable: " + _brief(exc), reason="BACKEND_UNAVAILABLE"
        ) from exc


# pyiceberg's SqlCatalog stores this marker property on every namespace it creates.
_INTERNAL_NAMESPACE_PROPERTIES = frozenset({"exists"})


def _public(properties: Any) -> dict[str, str]:
    return {k: v for k, v in dict(properties).items() if k not in _INTERNAL_NAMESPACE_PROPERTIES}


def _brief(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def catalog_properties(settings: Settings) -> dict[str, str]:
    """The pyiceberg catalog properties for the configured catalog and object store."""
    cat = settings.catalog
    props: dict[str, str] = {"type": cat.type, "uri": settings.catalog_uri}
    props["warehouse"] = settings.warehouse
    if cat.type == "sql":
        props["init_catalog_tables"] = "true"
    if cat.credential is not None:
        props["credential"] = cat.credential.get_secret_value()
    if cat.token is not None:
        props["token"] = cat.token.get_secret_value()
    s3 = settings.s3
    if s3.endpoint_url:
        props["s3.endpoint"] = s3.endpoint_url
    props["s3.region"] = s3.region
    if s3.access_key_id is not None:
        props["s3.access-key-id"] = s3.access_key_id.get_secret_value()
    if s3.secret_access_key is not None:
        props["s3.secret-access-key"] = s3.secret_access_key.get_secret_value()
    props["s3.force-virtual-addressing"] = "false" if s3.use_path_style else "true"
    props["s3.connect-timeout"] = str(s3.connect_timeout_seconds)
    return props


class IcebergCatalog:
    """Namespaces and tables in the configured Iceberg catalog.

    Every method runs its pyiceberg work in the blocking pool and raises domain errors
    (``NotFound``, ``AlreadyExists``, ``FailedPrecondition``, ``Conflict``, ``Unavailable``).
    """

    def __init__(self, settings: Settings, pool: BlockingPool) -> None:
        self._settings = settings
        self._pool = pool
        self._catalog: Catalog | None = None
        self._catalog_lock = threading.Lock()

    def _load(self) -> Catalog:
        with self._catalog_lock:  # the first calls arrive together from several threads
            if self._catalog is None:
                if self._settings.catalog.type == "sql" and self._settings.catalog.uri is None:
                    self._settings.data_dir.mkdir(parents=True, exist_ok=True)
                self._catalog = load_catalog(
                    self._settings.catalog.name, **catalog_properties(self._settings)
                )
            return self._catalog

    async def _call(self, fn: Callable[[Catalog], T], namespace: str = "", table: str = "") -> T:
        def work() -> T:
            with translate_errors(namespace, table):
                return fn(self._load())

        return await self._pool.run(work)

    async def check(self) -> None:
        """Raises Unavailable unless the catalog answers a cheap query."""
        await self._call(lambda c: c.list_namespaces())

    @staticmethod
    def _refuse_internal_keys(field: str, keys: Iterable[str]) -> None:
        reserved = sorted(set(keys) & _INTERNAL_NAMESPACE_PROPERTIES)
        if reserved:
            raise InvalidArgument.field(
                field,
                f"property keys {reserved} are reserved by the catalog",
                reason="INVALID_PROPERTY",
            )

    async def create_namespace(self, name: str, properties: dict[str, str]) -> dict[str, str]:
        """Creates a namespace; returns its properties.

        Raises:
            AlreadyExists: The namespace exists.
            InvalidArgument: A property key is reserved by the catalog.
        """
        self._refuse_internal_keys("properties", properties)

        def work(c: Catalog) -> dict[str, str]:
            c.create_namespace(name, properties)
            return _public(c.load_namespace_properties(name))

        return await self._call(work, name)

    async def namespace_properties(self, name: str) -> dict[str, str]:
        """The properties of a namespace. Raises NotFound."""
        return await self._call(lambda c: _public(c.load_namespace_properties(name)), name)

    async def list_namespaces(self) -> list[str]:
        """All top-level namespace names."""
        return await self._call(lambda c: [".".join(ns) for ns in c.list_namespaces()])

    async def namespaces_with_properties(
        self, names: list[str]
    ) -> list[tuple[str, dict[str, str]]]:
        """The properties of several namespaces, in one trip to the pool."""

        def work(c: Catalog) -> list[tuple[str, dict[str, str]]]:
            result = []
            for n in names:
                with contextlib.suppress(NoSuchNamespaceError):  # deleted meanwhile
                    result.append((n, _public(c.load_namespace_properties(n))))
            return result

        return await self._call(work)

    async def update_namespace_properties(
        self, name: str, removals: set[str], updates: dict[str, str]
    ) -> tuple[dict[str, str], list[str], list[str], list[str]]:
        """Updates properties; returns (properties, updated, removed, missing).

        Raises:
            NotFound: No such namespace.
            InvalidArgument: A property key is reserved by the catalog.
        """
        self._refuse_internal_keys("updates", updates)
        self._refuse_internal_keys("removals", removals)

        def work(c: Catalog) -> tuple[dict[str, str], list[str], list[str], list[str]]:
            summary = c.update_namespace_properties(name, removals, updates)
            props = _public(c.load_namespace_properties(name))
            return props, list(summary.updated), list(summary.removed), list(summary.missing)

        return await self._call(work, name)

    async def drop_namespace(self, name: str) -> None:
        """Drops an empty namespace. Raises NotFound or FailedPrecondition."""
        await self._call(lambda c: c.drop_namespace(name), name)

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

        def work(c: Catalog) -> TableInfo:
            # SqlCatalog creates tables in a namespace nobody created; check first.
            c.load_namespace_properties(namespace)
            table = c.create_table(
                (namespace, name),
                schema=schema,
                partition_spec=partition_spec,
                sort_order=sort_order,
                properties=properties,
            )
            return table_info(namespace, name, table)

        return await self._call(work, namespace, name)

    async def load_table(self, namespace: str, name: str) -> TableInfo:
        """Loads a table's metadata. Raises NotFound."""
        return await self._call(
            lambda c: table_info(namespace, name, c.load_table((namespace, name))), namespace, name
        )

    async def list_tables(self, namespace: str) -> list[str]:
        """The table names of a namespace. Raises NotFound."""

        def work(c: Catalog) -> list[str]:
            c.load_namespace_properties(namespace)
            return [ident[-1] for ident in c.list_tables(namespace)]

        return await self._call(work, namespace)

    async def drop_table(self, namespace: str, name: str) -> None:
        """Drops a table from the catalog, leaving its files. Raises NotFound."""
        await self._call(lambda c: c.drop_table((namespace, name)), namespace, name)

    async def rename_table(
        self, namespace: str, name: str, new_namespace: str, new_name: str
    ) -> TableInfo:
        """Renames (and possibly moves) a table. Raises NotFound or AlreadyExists."""

        def work(c: Catalog) -> TableInfo:
            with translate_errors(new_namespace, new_name):
                c.load_namespace_properties(new_namespace)
                if c.table_exists((new_namespace, new_name)):
                    raise TableAlreadyExistsError(f"{new_namespace}.{new_name}")
            with translate_errors(namespace, name):
                c.load_table((namespace, name))  # NotFound names the source, not the target
            table = c.rename_table((namespace, name), (new_namespace, new_name))
            return table_info(new_namespace, new_name, table)

        return await self._call(work, namespace, name)

    async def close(self) -> None:
        """Releases the catalog's database connections."""
        catalog = self._catalog
        self._catalog = None
        engine = getattr(catalog, "engine", None)
        if engine is not None:
            await self._pool.run(engine.dispose)
