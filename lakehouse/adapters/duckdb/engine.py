"""The embedded DuckDB engine of SQL jobs: one statement over the lakehouse's Iceberg tables.

``run_statement`` checks the statement (``statements``), opens a locked-down connection
(``connection``), registers each table the statement names as a scan source
(``scan_source``), runs the query and commits what it writes:

* **Results stream out.** The result is fetched as an Arrow RecordBatchReader; the preview
  keeps the first rows (``preview``), a destination table or ``INSERT`` target is written file
  by file (``writes``), and everything lands in one Iceberg commit that records the job id, so
  that a retried attempt finds its own commit instead of writing twice
  (``earlier_attempts``).
* **DELETE and UPDATE are copy-on-write.** The WHERE and SET are evaluated by DuckDB over
  the target's rows, batch by batch (``row_changes``); only the files holding matching rows
  are rewritten, in one commit planned on fresh metadata
  (``lakehouse.adapters.iceberg.planned_changes``).
* **A stop is prompt and commits nothing.** ``JobContext.on_stop`` interrupts the running
  query; ``JobContext.check`` runs between batches and right before the commit.
* **Errors say whose fault they are.** DuckDB's errors become the service's: the statement's
  fault is ``INVALID_ARGUMENT``, memory and spill limits ``RESOURCE_EXHAUSTED``, storage
  ``UNAVAILABLE``, and messages never name the server's folders.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table as IcebergTable
from pyiceberg.table import Transaction

from lakehouse.adapters.duckdb.connection import connect, interrupter
from lakehouse.adapters.duckdb.earlier_attempts import (
    JOB_ID_PROPERTY,
    earlier_change,
    earlier_destination,
    earlier_insert,
)
from lakehouse.adapters.duckdb.parse_tree import (
    IDENTIFIER,
    NOT_ALLOWED,
    TableRef,
    first_line,
    invalid,
    quote,
    split_ref,
)
from lakehouse.adapters.duckdb.preview import Preview
from lakehouse.adapters.duckdb.progress import Progress
from lakehouse.adapters.duckdb.row_changes import change_matcher
from lakehouse.adapters.duckdb.row_statements import RowChange
from lakehouse.adapters.duckdb.scan_source import Failures, IcebergSource
from lakehouse.adapters.duckdb.statements import Insert, Plan, analyze, resolve
from lakehouse.adapters.duckdb.storable import cast_result, conform, storable_schema
from lakehouse.adapters.duckdb.writes import TrackingIO, write_files
from lakehouse.adapters.iceberg.errors import (
    telling_a_missing_namespace,
    translate_errors,
    without_paths,
)
from lakehouse.adapters.iceberg.planned_changes import planned_change
from lakehouse.adapters.iceberg.scan import small_offsets
from lakehouse.adapters.iceberg.snapshot_refs import resolve_ref
from lakehouse.adapters.pyiceberg_private.writes import (
    check_arrow_schema_fits,
    transaction_io,
    writable_table,
)
from lakehouse.domain.errors import (
    InvalidArgument,
    LakehouseError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.sql_result import SqlOutcome

_BATCH_ROWS = 64 * 1024
#: Commit attempts of a DELETE or UPDATE that keeps losing races (as ingest.commit_attempts).
COMMIT_ATTEMPTS = 30
_SOURCE_PREFIX = "__lakehouse_scan_"


def run_statement(
    catalog: Catalog,
    *,
    statement: str,
    default_namespace: str,
    preview_limit: int,
    destination: tuple[str, str] | None,
    ctx: JobContext,
    memory_limit_mb: int,
    threads: int,
    temp_dir: Path,
    temp_limit_mb: int = 10 * 1024,
    preview_max_bytes: int = 1024 * 1024,
) -> SqlOutcome:
    """Runs one statement on an embedded, locked-down DuckDB; blocks (run it in a worker).

    A query returns its row count and a preview; with ``destination`` its full result is
    also written into that new table. ``INSERT INTO ns.t <query>`` appends the query's rows
    to an existing table; ``DELETE FROM ns.t WHERE ...`` and ``UPDATE ns.t SET ... [WHERE
    ...]`` rewrite the table's files that hold matching rows (``row_changes``). Whatever is
    written lands in one commit that records ``ctx.job_id``; a retried attempt that finds
    that commit returns its outcome without running the statement again.

    Args:
        catalog: The lakehouse's pyiceberg catalog.
        statement: One SQL statement in DuckDB's dialect.
        default_namespace: The namespace of table names written without one; empty for none.
        preview_limit: The most result rows to return in the preview (0 for none).
        destination: ``(namespace, table)`` of a new table to write the result into.
        ctx: The running job: stop requests, progress and the job id.
        memory_limit_mb: DuckDB's memory limit; past it DuckDB spills to ``temp_dir``.
        threads: DuckDB's worker threads.
        temp_dir: Where DuckDB spills, in a folder of this run's own that is removed at the
            end; created if missing.
        temp_limit_mb: The most DuckDB may spill; past it the statement fails.
        preview_max_bytes: The most Arrow bytes the preview may hold (rows past it are left
            out and the outcome marked truncated).

    Returns:
        Row count, preview and the snapshot committed (if any).

    Raises:
        InvalidArgument: The statement is not allowed, or fails in the engine (syntax,
            binder, type or conversion errors; field ``sql.statement``).
        NotFound: A table the statement names, or the destination's namespace, does not
            exist (reasons ``TABLE_NOT_FOUND``, ``NAMESPACE_NOT_FOUND``).
        AlreadyExists: The destination table exists and was not made by this job.
        ResourceExhausted: The query ran out of memory (reason ``JOB_MEMORY_EXHAUSTED``) or
            of spill space (``JOB_TEMP_SPACE_EXHAUSTED``).
        Conflict: The INSERT target changed concurrently in a conflicting way, or a DELETE
            or UPDATE lost every one of its commit races (``COMMIT_CONFLICT``).
        Unavailable: The catalog or object store failed.
        JobStopped: The job was asked to stop; nothing was committed.
    """
    if preview_limit < 0:
        raise ValueError("preview_limit must not be negative")
    temp_dir.mkdir(parents=True, exist_ok=True)
    # A folder of its own: DuckDB removes its spill folder on close, and jobs run side by side.
    spill_dir = Path(tempfile.mkdtemp(prefix="duckdb-", dir=temp_dir))
    try:
        con = connect(
            memory_limit_mb=memory_limit_mb,
            threads=threads,
            temp_dir=spill_dir,
            temp_limit_mb=temp_limit_mb,
        )
    except BaseException:
        shutil.rmtree(spill_dir, ignore_errors=True)
        raise
    unregister = ctx.on_stop(interrupter(con))
    try:
        plan = analyze(con, statement)
        ctx.check()
        ctx.progress(0.0, "loading tables")
        engine = _Engine(con, ctx, preview_max_bytes)
        if plan.change is not None:
            if destination is not None:
                raise _no_destination(plan.change.kind)
            target = resolve(plan.change.target, default_namespace)
            done = earlier_change(catalog, target, ctx.job_id)
            if done is not None:
                return done
            engine.open_tables(catalog, plan.tables, default_namespace)
            return engine.change(catalog, plan.change, target)
        if plan.insert is not None:
            if destination is not None:
                raise _no_destination("INSERT")
            target = resolve(plan.insert.target, default_namespace)
            done = earlier_insert(catalog, target, ctx.job_id)
            if done is not None:
                return done
            engine.open_tables(catalog, plan.tables, default_namespace)
            return engine.insert(catalog, plan, target)
        if destination is not None:
            done = earlier_destination(
                catalog, destination, ctx.job_id, preview_limit, preview_max_bytes
            )
            if done is not None:
                return done
        engine.open_tables(catalog, plan.tables, default_namespace)
        return engine.query(catalog, plan.query, preview_limit, destination)
    except duckdb.InterruptException:
        # A stop interrupts whatever DuckDB call is running, not only the query (found by
        # tests/faults: SIGTERM while the tables were being registered failed the job with
        # INTERNAL instead of handing it back). The query's own errors are mapped inside.
        ctx.check()
        raise
    finally:
        unregister()
        con.close()
        shutil.rmtree(spill_dir, ignore_errors=True)


# DuckDB's error kinds by the prefix of their message, for errors that reach us as text.
_STREAM_ERRORS: dict[str, type[duckdb.Error]] = {
    "Out of Memory Error": duckdb.OutOfMemoryException,
    "INTERRUPT Error": duckdb.InterruptException,
    "Permission Error": duckdb.PermissionException,
    "Catalog Error": duckdb.CatalogException,
    "IO Error": duckdb.IOException,
    "INTERNAL Error": duckdb.InternalException,
    "FATAL Error": duckdb.FatalException,
}


class _Engine:
    """One statement's DuckDB connection, its registered tables and error translation."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        ctx: JobContext,
        preview_max_bytes: int = 1024 * 1024,
    ) -> None:
        self._con = con
        self._ctx = ctx
        self._preview_max_bytes = preview_max_bytes
        self._failures = Failures()
        self._progress = Progress(con, ctx)
        self._tables: dict[tuple[str, str], IcebergTable] = {}

    def open_tables(
        self, catalog: Catalog, refs: Iterable[TableRef], default_namespace: str
    ) -> None:
        """Loads each referenced table, makes it readable under its name, locks the engine.

        Each table becomes a view ``namespace.table`` over its source; bare names resolve
        through DuckDB's search path, set to the default namespace. Nothing the statement
        does can change the configuration afterwards.
        """
        schemas: set[str] = set()
        for ref in refs:
            if ref.maybe_cte and not default_namespace:
                continue
            namespace, name = resolve(ref.parts, default_namespace)
            if (namespace, name) in self._tables:
                continue
            # ns."t@audit" reads branch audit's head (or tag audit's snapshot) of ns.t.
            table_name, ref_name = split_ref(name)
            try:
                with (
                    translate_errors(namespace, table_name),
                    telling_a_missing_namespace(catalog, namespace, table_name),
                ):
                    table = catalog.load_table((namespace, table_name))
            except NotFound:
                if ref.maybe_cte:
                    continue
                raise
            snapshot_id = resolve_ref(table, ref_name) if ref_name else None
            source = IcebergSource(table, self._ctx, self._failures, self._progress, snapshot_id)
            hidden = f"{_SOURCE_PREFIX}{len(self._tables)}"
            self._con._register_arrow_source(hidden, source)
            if namespace not in schemas:
                self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(namespace)}")
                schemas.add(namespace)
            self._con.execute(
                f"CREATE VIEW {quote(namespace)}.{quote(name)} AS SELECT * FROM {hidden}"
            )
            self._tables[(namespace, name)] = table
        if default_namespace and IDENTIFIER.fullmatch(default_namespace):
            if default_namespace not in schemas:
                self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(default_namespace)}")
            self._con.execute(f"SET search_path = {_sql_string(default_namespace)}")
        self._con.execute("SET lock_configuration = true")

    @contextlib.contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """Maps DuckDB's errors: the statement's fault is INVALID_ARGUMENT, with its message."""
        try:
            yield
        except duckdb.Error as exc:
            self._ctx.check()
            raise self._translate(exc) from exc

    def _translate(self, exc: duckdb.Error) -> LakehouseError:
        cause = self._failures.first
        if isinstance(cause, LakehouseError):
            return cause
        if cause is not None and not isinstance(cause, duckdb.Error):
            try:
                with translate_errors():
                    raise cause
            except LakehouseError as mapped:
                return mapped
            except BaseException:
                pass
            return Unavailable(f"reading a table failed: {without_paths(first_line(cause))}")
        message = str(exc)
        # Storage, permission and memory errors may quote the engine's temp folder or the
        # warehouse: an answer names the file, not where the server keeps it.
        if isinstance(exc, duckdb.OutOfMemoryException):
            # Both are limits of the job, deterministic for its input: the worker does not
            # retry them (lakehouse.core.job_worker.NOT_RETRIED_REASONS).
            if "max_temp_directory_size" in message:
                return ResourceExhausted(
                    "the query needs more spill space on disk than a SQL job may use "
                    "(jobs.duckdb_temp_limit_mb)",
                    reason="JOB_TEMP_SPACE_EXHAUSTED",
                    retry_after_seconds=60.0,
                )
            return ResourceExhausted(
                "the query needs more memory than the SQL engine may use "
                "(jobs.duckdb_memory_limit_mb): " + without_paths(first_line(exc)),
                reason="JOB_MEMORY_EXHAUSTED",
                retry_after_seconds=60.0,
            )
        if isinstance(exc, duckdb.InterruptException):
            return Unavailable("the query was interrupted", reason="SQL_INTERRUPTED")
        if isinstance(exc, duckdb.PermissionException):
            return invalid(without_paths(message), reason=NOT_ALLOWED)
        if isinstance(exc, duckdb.CatalogException) and "Table with name" in message:
            return NotFound(message, reason="TABLE_NOT_FOUND")
        if isinstance(exc, (duckdb.InternalException, duckdb.FatalException)):
            return LakehouseError(f"the SQL engine failed: {without_paths(first_line(exc))}")
        if isinstance(exc, duckdb.IOException):
            return Unavailable(f"the SQL engine's storage failed: {without_paths(first_line(exc))}")
        return invalid(message)

    def _reader(self, query: str) -> pa.RecordBatchReader:
        with self._engine_errors():
            relation = self._con.sql(query)
            if relation is None:
                raise invalid("the statement returns no rows")
            reader: pa.RecordBatchReader = relation.to_arrow_reader(_BATCH_ROWS)
        return reader

    def _batches(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        """The result's batches, with a stop check between them and engine errors mapped."""
        with reader:
            while True:
                self._ctx.check()
                with self._engine_errors():
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    except (pa.ArrowException, OSError) as exc:
                        # An error raised in DuckDB's thread reaches us through the stream.
                        raise self._stream_error(exc) from exc
                yield batch

    def _stream_error(self, exc: Exception) -> LakehouseError:
        """An error that came through the Arrow stream: only its text says which it was."""
        self._ctx.check()
        message = str(exc)
        kind = next(
            (k for prefix, k in _STREAM_ERRORS.items() if message.startswith(prefix)),
            duckdb.Error,
        )
        return self._translate(kind(message))

    def query(
        self,
        catalog: Catalog,
        query: str,
        preview_limit: int,
        destination: tuple[str, str] | None,
    ) -> SqlOutcome:
        """Runs a query: row count and preview; with a destination, the full result too."""
        self._ctx.progress(0.05, "running the query")
        self._progress.start("running the query")
        try:
            reader = self._reader(query)
            collector = Preview(reader.schema, preview_limit, self._preview_max_bytes)
            snapshot_id = None
            if destination is None:
                for batch in self._batches(reader):
                    collector.add(batch)
            else:
                snapshot_id = self._create(catalog, destination, reader, collector)
        finally:
            self._progress.stop()
        self._ctx.progress(1.0, "done")
        return collector.outcome(snapshot_id)

    def _create(
        self,
        catalog: Catalog,
        destination: tuple[str, str],
        reader: pa.RecordBatchReader,
        collector: Preview,
    ) -> int | None:
        target_schema = storable_schema(reader.schema)
        namespace, name = destination
        with translate_errors(namespace, name):
            transaction = catalog.create_table_transaction(
                destination, target_schema, properties={JOB_ID_PROPERTY: self._ctx.job_id}
            )
        batches = (cast_result(collector.add(b), target_schema) for b in self._batches(reader))
        return self._commit(transaction, target_schema, batches, namespace, name, {})

    def insert(self, catalog: Catalog, plan: Plan, target: tuple[str, str]) -> SqlOutcome:
        """Appends the INSERT's query result to the target table in one commit."""
        assert plan.insert is not None
        namespace, name = target
        with translate_errors(namespace, name):
            # Writes only with writer values pyiceberg can use (see writable_table).
            table = writable_table(catalog.load_table(target))
        target_schema = small_offsets(schema_to_pyarrow(table.schema()))
        query = self._insert_query(plan.query, plan.insert, table, target_schema)
        self._ctx.progress(0.05, "running the query")
        self._progress.start("running the query")
        try:
            reader = self._reader(query)
            counter = Preview(reader.schema, 0)
            batches = (conform(counter.add(b), target_schema) for b in self._batches(reader))
            transaction = table.transaction()
            props = {JOB_ID_PROPERTY: self._ctx.job_id}
            snapshot_id = self._commit(transaction, target_schema, batches, namespace, name, props)
        finally:
            self._progress.stop()
        self._ctx.progress(1.0, "done")
        return counter.outcome(snapshot_id, preview=False)

    def change(self, catalog: Catalog, change: RowChange, target: tuple[str, str]) -> SqlOutcome:
        """Deletes or updates the matching rows of the target in one commit (copy-on-write).

        Planned on the table as it is and planned again after a lost commit race, so rows
        appended concurrently are neither lost nor changed unless they match; a statement
        that matches no row commits nothing.
        """
        namespace, name = target

        def load() -> IcebergTable:
            with translate_errors(namespace, name):
                return catalog.load_table(target)

        self._ctx.progress(0.05, f"finding the rows to {change.kind.lower()}")
        self._progress.start("rewriting the files that hold matching rows")
        try:
            with self._engine_errors(), translate_errors(namespace, name):
                # The WHERE and SET run many times (per batch, per attempt): in one DuckDB
                # transaction, now() and its kin have one value for the whole statement.
                self._con.execute("BEGIN TRANSACTION")
                done = planned_change(
                    load,
                    lambda table: change_matcher(self._con, change, table),
                    operation=change.kind.lower(),
                    max_attempts=COMMIT_ATTEMPTS,
                    properties={JOB_ID_PROPERTY: self._ctx.job_id},
                    check=self._ctx.check,
                )
        finally:
            self._progress.stop()
        stats = done.stats
        rows = stats.rows_deleted + stats.rows_updated
        # The result holds the row count; the files touched are told in the last progress.
        self._ctx.progress(
            1.0,
            f"{rows} rows {'deleted' if change.kind == 'DELETE' else 'updated'}: "
            f"{stats.files_rewritten} files rewritten, {stats.files_removed} removed, "
            f"{stats.files_added} written",
        )
        return SqlOutcome(rows, pa.table({}), False, done.snapshot_id)

    def _insert_query(
        self, query: str, insert: Insert, table: IcebergTable, target_schema: pa.Schema
    ) -> str:
        """The query with each target column cast as DuckDB's INSERT would, in table order."""
        with self._engine_errors():
            relation = self._con.sql(query)
            if relation is None:
                raise invalid("the INSERT's query returns no rows")
            produced = list(relation.columns)
            hidden = f"{_SOURCE_PREFIX}target"
            self._con.register(hidden, target_schema.empty_table())
            types = [str(t) for t in self._con.sql(f"SELECT * FROM {hidden}").types]
            self._con.unregister(hidden)
        by_folded = {f.name.casefold(): f.name for f in target_schema}
        if insert.by_name:
            chosen = list(produced)
        elif insert.columns is not None:
            chosen = list(insert.columns)
        else:
            chosen = list(target_schema.names)
        sources: dict[str, int] = {}
        for i, column in enumerate(chosen):
            actual = by_folded.get(column.casefold())
            if actual is None:
                raise invalid(f"table {'.'.join(table.name())} has no column {column!r}")
            if actual in sources:
                raise invalid(f"column {column!r} is given more than once")
            sources[actual] = i
        if not insert.by_name and len(produced) != len(chosen):
            raise invalid(
                f"the INSERT's query gives {len(produced)} columns, but "
                f"{len(chosen)} target columns are to be filled"
            )
        items = []
        for field, type_text in zip(target_schema, types, strict=True):
            index = sources.get(field.name)
            value = "NULL" if index is None else quote(f"__lakehouse_c{index}")
            items.append(f"CAST({value} AS {type_text}) AS {quote(field.name)}")
        aliases = ", ".join(quote(f"__lakehouse_c{i}") for i in range(len(produced)))
        return f"SELECT {', '.join(items)} FROM (\n{query}\n) AS __lakehouse_source({aliases})"

    def _commit(
        self,
        transaction: Transaction,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        namespace: str,
        name: str,
        snapshot_properties: dict[str, str],
    ) -> int | None:
        """Writes the batches as data files and commits them in one snapshot.

        Files are written as the batches arrive (never the whole result in memory); if the
        job stops or anything fails before the commit, the files written are deleted.
        """
        metadata = transaction.table_metadata
        io = TrackingIO(transaction_io(transaction))
        written: list[DataFile] = []
        try:
            with translate_errors(namespace, name):
                try:
                    check_arrow_schema_fits(
                        metadata.schema(), schema, format_version=metadata.format_version
                    )
                except ValueError as exc:
                    raise invalid(
                        f"the result does not fit table {namespace}.{name}: {first_line(exc)}"
                    ) from exc
                for data_file in write_files(metadata, io, schema, batches):
                    written.append(data_file)
                self._progress.stop()
                self._ctx.progress(0.95, "committing")
                self._ctx.check()
                snapshot_id: int | None = None
                if written:
                    with transaction.update_snapshot(
                        snapshot_properties=snapshot_properties
                    ).fast_append() as append:
                        for data_file in written:
                            append.append_data_file(data_file)
                        snapshot_id = append.snapshot_id
                transaction.commit_transaction()
        except LakehouseError as exc:
            if exc.reason != "COMMIT_STATE_UNKNOWN":
                io.abort()
            raise
        except BaseException:
            io.abort()
            raise
        return snapshot_id


def _no_destination(kind: str) -> InvalidArgument:
    return InvalidArgument.field(
        "sql.destination_table",
        f"an {kind} writes into its own target table; leave destination_table empty",
    )


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
