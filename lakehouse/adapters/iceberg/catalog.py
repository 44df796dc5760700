"""The Iceberg adapter: catalog and table operations over pyiceberg.

The catalog is chosen by configuration alone (SQL on SQLite or PostgreSQL, or REST). Every
pyiceberg call blocks, so each runs in the blocking pool; backend exceptions are translated
into domain errors right here, at the call site.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.exceptions import ValidationError as IcebergValidationError
from pyiceberg.expressions import BooleanExpression
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.serializers import FromInputFile
from pyiceberg.table import Table as IcebergTable
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.sorting import SortOrder
from pyiceberg.table.update import (
    AssertCurrentSchemaId,
    AssertDefaultSortOrderId,
    AssertDefaultSpecId,
    AssertRefSnapshotId,
    TableRequirement,
)
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from lakehouse.adapters import postgres
from lakehouse.adapters.iceberg.cache import fill_lazy_caches
from lakehouse.adapters.iceberg.changes_scan import (
    changelog_batches,
    changelog_schema,
    lineage_after,
    only_appends,
    snapshots_between,
)
from lakehouse.adapters.iceberg.conversions import (
    INTERNAL_NAMESPACE_PROPERTIES,
    public_namespace_properties,
    snapshot_info,
    table_info,
)
from lakehouse.adapters.iceberg.errors import (
    brief,
    metadata_errors,
    telling_a_missing_namespace,
    translate_errors,
)
from lakehouse.adapters.iceberg.fast_paths import (
    LOCATION_QUERY,
    RAW_LOCATION_QUERY,
    sql_namespace_properties,
)
from lakehouse.adapters.iceberg.health import file_stats
from lakehouse.adapters.iceberg.ingest import (
    planned_append,
    read_state,
    stage_append,
    writer_last_commit,
)
from lakehouse.adapters.iceberg.locations import canonical_location, within_location
from lakehouse.adapters.iceberg.loop_locations import LoopLocations, loop_locations
from lakehouse.adapters.iceberg.planned_changes import ChangeCommitter, planned_delete
from lakehouse.adapters.iceberg.readahead import ReadBudget
from lakehouse.adapters.iceberg.references import delete_all
from lakehouse.adapters.iceberg.registration import (
    refuse_files_outside,
    refuse_outside,
    refuse_shared_location,
    refuse_unusable_properties,
)
from lakehouse.adapters.iceberg.scan import lazy_batch_reader, small_offsets
from lakehouse.adapters.iceberg.session_plans import (
    SessionPlanner,
    arrow_schema,
    data_scan,
    pinned_snapshot,
)
from lakehouse.adapters.iceberg.snapshot_refs import (
    create_ref,
    delete_ref,
    list_refs,
    publish_branch,
    write_head,
)
from lakehouse.adapters.iceberg.updates import apply_changes
from lakehouse.adapters.pyiceberg_private.commits import add_commit_requirements, cheap_commits
from lakehouse.adapters.pyiceberg_private.io import confine_catalog_io, service_file_io
from lakehouse.adapters.resilience import (
    CATALOG,
    OBJECT_STORE,
    BreakerState,
    CircuitBreaker,
    Resilience,
)
from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.deadlines import check_deadline
from lakehouse.domain.changes import TableChange
from lakehouse.domain.errors import (
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from lakehouse.domain.ingest import (
    AppendOutcome,
    AppendPlan,
    IngestState,
    RequestIdLedger,
    StagedAppend,
)
from lakehouse.domain.read_sessions import StreamShare
from lakehouse.domain.refs import MAIN, RefInfo, RefKind
from lakehouse.domain.row_changes import DeleteOutcome, RowChange
from lakehouse.domain.table_health import FileStats
from lakehouse.domain.tables import (
    OpenScan,
    PlannedRead,
    ScanRequest,
    SnapshotInfo,
    TableInfo,
    snapshot_not_found,
)
from lakehouse.memory import release_free_memory

T = TypeVar("T")
#: The heap is given back to the system after an ingest commit at most this often.
RELEASE_MEMORY_EVERY_SECONDS = 1.0


# pyiceberg's SqlCatalog stores this marker property on every namespace it creates.
#: Namespace properties clients may not set: pyiceberg creates the namespace's tables under
#: ``location``, so a client could have the service write files anywhere it may write (found
#: by the fuzz test: a relative location crashed remove_orphan_files). Operators set it in
#: the catalog itself; it stays visible and removable through the API.
_OPERATOR_NAMESPACE_PROPERTIES = frozenset({"location"})


#: Longest a catalog statement may run on the server: each is a small lookup or update, so
#: one that runs longer is stuck (a lock held by a dead session) and holds a pool thread.
_CATALOG_STATEMENT_TIMEOUT_MS = 30_000


def _with_connection_settings(uri: str) -> str:
    """The catalog URL with the fail-fast libpq settings it does not set itself."""
    url = make_url(uri)
    if not postgres.is_libpq(url):
        return uri
    missing = postgres.missing_settings(url, statement_timeout_ms=_CATALOG_STATEMENT_TIMEOUT_MS)
    return url.update_query_dict(missing).render_as_string(hide_password=False)


def catalog_properties(settings: Settings) -> dict[str, str]:
    """The pyiceberg catalog properties for the configured catalog and object store."""
    cat = settings.catalog
    uri = settings.catalog_uri
    if cat.type == "sql":
        uri = _with_connection_settings(uri)
    props: dict[str, str] = {"type": cat.type, "uri": uri}
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


assert IcebergTables.__tablename__ == "iceberg_tables"


class IcebergCatalog:
    """Namespaces and tables in the configured Iceberg catalog.

    Every method runs its pyiceberg work in the blocking pool and raises domain errors
    (``NotFound``, ``AlreadyExists``, ``FailedPrecondition``, ``Conflict``, ``Unavailable``).
    Calls go through the circuit breakers of the catalog and the object store (pyiceberg
    reaches both): an open one fails the call at once with ``CircuitOpen``. Read-only calls
    are retried on transient failures; writes and commits never are.

    Args:
        settings: The service settings.
        pool: The blocking pool that runs pyiceberg.
        resilience: The process's breakers; a private set when None (tests, tools).
    """

    def __init__(
        self, settings: Settings, pool: BlockingPool, resilience: Resilience | None = None
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._resilience = resilience or Resilience(settings.resilience)
        self._catalog_breaker = self._resilience.breaker(CATALOG)
        self._store_breaker = self._resilience.breaker(OBJECT_STORE)
        self._catalog: Catalog | None = None
        self._catalog_lock = threading.Lock()
        # (namespace, table) -> loaded table and its domain view, revalidated by metadata
        # location on every use
        self._tables: OrderedDict[tuple[str, str], tuple[IcebergTable, TableInfo]] = OrderedDict()
        self._tables_lock = threading.Lock()
        self._cache_size = settings.table_cache_size
        self._validated: dict[tuple[str, str], float] = {}
        # Revalidations under way, and the next one for calls that came in after it started.
        self._loading: dict[tuple[str, str], asyncio.Future[TableInfo]] = {}
        self._next_load: dict[tuple[str, str], asyncio.Future[TableInfo]] = {}
        # SQLite only: revalidations on the event loop, without the thread hop.
        self._loop_locations: LoopLocations | None = (
            loop_locations(settings.catalog_uri, settings.catalog.name)
            if settings.catalog.type == "sql"
            else None
        )
        # Decoded ReadRows batches queued ahead of all streams together (see readahead.py).
        self._read_budget = ReadBudget(settings.read_buffer_bytes)
        self._sessions = SessionPlanner()

    def _load(self) -> Catalog:
        with self._catalog_lock:  # the first calls arrive together from several threads
            if self._catalog is None:
                if self._settings.catalog.type == "sql" and self._settings.catalog.uri is None:
                    self._settings.data_dir.mkdir(parents=True, exist_ok=True)
                self._catalog = cheap_commits(
                    confine_catalog_io(
                        load_catalog(
                            self._settings.catalog.name, **catalog_properties(self._settings)
                        )
                    )
                )
            return self._catalog

    def _work(self, fn: Callable[[Catalog], T], namespace: str, table: str) -> Callable[[], T]:
        """``fn`` on the catalog, with its errors translated, as a pool thread runs it."""

        def work() -> T:
            # Queued behind a busy pool, the call may start after its caller gave up.
            check_deadline(CATALOG)
            with translate_errors(namespace, table):
                catalog = self._load()
                with telling_a_missing_namespace(catalog, namespace, table):
                    return fn(catalog)

        return work

    def _breakers(self, files: bool) -> tuple[CircuitBreaker, ...]:
        return (self._catalog_breaker, self._store_breaker) if files else (self._catalog_breaker,)

    async def _call(
        self,
        fn: Callable[[Catalog], T],
        namespace: str = "",
        table: str = "",
        *,
        retry: bool = False,
        files: bool = True,
    ) -> T:
        """Runs ``fn`` with the catalog in the pool, behind the breakers.

        Args:
            fn: The pyiceberg work.
            namespace: Named in NotFound and similar errors.
            table: Named in NotFound and similar errors.
            retry: ``fn`` changes nothing: attempt it again after a transient failure.
            files: ``fn`` reads or writes files (metadata, manifests, data), so the object
                store's breaker applies too; catalog-only calls keep working while the object
                store is down. A failure of either is charged to the one that failed.
        """
        work = self._work(fn, namespace, table)
        return await self._resilience.call(
            lambda: self._pool.run(work), uses=self._breakers(files), retry=retry
        )

    async def run_on_catalog(
        self,
        fn: Callable[[Catalog], T],
        namespace: str = "",
        table: str = "",
        *,
        pool: BlockingPool,
    ) -> T:
        """Runs ``fn`` with the pyiceberg catalog in ``pool``, translating its errors.

        For long work on pyiceberg tables (jobs) that must not occupy the serving pool. It
        goes through the breakers but is not retried here: jobs have attempts of their own.
        """
        work = self._work(fn, namespace, table)
        return await self._resilience.call(
            lambda: pool.run(work), uses=self._breakers(True), retry=False
        )

    async def check(self) -> None:
        """Raises Unavailable unless the catalog answers a cheap query.

        The health check: it bypasses the breaker, which it is meant to close once the
        catalog answers again (see ``lakehouse.server.health``).
        """
        await self._pool.run(self._work(lambda c: c.list_namespaces(), "", ""))

    @staticmethod
    def _refuse_operator_keys(field: str, keys: Iterable[str]) -> None:
        taken = sorted(set(keys) & _OPERATOR_NAMESPACE_PROPERTIES)
        if taken:
            raise InvalidArgument.field(
                field,
                f"property keys {taken} choose where the namespace's tables are stored; "
                "only an operator sets them, in the catalog",
                reason="INVALID_PROPERTY",
            )

    @staticmethod
    def _refuse_internal_keys(field: str, keys: Iterable[str]) -> None:
        reserved = sorted(set(keys) & INTERNAL_NAMESPACE_PROPERTIES)
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
        self._refuse_operator_keys("properties", properties)

        def work(c: Catalog) -> dict[str, str]:
            try:
                c.create_namespace(name, properties)
            except IntegrityError as exc:
                # A concurrent create of the same name won the race (see translate_errors).
                raise NamespaceAlreadyExistsError(name) from exc
            return public_namespace_properties(c.load_namespace_properties(name))

        return await self._call(work, name, files=False)

    async def namespace_properties(self, name: str) -> dict[str, str]:
        """The properties of a namespace. Raises NotFound."""
        return await self._call(
            lambda c: public_namespace_properties(c.load_namespace_properties(name)),
            name,
            retry=True,
            files=False,
        )

    async def list_namespaces(self) -> list[str]:
        """All top-level namespace names."""
        return await self._call(
            lambda c: [".".join(ns) for ns in c.list_namespaces()], retry=True, files=False
        )

    async def namespaces_with_properties(
        self, names: list[str]
    ) -> list[tuple[str, dict[str, str]]]:
        """The properties of several namespaces, in one trip to the pool."""

        def work(c: Catalog) -> list[tuple[str, dict[str, str]]]:
            if isinstance(c, SqlCatalog):
                return sql_namespace_properties(c, names)
            result = []
            for n in names:
                with contextlib.suppress(NoSuchNamespaceError):  # deleted meanwhile
                    result.append((n, public_namespace_properties(c.load_namespace_properties(n))))
            return result

        return await self._call(work, retry=True, files=False)

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
        self._refuse_operator_keys("updates", updates)

        def work(c: Catalog) -> tuple[dict[str, str], list[str], list[str], list[str]]:
            summary = c.update_namespace_properties(name, removals, updates)
            props = public_namespace_properties(c.load_namespace_properties(name))
            return props, list(summary.updated), list(summary.removed), list(summary.missing)

        return await self._call(work, name, files=False)

    async def drop_namespace(self, name: str) -> None:
        """Drops an empty namespace. Raises NotFound or FailedPrecondition."""
        await self._call(lambda c: c.drop_namespace(name), name, files=False)

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
            namespace_properties = c.load_namespace_properties(namespace)
            table = c.create_table(
                (namespace, name),
                schema=schema,
                partition_spec=partition_spec,
                sort_order=sort_order,
                properties=properties,
                location=unique_table_location(c, namespace, name, namespace_properties),
            )
            return table_info(namespace, name, table)

        return await self._call(work, namespace, name)

    def _current_location(self, c: Catalog, namespace: str, name: str) -> str | None:
        """The table's metadata location from the catalog database alone (no file read).

        None when the catalog offers no such cheap lookup (REST).

        Raises:
            NoSuchTableError: The table does not exist.
        """
        if not isinstance(c, SqlCatalog):
            return None
        params = (c.name, namespace, name)
        sql = RAW_LOCATION_QUERY.get(c.engine.dialect.paramstyle)
        if sql is None:
            with c.engine.connect() as conn:
                location = conn.execute(
                    LOCATION_QUERY, {"catalog": c.name, "namespace": namespace, "name": name}
                ).scalar_one_or_none()
        else:
            # The DB-API directly: a third of the cost of a SQLAlchemy statement, and this
            # runs on every GetTable and ReadRows.
            dbapi = c.engine.dialect.loaded_dbapi
            try:
                raw = c.engine.raw_connection()
            except (DBAPIError, dbapi.OperationalError, dbapi.InterfaceError) as exc:
                # the pool does not wrap a failed connect in SQLAlchemy's exceptions
                raise Unavailable(
                    "catalog unavailable: " + brief(exc), reason="CATALOG_UNAVAILABLE"
                ) from exc
            try:
                cursor = raw.cursor()
                cursor.execute(sql, params)
                row = cursor.fetchone()
                cursor.close()
            except (dbapi.OperationalError, dbapi.InterfaceError) as exc:
                # Not wrapped by SQLAlchemy on this path: drop the dead connection ourselves.
                raw.invalidate()
                raise Unavailable(
                    "catalog unavailable: " + brief(exc), reason="CATALOG_UNAVAILABLE"
                ) from exc
            finally:
                raw.close()
            location = row[0] if row else None
        if location is None:
            raise NoSuchTableError(f"{namespace}.{name}")
        return str(location)

    def _cached(
        self, c: Catalog, namespace: str, name: str, max_age: float = 0.0
    ) -> tuple[IcebergTable, TableInfo]:
        """The table, from the cache when its metadata location is still current.

        Args:
            c: The catalog.
            namespace: The table's namespace.
            name: The table name.
            max_age: Seconds a cached entry is trusted without asking the catalog (0: always
                ask). For callers that only need the schema and check again at commit.
        """
        key = (namespace, name)
        if max_age > 0:
            with self._tables_lock:
                hit = self._tables.get(key)
                if hit is not None and time.monotonic() - self._validated.get(key, 0.0) < max_age:
                    return hit
        location = self._current_location(c, namespace, name)
        with self._tables_lock:
            cached = self._tables.get(key)
            if (
                cached is not None
                and location is not None
                and cached[0].metadata_location == location
            ):
                self._tables.move_to_end(key)
                self._validated[key] = time.monotonic()
                return cached
        return self._remember(namespace, name, c.load_table(key))

    def _table(self, c: Catalog, namespace: str, name: str) -> IcebergTable:
        return self._cached(c, namespace, name)[0]

    def _remember(
        self, namespace: str, name: str, table: IcebergTable
    ) -> tuple[IcebergTable, TableInfo]:
        fill_lazy_caches(table)
        entry = (table, table_info(namespace, name, table))
        with self._tables_lock:
            self._tables[(namespace, name)] = entry
            self._validated[(namespace, name)] = time.monotonic()
            self._tables.move_to_end((namespace, name))
            while len(self._tables) > self._cache_size:
                evicted, _ = self._tables.popitem(last=False)
                self._validated.pop(evicted, None)
        return entry

    def _forget(self, namespace: str, name: str) -> None:
        with self._tables_lock:
            self._tables.pop((namespace, name), None)
            self._validated.pop((namespace, name), None)

    async def load_table(self, namespace: str, name: str, *, max_age: float = 0.0) -> TableInfo:
        """Loads a table's metadata (cached, revalidated by metadata location). Raises NotFound.

        Args:
            namespace: The table's namespace.
            name: The table name.
            max_age: Trust a cache entry validated this recently (seconds) without a query.
        """
        answer = self._answered_on_loop((namespace, name), max_age)
        if answer is not None:
            return answer
        # Cache misses read the table's metadata file: a failing object store is charged for
        # it, but does not stop loads the catalog alone can serve (files=False).
        if max_age > 0:
            return await self._call(
                lambda c: self._cached(c, namespace, name, max_age)[1],
                namespace,
                name,
                retry=True,
                files=False,
            )

        def load(c: Catalog) -> TableInfo:
            return self._cached(c, namespace, name)[1]

        # Calls for one table share revalidations: under load, one catalog query and one
        # thread hop serve them all. Only a query that starts after a call came in may answer
        # it, though: one already under way may have read the metadata location before a
        # commit this caller saw acknowledged (here or on another replica). So a call that
        # finds a query under way waits for the next one, which every call arriving in the
        # meantime shares: at most two queries per table at a time, each answer fresh.
        key = (namespace, name)
        waiting = self._next_load.get(key)
        if waiting is not None:  # its query has not started: it answers this call too
            return await self._share_load(waiting, load, namespace, name)
        loop = asyncio.get_running_loop()
        current = self._loading.get(key)
        if current is None:
            return await self._lead_load(key, load, loop.create_future())
        waiting = self._next_load[key] = loop.create_future()
        try:
            await asyncio.wait((current,))  # its outcome is not this call's: only its end
        except BaseException:
            waiting.cancel()  # the calls that joined load on their own (see _share_load)
            raise
        finally:
            if self._next_load.get(key) is waiting:
                del self._next_load[key]
        return await self._lead_load(key, load, waiting)

    def _answered_on_loop(self, key: tuple[str, str], max_age: float) -> TableInfo | None:
        """The cached table when the event loop can tell at once that it is current; else None.

        Current means validated less than ``max_age`` ago, or (SQLite catalog) its metadata
        location is the one the catalog holds now, read by a query that starts now (see
        ``loop_locations``). Only with the catalog's breaker closed: otherwise the usual path
        decides, with its rejection or trial call. None sends the call the usual way.
        """
        if self._catalog_breaker.state is not BreakerState.CLOSED:
            return None
        with self._tables_lock:
            cached = self._tables.get(key)
            validated = self._validated.get(key, 0.0)
        if cached is None:
            return None
        if max_age > 0 and time.monotonic() - validated < max_age:
            return cached[1]
        probe = self._loop_locations
        if probe is None:
            return None
        if probe.current(*key) != cached[0].metadata_location:
            return None  # changed, gone or unreadable now: the usual path loads it
        with self._tables_lock:
            if self._tables.get(key) is cached:
                self._tables.move_to_end(key)
                self._validated[key] = time.monotonic()
        return cached[1]

    async def _lead_load(
        self,
        key: tuple[str, str],
        load: Callable[[Catalog], TableInfo],
        shared: asyncio.Future[TableInfo],
    ) -> TableInfo:
        """Revalidates a table with ``load``; the calls waiting on ``shared`` get the outcome."""
        owner = key not in self._loading
        if owner:
            self._loading[key] = shared
        try:
            info = await self._call(load, *key, retry=True, files=False)
        except BaseException as exc:
            shared.set_exception(exc)
            shared.exception()  # retrieved here, so an unshared failure is not reported twice
            raise
        else:
            shared.set_result(info)
            return info
        finally:
            if owner:
                del self._loading[key]

    async def _share_load(
        self,
        shared: asyncio.Future[TableInfo],
        load: Callable[[Catalog], TableInfo],
        namespace: str,
        name: str,
    ) -> TableInfo:
        """The outcome of a revalidation another call leads (its own if that call gave up)."""
        try:
            return await asyncio.shield(shared)
        except (asyncio.CancelledError, DeadlineExceeded):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this call itself is cancelled
            # The call that leads the load gave up (its client went away, or its own deadline
            # passed): that is no reason to fail this one; load without sharing.
        return await self._call(load, namespace, name, retry=True, files=False)

    async def register_table(self, namespace: str, name: str, metadata_location: str) -> TableInfo:
        """Adds an existing table to the catalog from its metadata file.

        Raises:
            NotFound: No such namespace, or no metadata file at that location.
            InvalidArgument: The file is not Iceberg table metadata; or it, the table's
                location or a file the table references lies outside the warehouse
                (``LOCATION_OUTSIDE_WAREHOUSE``: the service would read, and a purge delete,
                files it does not own), or the table has too many files to check
                (``TABLE_TOO_LARGE_TO_REGISTER``), or it carries a property value pyiceberg's
                writers cannot use (``INVALID_PROPERTY``).
            AlreadyExists: The name is taken.
            FailedPrecondition: The table's folder is, contains or lies in another table's
                (``LOCATION_IN_USE``): purging either would delete the other's files.
        """

        def work(c: Catalog) -> TableInfo:
            c.load_namespace_properties(namespace)
            # pyiceberg's SqlCatalog inserts the table's row first and reads the file after:
            # a missing or garbled file then failed the call yet left a table nobody can load
            # (found by the fuzz test). Read it first, and undo the row if the read after fails.
            # The warehouse, and the prefixes the operator allowed besides it.
            roots = (self._settings.warehouse, *self._settings.catalog.register_prefixes)
            # Checked before anything is read: the file itself may lie anywhere.
            refuse_outside(metadata_location, roots, "metadata file")
            with metadata_errors(metadata_location):
                io = service_file_io(c.properties, metadata_location)
                registered = FromInputFile.table_metadata(io.new_input(metadata_location))
                refuse_files_outside(registered, io, roots)
            refuse_unusable_properties(registered)
            if c.table_exists((namespace, name)):  # the name first: the likelier mistake
                raise TableAlreadyExistsError(f"{namespace}.{name}")
            refuse_shared_location(c, registered.location)
            try:
                table = c.register_table((namespace, name), metadata_location)
            except (OSError, ValueError, IcebergValidationError):
                with contextlib.suppress(Exception):
                    c.drop_table((namespace, name))
                with metadata_errors(metadata_location):
                    raise
            return self._remember(namespace, name, table)[1]

        return await self._call(work, namespace, name)

    def owns_location(self, location: str) -> bool:
        """Whether ``location`` lies strictly inside the warehouse (see ``within_location``).

        A REST catalog's warehouse is a name, not a location: its server places the tables,
        so any S3 or local location counts as the catalog's own.
        """
        warehouse = self._settings.warehouse
        if canonical_location(warehouse) is None:
            return canonical_location(location) is not None
        return within_location(location, warehouse)

    async def list_snapshots(self, namespace: str, name: str) -> list[SnapshotInfo]:
        """Every snapshot kept in the table's metadata. Raises NotFound."""
        return await self._call(
            lambda c: [snapshot_info(s) for s in self._table(c, namespace, name).snapshots()],
            namespace,
            name,
            retry=True,
            files=False,
        )

    async def current_snapshot(
        self, namespace: str, name: str, branch: str = MAIN
    ) -> SnapshotInfo | None:
        """The snapshot at the head of ``branch``; None for main of a table with no snapshot.

        Raises:
            NotFound: No such table, or no such branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` names a tag (NOT_A_BRANCH).
        """

        def work(c: Catalog) -> SnapshotInfo | None:
            head = write_head(self._table(c, namespace, name), branch)
            return None if head is None else snapshot_info(head)

        return await self._call(work, namespace, name, retry=True, files=False)

    async def update_table(
        self,
        namespace: str,
        name: str,
        changes: Sequence[TableChange],
        expected_etag: str,
    ) -> TableInfo:
        """Applies ``changes`` in one commit, optionally only if the table is unchanged.

        Raises:
            NotFound: No such table.
            InvalidArgument: A change is incompatible (nothing is applied).
            Conflict: ``expected_etag`` is stale (reason ETAG_MISMATCH), or a concurrent
                commit won.
        """

        def work(c: Catalog) -> TableInfo:
            table = self._table(c, namespace, name)
            tx = table.transaction()
            if expected_etag:
                _check_etag(table, expected_etag)
                add_commit_requirements(tx, *_unchanged_since(table))
            apply_changes(tx, changes)
            try:
                updated = tx.commit_transaction()
            except CommitFailedException as exc:
                self._forget(namespace, name)
                if expected_etag:
                    raise _etag_mismatch(namespace, name) from exc
                raise
            return self._remember(namespace, name, updated)[1]

        return await self._call(work, namespace, name)

    async def rollback(
        self,
        namespace: str,
        name: str,
        *,
        snapshot_id: int | None,
        as_of_ms: int | None,
        expected_etag: str,
    ) -> TableInfo:
        """Moves the current snapshot back to an ancestor (by id, or as of a time).

        Raises:
            NotFound: No such table, or no such snapshot (reason SNAPSHOT_NOT_FOUND).
            InvalidArgument: The snapshot is not an ancestor of the current one.
            Conflict: ``expected_etag`` is stale, or a concurrent commit won.
        """

        def work(c: Catalog) -> TableInfo:
            table = self._table(c, namespace, name)
            if expected_etag:
                _check_etag(table, expected_etag)
            manage = table.manage_snapshots()
            if snapshot_id is not None:
                if table.snapshot_by_id(snapshot_id) is None:
                    raise snapshot_not_found(namespace, name, str(snapshot_id))
                try:
                    manage.rollback_to_snapshot(snapshot_id)
                except ValueError as exc:
                    raise InvalidArgument.field(
                        "snapshot_id", "is not an ancestor of the current snapshot"
                    ) from exc
            else:
                assert as_of_ms is not None
                try:
                    manage.rollback_to_timestamp(as_of_ms + 1)  # "as of" includes that instant
                except ValueError as exc:
                    raise snapshot_not_found(namespace, name, "as old as the given time") from exc
            try:
                manage.commit()
            except CommitFailedException as exc:
                self._forget(namespace, name)
                if expected_etag:
                    raise _etag_mismatch(namespace, name) from exc
                raise
            return self._remember(namespace, name, c.load_table((namespace, name)))[1]

        return await self._call(work, namespace, name)

    async def snapshots_after(
        self, namespace: str, name: str, after: int | None
    ) -> list[SnapshotInfo]:
        """The snapshots of the current lineage after ``after`` (all when None), oldest first.

        One catalog query when nothing changed (the cached metadata is revalidated by its
        location), so polling it is cheap.

        Raises:
            NotFound: No such table (a watched table was dropped).
            FailedPrecondition: ``after`` expired (CURSOR_EXPIRED) or is off the lineage
                (CURSOR_NOT_IN_LINEAGE).
        """

        def work(c: Catalog) -> list[SnapshotInfo]:
            table = self._table(c, namespace, name)
            chain = lineage_after(table.metadata, after, f"{namespace}.{name}")
            return [snapshot_info(s) for s in chain]

        return await self._call(work, namespace, name, retry=True, files=False)

    async def file_stats(self, namespace: str, name: str) -> FileStats:
        """What the table's current metadata says of its files (see ``health.file_stats``).

        Raises:
            NotFound: No such table.
        """

        def work(c: Catalog) -> FileStats:
            return file_stats(self._table(c, namespace, name))

        return await self._call(work, namespace, name, retry=True)

    async def list_refs(self, namespace: str, name: str) -> list[RefInfo]:
        """The table's branches and tags, main first.

        Raises:
            NotFound: No such table.
        """

        def work(c: Catalog) -> list[RefInfo]:
            return list_refs(self._table(c, namespace, name))

        return await self._call(work, namespace, name, retry=True)

    async def create_ref(
        self,
        namespace: str,
        name: str,
        ref: str,
        kind: RefKind,
        snapshot_id: int | None,
        *,
        max_ref_age_ms: int | None = None,
        min_snapshots_to_keep: int | None = None,
        max_snapshot_age_ms: int | None = None,
    ) -> RefInfo:
        """Creates a branch or a tag (see ``snapshot_refs.create_ref``)."""

        def work(c: Catalog) -> RefInfo:
            try:
                return create_ref(
                    self._table(c, namespace, name),
                    ref,
                    kind,
                    snapshot_id,
                    max_ref_age_ms=max_ref_age_ms,
                    min_snapshots_to_keep=min_snapshots_to_keep,
                    max_snapshot_age_ms=max_snapshot_age_ms,
                )
            finally:
                self._forget(namespace, name)

        return await self._call(work, namespace, name)

    async def delete_ref(self, namespace: str, name: str, ref: str) -> None:
        """Deletes a branch or a tag (see ``snapshot_refs.delete_ref``)."""

        def work(c: Catalog) -> None:
            try:
                delete_ref(self._table(c, namespace, name), ref)
            finally:
                self._forget(namespace, name)

        await self._call(work, namespace, name)

    async def publish_branch(
        self, namespace: str, name: str, branch: str, expected_etag: str
    ) -> TableInfo:
        """Fast-forwards main to a branch's head (see ``snapshot_refs.publish_branch``).

        Raises:
            Conflict: A stale etag (ETAG_MISMATCH), not a fast-forward, or a concurrent commit.
        """

        def work(c: Catalog) -> TableInfo:
            table = self._table(c, namespace, name)
            if expected_etag:
                _check_etag(table, expected_etag)
            try:
                published = publish_branch(table, branch)
            except Conflict:
                self._forget(namespace, name)
                raise
            return self._remember(namespace, name, published)[1]

        return await self._call(work, namespace, name)

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
        change: RowChange | None = None,
        branch: str = MAIN_BRANCH,
    ) -> AppendOutcome:
        """Appends what ``plan`` decides on the freshest table state, in one commit.

        With a ``change`` (a write mode other than APPEND), the commit also removes the rows
        the change replaces, in the same snapshot. The commit goes to ``branch``'s head, and
        the plan sees the exactly-once state of that branch's lineage.

        ``plan`` runs in a worker thread, once per attempt: after a conflicting commit it is
        called again on fresh metadata, so offsets are always checked against what is
        committed. ``request_ids`` are looked up in ``ledger`` when the retained snapshots no
        longer cover the window, and committed ones are recorded there (in the same thread;
        a failure to record is returned in ``AppendOutcome.unrecorded``, not raised).

        Raises:
            NotFound: No such table, or branch (REF_NOT_FOUND).
            Conflict: Commits kept conflicting for ``max_attempts``.
            FailedPrecondition: The data no longer matches the table schema; or ``branch``
                is a tag (NOT_A_BRANCH).
            Unavailable: The catalog or the object store failed; nothing was committed.
        """

        def work(c: Catalog) -> AppendOutcome:
            committer = ChangeCommitter(change, branch) if change is not None else None
            try:
                outcome = planned_append(
                    lambda: self._table(c, namespace, name),
                    plan,
                    request_id_window_ms=request_id_window_ms,
                    max_attempts=max_attempts,
                    ledger=ledger,
                    request_ids=request_ids,
                    change=committer.commit if committer is not None else None,
                    branch=branch,
                )
                if outcome.table is not None:  # the next plan starts from the cache
                    self._remember(namespace, name, outcome.table)
                    # The Parquet write freed as much heap as the group's rows: give it back
                    # (at most once a second: commits of small groups come several a second).
                    release_free_memory(at_most_every=RELEASE_MEMORY_EVERY_SECONDS)
                if committer is not None:
                    committer.discard()
                return outcome
            except ValueError as exc:  # pyiceberg's schema compatibility check
                if committer is not None:
                    committer.discard()
                raise FailedPrecondition(
                    f"rows no longer match the schema of {namespace}.{name} (it changed "
                    f"meanwhile?): {brief(exc)}",
                    reason="SCHEMA_CHANGED",
                ) from exc
            except BaseException:
                if committer is not None:
                    committer.discard()  # only files no commit can have taken
                raise

        return await self._call(work, namespace, name)

    async def stage_append(
        self,
        namespace: str,
        name: str,
        plan: Callable[[IngestState], AppendPlan],
        *,
        request_id_window_ms: int,
        ledger: RequestIdLedger | None = None,
        request_ids: Collection[str] = (),
        branch: str = MAIN_BRANCH,
        max_age: float = 0.0,
    ) -> StagedAppend:
        """Plans on fresh committed state and writes the rows' data files, uncommitted.

        For a replica that hands its files to the table's commit owner; see
        ``lakehouse.adapters.iceberg.ingest.stage_append``. ``max_age``: plan on the table as
        cached if it was validated this recently (seconds); 0 asks the catalog.

        Raises:
            NotFound: No such table, or branch (REF_NOT_FOUND).
            FailedPrecondition: The rows no longer match the schema (SCHEMA_CHANGED); or
                ``branch`` is a tag (NOT_A_BRANCH).
            Unavailable: The catalog or the object store failed.
        """

        def work(c: Catalog) -> StagedAppend:
            try:
                return stage_append(
                    lambda: self._cached(c, namespace, name, max_age)[0],
                    plan,
                    request_id_window_ms=request_id_window_ms,
                    ledger=ledger,
                    request_ids=request_ids,
                    branch=branch,
                )
            except ValueError as exc:
                raise FailedPrecondition(
                    f"rows no longer match the schema of {namespace}.{name} (it changed "
                    f"meanwhile?): {brief(exc)}",
                    reason="SCHEMA_CHANGED",
                ) from exc

        return await self._call(work, namespace, name)

    async def discard_files(self, namespace: str, name: str, paths: Collection[str]) -> None:
        """Deletes staged data files no commit took (failures are left to orphan removal)."""
        if not paths:
            return

        def work(c: Catalog) -> None:
            delete_all(self._table(c, namespace, name).io, paths)

        await self._call(work, namespace, name)

    async def delete_rows(
        self,
        namespace: str,
        name: str,
        row_filter: BooleanExpression,
        *,
        request_id: str,
        expected_etag: str,
        request_id_window_ms: int,
        max_attempts: int,
        ledger: RequestIdLedger | None = None,
        branch: str = MAIN_BRANCH,
    ) -> DeleteOutcome:
        """Deletes the rows ``row_filter`` matches, in one snapshot on ``branch`` (copy-on-write).

        Raises:
            NotFound: No such table, or branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
            Conflict: A stale etag (ETAG_MISMATCH), or every attempt lost its commit race.
            Unavailable: The catalog, the object store or the request-id ledger failed;
                nothing was deleted.
        """

        def work(c: Catalog) -> DeleteOutcome:
            try:
                return planned_delete(
                    lambda: self._table(c, namespace, name),
                    row_filter,
                    request_id=request_id,
                    expected_etag=expected_etag,
                    ledger=ledger,
                    request_id_window_ms=request_id_window_ms,
                    max_attempts=max_attempts,
                    branch=branch,
                )
            finally:
                self._forget(namespace, name)

        return await self._call(work, namespace, name)

    async def writer_position(
        self,
        namespace: str,
        name: str,
        writer_id: str,
        *,
        request_id_window_ms: int,
        branch: str = MAIN_BRANCH,
    ) -> tuple[int, int | None, int] | None:
        """(next_offset, last snapshot id, last commit ms) of a writer on a branch, or None.

        Raises:
            NotFound: No such table, or branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
        """

        def work(c: Catalog) -> tuple[int, int | None, int] | None:
            table = self._table(c, namespace, name)
            write_head(table, branch)
            state = read_state(table, request_id_window_ms=request_id_window_ms, branch=branch)
            if writer_id not in state.writers:
                return None
            next_offset, commit_ms = state.writers[writer_id]
            snapshot = writer_last_commit(table, writer_id, branch)
            return next_offset, snapshot.snapshot_id if snapshot else None, commit_ms

        return await self._call(work, namespace, name, retry=True, files=False)

    async def open_scan(self, namespace: str, name: str, request: ScanRequest) -> OpenScan:
        """Plans a scan (files and row groups pruned by the filter) and opens a lazy reader.

        Raises:
            NotFound: No such table or snapshot.
            InvalidArgument: An unknown column.
        """

        def work(c: Catalog) -> OpenScan:
            table = self._table(c, namespace, name)
            if request.start_snapshot_id is not None:
                return self._open_changes(table, namespace, name, request)
            try:
                if request.share is not None:
                    return self._open_share(table, namespace, name, request, request.share)
                snapshot_id = pinned_snapshot(table, namespace, name, request)
                scan = data_scan(table, request, snapshot_id)
                if snapshot_id is None:
                    return OpenScan(None, arrow_schema(scan), None, namespace, name)
                reader = lazy_batch_reader(
                    table,
                    scan,
                    budget=self._read_budget,
                    stream_bytes=self._settings.read_stream_buffer_bytes,
                )
            except ValueError as exc:
                raise InvalidArgument.field("columns", brief(exc)) from exc
            return OpenScan(snapshot_id, reader.schema, reader, namespace, name)

        return await self._call(work, namespace, name, retry=True)

    def _open_share(
        self,
        table: IcebergTable,
        namespace: str,
        name: str,
        request: ScanRequest,
        share: StreamShare,
    ) -> OpenScan:
        """One stream of a read session: its share of the pinned snapshot's files."""
        found = self._sessions.share(table, namespace, name, request, share)
        if found is None:
            scan = data_scan(table, request, None)
            return OpenScan(None, arrow_schema(scan), None, namespace, name)
        scan, tasks = found
        reader = lazy_batch_reader(
            table,
            scan,
            budget=self._read_budget,
            stream_bytes=self._settings.read_stream_buffer_bytes,
            tasks=tasks,
        )
        return OpenScan(request.snapshot_id, reader.schema, reader, namespace, name)

    async def plan_read_session(
        self,
        namespace: str,
        name: str,
        request: ScanRequest,
        max_streams: int,
        *,
        keep_plan: bool = True,
    ) -> PlannedRead:
        """Pins a read's snapshot, plans its files and splits them into streams.

        Raises:
            NotFound: No such table, snapshot or ref.
            InvalidArgument: An unknown column.
        """

        def work(c: Catalog) -> PlannedRead:
            table = self._table(c, namespace, name)
            try:
                return self._sessions.plan(
                    table, namespace, name, request, max_streams, keep_plan=keep_plan
                )
            except ValueError as exc:
                raise InvalidArgument.field("columns", brief(exc)) from exc

        return await self._call(work, namespace, name, retry=True)

    def _open_changes(
        self, table: IcebergTable, namespace: str, name: str, request: ScanRequest
    ) -> OpenScan:
        """An incremental read: the rows appended, or the changes, after a snapshot."""
        assert request.start_snapshot_id is not None
        end = request.end_snapshot_id
        if end is None:
            end = table.metadata.current_snapshot_id
        if end is None or table.snapshot_by_id(end) is None:
            raise snapshot_not_found(namespace, name, str(end))
        chain = snapshots_between(
            table.metadata, request.start_snapshot_id, end, f"{namespace}.{name}"
        )
        try:
            schema = table.schema()
            projected = schema.select(*request.columns) if request.columns else schema
            if not chain:  # the start is the end: nothing changed
                return OpenScan(
                    end, small_offsets(schema_to_pyarrow(projected)), None, namespace, name
                )
            if only_appends(chain):
                scan = table.incremental_append_scan(
                    from_snapshot_id_exclusive=request.start_snapshot_id,
                    to_snapshot_id_inclusive=end,
                    row_filter=request.row_filter,
                    selected_fields=request.columns or ("*",),
                    limit=request.limit,
                )
                reader = lazy_batch_reader(
                    table,
                    scan,
                    budget=self._read_budget,
                    stream_bytes=self._settings.read_stream_buffer_bytes,
                )
                return OpenScan(end, reader.schema, reader, namespace, name)
        except ValueError as exc:
            raise InvalidArgument.field("columns", brief(exc)) from exc
        changes = changelog_schema(projected)
        batches = changelog_batches(table, chain, request.row_filter, projected)
        return OpenScan(
            end, changes, pa.RecordBatchReader.from_batches(changes, batches), namespace, name
        )

    async def next_batch(self, scan: OpenScan) -> pa.RecordBatch | None:
        """The next record batch of an open scan, or None at its end (in the blocking pool)."""
        return await self._pool.run(self.next_batch_sync, scan)

    def next_batch_sync(self, scan: OpenScan) -> pa.RecordBatch | None:
        """:meth:`next_batch` on the calling thread (a transport's own thread, no event loop).

        Behind the object store's breaker, and never retried: a reader that failed midway
        cannot resume where it was.
        """

        def work() -> pa.RecordBatch | None:
            if scan.reader is None:
                return None
            with translate_errors(scan.namespace, scan.table):
                try:
                    return scan.reader.read_next_batch()
                except StopIteration:
                    return None

        return self._resilience.call_sync(work, uses=(self._store_breaker,), retry=False)

    async def close_scan(self, scan: OpenScan) -> None:
        """Stops reading (the client went away or the limit was reached)."""
        await self._pool.run(self.close_scan_sync, scan)

    def close_scan_sync(self, scan: OpenScan) -> None:
        """:meth:`close_scan` on the calling thread; closing twice is a no-op."""
        reader, scan.reader = scan.reader, None
        if reader is not None:
            reader.close()

    async def list_tables(self, namespace: str) -> list[str]:
        """The table names of a namespace. Raises NotFound."""

        def work(c: Catalog) -> list[str]:
            c.load_namespace_properties(namespace)
            return [ident[-1] for ident in c.list_tables(namespace)]

        return await self._call(work, namespace, retry=True, files=False)

    async def drop_table(self, namespace: str, name: str) -> None:
        """Drops a table from the catalog, leaving its files. Raises NotFound."""
        self._forget(namespace, name)
        await self._call(lambda c: c.drop_table((namespace, name)), namespace, name, files=False)

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
            self._forget(namespace, name)
            table = c.rename_table((namespace, name), (new_namespace, new_name))
            return table_info(new_namespace, new_name, table)

        return await self._call(work, namespace, name)

    async def close(self) -> None:
        """Releases the catalog's database connections."""
        if self._loop_locations is not None:
            self._loop_locations.close()
        catalog = self._catalog
        self._catalog = None
        engine = getattr(catalog, "engine", None)
        if engine is not None:
            await self._pool.run(engine.dispose)


