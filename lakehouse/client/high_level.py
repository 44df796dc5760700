"""``Lakehouse``: the small client a user otherwise writes around the generated stubs.

::

    with Lakehouse("lakehouse:50051", api_key=key) as lh:
        lh.create_table("sales.orders", arrow_schema, identifier_fields=["id"])
        lh.write("sales.orders", rows)                       # one commit, retry-safe
        lh.append("sales.orders", rows, writer_id="billing")  # exactly once, resumable
        orders = lh.read("sales.orders", filter="amount > 10")
        job = lh.wait(lh.sql("SELECT region, count(*) FROM sales.orders GROUP BY region"))
        print(lh.preview(job))

Every failure is raised as a decoded ``LakehouseError`` (``code``, ``reason``,
``field_violations``, ``retry_delay``...). Calls are retried on ``UNAVAILABLE`` and on
``RESOURCE_EXHAUSTED`` with a ``RetryInfo`` (waiting the server's delay), within
``RetryPolicy.max_attempts``, when repeating them is safe: reads and gets; ``write`` and
``sql``, which send a request id (generated per call unless given, the same on every attempt,
so the service applies the call once); ``append``, whose writer offsets make it exactly once
(a retry asks ``GetWriter`` how far the writer got and sends only the rest); creates with
``exist_ok=True``. Other calls are retried only when refused at the door (``RATE_LIMITED``,
``SERVER_OVERLOADED``).
``AsyncLakehouse`` (``lakehouse.client.high_level_async``) is the same on ``grpc.aio``.

Needs pyarrow (``pip install 'lakehouse-client[arrow]'``).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

try:
    import pyarrow as pa
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the high-level client needs pyarrow: pip install 'lakehouse-client[arrow]'"
    ) from e

from lakehouse.client.arrow import append_rows_requests
from lakehouse.client.channels import (
    DEFAULT_CHANNELS,
    ReadChannels,
    check_channels,
    pooled_options,
    spread_over,
)
from lakehouse.client.errors import LakehouseError, decode_error, error_from_status
from lakehouse.client.flight_writes import BulkWrite, FlightWrites
from lakehouse.client.jobs import Job, sql_preview, succeeded
from lakehouse.client.parallel_reads import DEFAULT_STREAMS, read_rows
from lakehouse.client.read_attempts import AttemptPlan, Deadline, ServerFeatures
from lakehouse.client.request_builders import (
    CHANNEL_OPTIONS,
    READ_CHANNEL_OPTIONS,
    Connection,
    Partitioning,
    TableName,
    WriteModeName,
    as_table,
    create_table_request,
    new_request_id,
    split_table,
    sql_job_request,
    table_read_request,
    write_mode,
)
from lakehouse.client.retry import OnRetry, RetryPolicy
from lakehouse.client.schema import schema_to_arrow
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2,
    job_service_pb2,
    namespace_pb2,
    schema_pb2,
    table_pb2,
    table_service_pb2,
)

__all__ = ["Lakehouse"]

T = TypeVar("T")


class Lakehouse:
    """A synchronous lakehouse.v1 client: tables, writes, reads and SQL jobs, with retries.

    Args:
        target: ``host:port`` of the service's gRPC port.
        api_key: An API key (``lh_...``), sent as ``authorization: Bearer``; None for none.
        tls: Connect with TLS (implied by the certificate arguments).
        root_certificates: PEM CA certificates to trust; None for the system's.
        client_certificate: PEM certificate chain for mTLS.
        client_key: PEM private key of ``client_certificate``.
        timeout: The deadline of each call, in seconds (``append``: of each attempt's whole
            stream; ``read``: of the whole read, its retries and waits included); None for
            none.
        retry: When to retry and how long to wait (``RetryPolicy()`` by default).
        on_retry: Called before each retry's wait (for logs or metrics).
        channels: Channels (each its own connection) the calls are spread over, in turn
            (1 to 16); see ``lakehouse.client.channels``.
        read_streams: ``read`` reads a read session's streams at once, at most this many,
            over as many connections (the channels above, and more opened on the first read
            when it asks more); 1 reads one ``ReadRows``.
        flight: The service's Arrow Flight port (``host:port``, or a Flight URI such as
            ``grpc+tls://host:50052``), when it serves one: ``write`` then sends its rows
            over it, with ``WriteRows`` as the fallback (``lakehouse.client.flight_writes``).
            None: ``write`` uses ``WriteRows``.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
        timeout: float | None = 60.0,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
        channels: int = DEFAULT_CHANNELS,
        read_streams: int = DEFAULT_STREAMS,
        flight: str | None = None,
    ) -> None:
        self._connection = Connection(
            target, api_key, tls, root_certificates, client_certificate, client_key
        )
        self._flight = FlightWrites(flight, self._connection)
        self._channels = self._connection.channels(
            check_channels(channels), pooled_options(CHANNEL_OPTIONS)
        )
        # Each call takes the next channel's stub: calls spread over the connections.
        self._next = spread_over(self._channels)
        self._metadata = self._connection.metadata()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.tables = self._next.first[0]
        """The generated ``TableService`` stub (on the first channel), for calls this client
        does not wrap."""
        self.ingest = self._next.first[1]
        """The generated ``IngestService`` stub (on the first channel)."""
        self.jobs = self._next.first[2]
        """The generated ``JobService`` stub (on the first channel)."""
        self.read_streams = read_streams
        # Whether the server has read sessions: learnt on the first read, remembered a while.
        self._server = ServerFeatures()
        self._reads = ReadChannels(
            [stubs[0] for stubs in self._next.stubs],
            lambda count: self._connection.channels(count, READ_CHANNEL_OPTIONS),
        )

    # --- life -----------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channels; calls in flight are cancelled."""
        for channel in [*self._channels, *self._reads.opened]:
            channel.close()
        self._flight.close()

    def __enter__(self) -> Lakehouse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lakehouse({self._connection.target!r})"

    # --- the retry loop -------------------------------------------------------------------

    def _call(self, attempt_once: Callable[[], T], *, idempotent: bool) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return attempt_once()
            except grpc.RpcError as e:
                error = decode_error(e)
            except LakehouseError as e:
                error = e
            delay = self.retry.delay(error, attempt, idempotent=idempotent)
            if delay is None:
                raise error
            if self.on_retry is not None:
                self.on_retry(error, attempt, delay)
            time.sleep(delay)

    # --- namespaces and tables ------------------------------------------------------------

    def create_namespace(
        self, name: str, properties: Mapping[str, str] | None = None, *, exist_ok: bool = False
    ) -> namespace_pb2.Namespace:
        """Creates a namespace.

        Args:
            name: The namespace.
            properties: Its properties.
            exist_ok: Return the existing namespace instead of raising ``ALREADY_EXISTS``;
                this also makes the call safe to retry on ``UNAVAILABLE``.

        Raises:
            LakehouseError: E.g. ``ALREADY_EXISTS`` (without exist_ok), ``INVALID_ARGUMENT``.
        """
        request = table_service_pb2.CreateNamespaceRequest(
            name=name, properties=dict(properties or {})
        )

        def attempt() -> namespace_pb2.Namespace:
            try:
                return self._next.tables.CreateNamespace(request, **self._options()).namespace
            except grpc.RpcError as e:
                if exist_ok and e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    get = table_service_pb2.GetNamespaceRequest(name=name)
                    return self._next.tables.GetNamespace(get, **self._options()).namespace
                raise

        return self._call(attempt, idempotent=exist_ok)

    def create_table(
        self,
        table: TableName,
        schema: pa.Schema | schema_pb2.Schema,
        *,
        partition_by: Partitioning | None = None,
        sort_by: Sequence[str] = (),
        identifier_fields: Sequence[str] = (),
        properties: Mapping[str, str] | None = None,
        exist_ok: bool = False,
    ) -> table_pb2.Table:
        """Creates a table.

        Args:
            table: ``"namespace.table"`` or ``(namespace, table)``.
            schema: A ``pyarrow.Schema`` (not nullable ⇔ required) or a lakehouse.v1 Schema.
            partition_by: Column → Iceberg transform (``{"ts": "day"}``) or PartitionFields.
            sort_by: Sort columns; ``"-id"`` sorts descending.
            identifier_fields: The required primitive columns that identify a row (upserts).
            properties: Table properties.
            exist_ok: Return the existing table instead of raising ``ALREADY_EXISTS`` (its
                schema is not compared); makes the call safe to retry on ``UNAVAILABLE``.

        Returns:
            The table as created (its schema with ids, type names, partition spec...).

        Raises:
            LakehouseError: ``INVALID_ARGUMENT`` (``INVALID_SCHEMA``...) with field
                violations, ``NOT_FOUND`` for a missing namespace, ``ALREADY_EXISTS``.
            ValueError: An Arrow type without an Iceberg counterpart, a bad table name.
        """
        request = create_table_request(
            table,
            schema,
            partition_by=partition_by,
            sort_by=sort_by,
            identifier_fields=identifier_fields,
            properties=properties,
        )

        def attempt() -> table_pb2.Table:
            try:
                return self._next.tables.CreateTable(request, **self._options()).table
            except grpc.RpcError as e:
                if exist_ok and e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return self._get_table(request.namespace, request.table)
                raise

        return self._call(attempt, idempotent=exist_ok)

    def _get_table(self, namespace: str, table: str) -> table_pb2.Table:
        request = table_service_pb2.GetTableRequest(namespace=namespace, table=table)
        return self._next.tables.GetTable(request, **self._options()).table

    def get_table(self, table: TableName) -> table_pb2.Table:
        """The table's metadata (schema, partition spec, snapshot, stats, etag).

        Raises:
            LakehouseError: ``NOT_FOUND`` (``TABLE_NOT_FOUND``).
        """
        namespace, name = split_table(table)
        return self._call(lambda: self._get_table(namespace, name), idempotent=True)

    def schema(self, table: TableName) -> pa.Schema:
        """The table's schema as an Arrow schema (``lakehouse.client.schema``)."""
        return schema_to_arrow(self.get_table(table).schema)

    # --- writing --------------------------------------------------------------------------

    def write(
        self,
        table: TableName,
        data: pa.Table | pa.RecordBatch,
        *,
        request_id: str | None = None,
        mode: WriteModeName = "append",
        overwrite_filter: str = "",
    ) -> ingest_pb2.WriteResult:
        """Writes rows in one commit (``WriteRows``), retry-safe by its request id.

        With the client's ``flight`` port the rows go over Arrow Flight (a ``do_put`` that is
        the same WriteRows), else in one gRPC message.

        Args:
            table: ``"namespace.table"`` or ``(namespace, table)``.
            data: The rows (without ``flight``, one gRPC message: for tens of MiB use
                ``append``, or give the client the Flight port).
            request_id: The id that makes a repeated write a no-op; a fresh UUID by default,
                the same for every attempt of this call. Pass your own to make your retries
                of the whole call safe too.
            mode: ``append``, ``overwrite`` (rows matching overwrite_filter),
                ``overwrite_partitions`` or ``upsert`` (by the identifier fields).
            overwrite_filter: The rows that ``overwrite`` replaces (row filter syntax).

        Returns:
            The result: rows written, snapshot id, ``already_written`` for a repeat.

        Raises:
            LakehouseError: ``INVALID_ARGUMENT`` for rows that do not fit the schema...
        """
        write = BulkWrite(
            table, data, request_id or new_request_id(), write_mode(mode), overwrite_filter
        )

        def attempt() -> ingest_pb2.WriteResult:
            if self._flight.usable:
                answer = self._flight.write(write.command, write.rows, self.timeout)
                if answer is not None:
                    return answer.result
            return self._next.ingest.WriteRows(write.request(), **self._options()).result

        return self._call(attempt, idempotent=True)

    def writer_offset(self, table: TableName, writer_id: str) -> int:
        """Where a writer resumes: the offset of the next row the service expects (0 if new)."""
        namespace, name = split_table(table)
        request = ingest_service_pb2.GetWriterRequest(
            namespace=namespace, table=name, writer_id=writer_id
        )

        def attempt() -> int:
            try:
                response = self._next.ingest.GetWriter(request, **self._options())
                return int(response.writer.next_offset)
            except grpc.RpcError as e:
                if decode_error(e).reason == "WRITER_NOT_FOUND":
                    return 0
                raise

        return self._call(attempt, idempotent=True)

    def append(
        self,
        table: TableName,
        data: pa.Table | pa.RecordBatch | Sequence[pa.RecordBatch],
        *,
        writer_id: str,
        start_offset: int | None = None,
    ) -> int:
        """Appends rows exactly once, as one writer's ``AppendRows`` stream.

        Offsets count the writer's rows: ``data``'s first row is ``start_offset`` (by default
        where the writer stands, ``writer_offset``). When a stream breaks (``UNAVAILABLE``),
        the retry asks ``GetWriter`` how far the writer got and sends only the rows after
        that, so no row is lost or written twice. The rows are held in memory for that; for a
        stream larger than memory use ``lakehouse.client.arrow.append_rows_requests``.

        Args:
            table: ``"namespace.table"`` or ``(namespace, table)``.
            data: The rows.
            writer_id: The writer's id, stable across restarts of the writing process.
            start_offset: The offset of ``data``'s first row; the writer's next offset by
                default (rows the service already has from this writer are skipped).

        Returns:
            The writer's next offset after these rows.

        Raises:
            LakehouseError: E.g. ``INVALID_ARGUMENT`` for rows that do not fit,
                ``OUT_OF_RANGE`` for a start_offset beyond the writer's next offset.
        """
        namespace, name = split_table(table)
        rows = as_table(data)
        start = self.writer_offset(table, writer_id) if start_offset is None else start_offset
        end: int = start + rows.num_rows
        first = [True]

        def attempt() -> int:
            resume_at = start
            if not first[0]:
                resume_at = max(start, self.writer_offset(table, writer_id))
            first[0] = False
            if resume_at >= end and rows.num_rows:
                return end
            requests = append_rows_requests(
                namespace,
                name,
                rows.slice(resume_at - start),
                writer_id=writer_id,
                start_offset=resume_at,
            )
            call = self._next.ingest.AppendRows(requests, **self._options())
            for ack in call:
                if ack.HasField("error"):
                    call.cancel()
                    raise error_from_status(ack.error)
            return end

        return self._call(attempt, idempotent=True)

    # --- reading --------------------------------------------------------------------------

    def read(
        self,
        table: TableName,
        *,
        columns: Sequence[str] | None = None,
        filter: str = "",
        snapshot_id: int | None = None,
        as_of: datetime.datetime | None = None,
        ref: str = "",
        limit: int = 0,
    ) -> pa.Table:
        """Reads a table, or its selected columns and rows, at a version, into Arrow.

        As a read session (``CreateReadSession``) whose streams are read at once over
        ``read_streams`` connections, in the order of one ``ReadRows``; with a ``limit``, or
        ``read_streams=1``, as one ``ReadRows``.

        Retries are decided call by call (``lakehouse.client.read_attempts.AttemptPlan``):
        the session's creation and each stream are each tried at most
        ``retry.max_attempts`` times in all, the failover of a stream whose replica went
        away to another connection included. A read that fails every call thus sends
        ``retry.max_attempts`` calls; at worst a read sends
        ``(1 + streams) * retry.max_attempts``, twice over when maintenance expired its
        session's snapshot meanwhile (it is then read once more as a new session). A server
        without read sessions (``UNIMPLEMENTED``, an older release) is read with one plain
        ``ReadRows`` (``retry.max_attempts`` more calls at most), and the client remembers it
        for ``read_attempts.SESSIONS_RECHECK_SECONDS`` (5 minutes), then asks again.
        All of it within the client's ``timeout``: each call gets the time left, a read
        with none left fails with ``DEADLINE_EXCEEDED``, and a retry whose wait would end
        past it is not waited for (the call's error is raised at once).

        Args:
            table: ``"namespace.table"`` or ``(namespace, table)``.
            columns: The columns (dotted paths for nested fields); None for all.
            filter: A row filter, e.g. ``"amount > 10 AND region = 'eu'"``.
            snapshot_id: Read this snapshot.
            as_of: Read the snapshot current at this time (timezone-aware).
            ref: Read the head of this branch or this tag.
            limit: At most this many rows; 0 for all.

        Raises:
            LakehouseError: ``NOT_FOUND``, ``INVALID_ARGUMENT`` (a bad filter or column),
                ``DEADLINE_EXCEEDED`` (the read took longer than ``timeout``)...
        """
        request = table_read_request(table, columns, filter, snapshot_id, as_of, ref, limit)
        # A read restarts a call from the beginning on a retry: the rows of a broken stream
        # are dropped, never mixed with the next attempt's. Each call (the session's
        # creation, each stream, or the one ReadRows) is retried on its own, failover to
        # other channels included, within the policy's attempts and the read's deadline:
        # the plan is the one place that retries, so attempts never multiply.
        stubs = self._reads.for_read(limit, self.read_streams, self._server)
        plan = AttemptPlan(len(stubs), self.retry, self.on_retry, Deadline.after(self.timeout))
        try:
            return read_rows(stubs, request, self.read_streams, plan, self._metadata, self._server)
        except grpc.RpcError as e:
            raise decode_error(e) from None

    # --- SQL jobs -------------------------------------------------------------------------

    def sql(
        self,
        statement: str,
        *,
        default_namespace: str = "",
        preview_rows: int = 0,
        destination: TableName | None = None,
        request_id: str | None = None,
    ) -> Job:
        """Starts a SQL job (``CreateJob``); ``wait`` for it, then ``preview`` its rows.

        Args:
            statement: One SQL statement; tables are named ``namespace.table``.
            default_namespace: The namespace of table names written without one.
            preview_rows: Rows in the result preview; 0 for the service's default (100).
            destination: A new table to write the full result into.
            request_id: The id that makes a repeated call return the same job; a fresh UUID
                by default, the same for every attempt of this call.

        Raises:
            LakehouseError: ``INVALID_ARGUMENT`` (``SQL_NOT_ALLOWED``...), quota refusals.
        """
        request = sql_job_request(
            statement,
            default_namespace=default_namespace,
            preview_rows=preview_rows,
            destination=destination,
            request_id=request_id,
        )
        return self._call(
            lambda: Job.from_proto(self._next.jobs.CreateJob(request, **self._options()).job),
            idempotent=True,
        )

    def get_job(self, job: Job | str) -> Job:
        """The job as it is now."""
        request = job_service_pb2.GetJobRequest(job_id=job if isinstance(job, str) else job.id)
        return self._call(
            lambda: Job.from_proto(self._next.jobs.GetJob(request, **self._options()).job),
            idempotent=True,
        )

    def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """Waits until the job finished (``WatchJob``), and returns it if it SUCCEEDED.

        Args:
            job: The job or its id.
            timeout: The longest wait in seconds; None for no limit.

        Returns:
            The succeeded job.

        Raises:
            LakehouseError: The job FAILED (its decoded error: code, reason, message) or was
                CANCELLED (code ``CANCELLED``); or watching it failed.
            TimeoutError: The job did not finish within timeout.
        """
        job_id = job if isinstance(job, str) else job.id
        deadline = None if timeout is None else time.monotonic() + timeout
        request = job_service_pb2.WatchJobRequest(job_id=job_id)

        def attempt() -> Job:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            latest: Job | None = None
            try:
                for response in self._next.jobs.WatchJob(
                    request, timeout=remaining, metadata=self._metadata
                ):
                    latest = Job.from_proto(response.job)
                    if latest.finished:
                        return latest
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout} s") from None
                raise
            # The stream ended without a finished job (a server shutting down): watch again.
            raise LakehouseError(grpc.StatusCode.UNAVAILABLE, f"the watch of job {job_id} ended")

        finished = self._call(attempt, idempotent=True)
        return succeeded(finished)

    def preview(self, job: Job) -> pa.Table:
        """A succeeded SQL job's preview rows as a table (``lakehouse.client.jobs``)."""
        return sql_preview(job)

    # --- helpers --------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "metadata": self._metadata}