def unique_table_location(
    c: Catalog, namespace: str, name: str, namespace_properties: Mapping[str, str]
) -> str | None:
    """A fresh folder for a new table, unique even when the name is reused.

    The usual ``<warehouse>/<namespace>/<table>`` plus a random suffix (as Trino's
    ``iceberg.unique-table-location``).

    Without it a table renamed away and a new table created under the old name share one
    folder, and purging either deletes the other's files (found by the fuzz test: a renamed
    table whose metadata a purge had deleted). None leaves the choice to the catalog (a REST
    catalog server places tables itself).
    """
    if not isinstance(c, SqlCatalog):
        return None
    base = namespace_properties.get("location") or (
        f"{str(c.properties['warehouse']).rstrip('/')}/{namespace}"
    )
    return f"{base.rstrip('/')}/{name}-{uuid.uuid4().hex}"


def _check_etag(table: IcebergTable, expected_etag: str) -> None:
    if table.metadata_location != expected_etag:
        name = ".".join(table.name())
        raise Conflict(
            f"table {name} changed since etag {expected_etag}; get it again",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": table.metadata_location},
        )


def _unchanged_since(table: IcebergTable) -> tuple[TableRequirement, ...]:
    """Requirements the catalog checks atomically with the commit: nothing moved meanwhile."""
    md = table.metadata
    return (
        AssertRefSnapshotId.model_validate(
            {"ref": MAIN_BRANCH, "snapshot-id": md.current_snapshot_id}
        ),
        AssertCurrentSchemaId.model_validate({"current-schema-id": md.current_schema_id}),
        AssertDefaultSpecId.model_validate({"default-spec-id": md.default_spec_id}),
        AssertDefaultSortOrderId.model_validate(
            {"default-sort-order-id": md.default_sort_order_id}
        ),
    )


def _etag_mismatch(namespace: str, name: str) -> Conflict:
    return Conflict(
        f"table {namespace}.{name} changed while the update was applied; get it again",
        reason="ETAG_MISMATCH",
    )
