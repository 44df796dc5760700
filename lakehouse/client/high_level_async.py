"""``AsyncLakehouse``: the high-level client on ``grpc.aio``, for asyncio programs.

::

    async with AsyncLakehouse("lakehouse:50051", api_key=key) as lh:
        await lh.write("sales.orders", rows)
        job = await lh.wait(await lh.sql("SELECT count(*) FROM sales.orders"))
        print(lh.preview(job))

Methods, retries (which calls, on what, how long) and errors are those of
``lakehouse.client.high_level.Lakehouse``, whose docstrings say more; waits are ``await``ed,
never blocking the event loop.

Needs pyarrow (``pip install 'lakehouse-client[arrow]'``).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from lakehouse.client.parallel_reads import DEFAULT_STREAMS, read_rows_async
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

__all__ = ["AsyncLakehouse"]

T = TypeVar("T")


class AsyncLakehouse:
    """An asyncio lakehouse.v1 client; the arguments are ``Lakehouse``'s.

    Create it inside the event loop that uses it (a ``grpc.aio`` channel belongs to one loop).

    Args:
        target: ``host:port`` of the service's gRPC port.
        api_key: An API key (``lh_...``), sent as ``authorization: Bearer``; None for none.
        tls: Connect with TLS (implied by the certificate arguments).
        root_certificates: PEM CA certificates to trust; None for the system's.
        client_certificate: PEM certificate chain for mTLS.
        client_key: PEM private key of ``client_certificate``.
        timeout: The deadline of each call, in seconds (``read``: of the whole read, its
            retries and waits included); None for none.
        retry: When to retry and how long to wait (``RetryPolicy()`` by default).
        on_retry: Called before each retry's wait (for logs or metrics).
        channels: Channels (each its own connection) the calls are spread over, in turn
            (1 to 16); see ``lakehouse.client.channels``.
        read_streams: ``read`` reads a read session's streams at once, at most this many,
            over as many connections (the channels above, and more opened on the first read
            when it asks more); 1 reads one ``ReadRows``.
        flight: The service's Arrow Flight port, for ``write``; see ``Lakehouse``.
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
        self._channels = self._connection.aio_channels(
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
            lambda count: self._connection.aio_channels(count, READ_CHANNEL_OPTIONS),
        )

    async def close(self) -> None:
        """Closes the channels; calls in flight are cancelled."""
        for channel in [*self._channels, *self._reads.opened]:
            await channel.close()
        self._flight.close()

    async def __aenter__(self) -> AsyncLakehouse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncLakehouse({self._connection.target!r})"

    async def _call(self, attempt_once: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await attempt_once()
            except grpc.aio.AioRpcError as e:
                error = decode_error(e)
            except LakehouseError as e:
                error = e
            delay = self.retry.delay(error, attempt, idempotent=idempotent)
            if delay is None:
                raise error
            if self.on_retry is not None:
                self.on_retry(error, attempt, delay)
            await asyncio.sleep(delay)

    def _options(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "metadata": self._metadata}

    async def create_namespace(
        self, name: str, properties: Mapping[str, str] | None = None, *, exist_ok: bool = False
    ) -> namespace_pb2.Namespace:
        """Creates a namespace; see ``Lakehouse.create_namespace``."""
        request = table_service_pb2.CreateNamespaceRequest(
            name=name, properties=dict(properties or {})
        )

        async def attempt() -> namespace_pb2.Namespace:
            try:
                return (
                    await self._next.tables.CreateNamespace(request, **self._options())
                ).namespace
            except grpc.aio.AioRpcError as e:
                if exist_ok and e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    get = table_service_pb2.GetNamespaceRequest(name=name)
                    return (await self._next.tables.GetNamespace(get, **self._options())).namespace
                raise

        return await self._call(attempt, idempotent=exist_ok)

    async def create_table(
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
        """Creates a table; see ``Lakehouse.create_table``."""
        request = create_table_request(
            table,
            schema,
            partition_by=partition_by,
            sort_by=sort_by,
            identifier_fields=identifier_fields,
            properties=properties,
        )

        async def attempt() -> table_pb2.Table:
            try:
                return (await self._next.tables.CreateTable(request, **self._options())).table
            except grpc.aio.AioRpcError as e:
                if exist_ok and e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return await self._get_table(request.namespace, request.table)
                raise

        return await self._call(attempt, idempotent=exist_ok)

    async def _get_table(self, namespace: str, table: str) -> table_pb2.Table:
        request = table_service_pb2.GetTableRequest(namespace=namespace, table=table)
        return (await self._next.tables.GetTable(request, **self._options())).table

    async def get_table(self, table: TableName) -> table_pb2.Table:
        """The table's metadata; see ``Lakehouse.get_table``."""
        namespace, name = split_table(table)
        return await self._call(lambda: self._get_table(namespace, name), idempotent=True)

    async def schema(self, table: TableName) -> pa.Schema:
        """The table's schema as an Arrow schema."""
        return schema_to_arrow((await self.get_table(table)).schema)

    async def write(
        self,
        table: TableName,
        data: pa.Table | pa.RecordBatch,
        *,
        request_id: str | None = None,
        mode: WriteModeName = "append",
        overwrite_filter: str = "",
    ) -> ingest_pb2.WriteResult:
        """Writes rows in one commit, retry-safe by its request id; see ``Lakehouse.write``."""
        write = BulkWrite(
            table, data, request_id or new_request_id(), write_mode(mode), overwrite_filter
        )

        async def attempt() -> ingest_pb2.WriteResult:
            if self._flight.usable:
                # pyarrow's Flight client blocks: in a thread, off the event loop.
                answer = await asyncio.to_thread(
                    self._flight.write, write.command, write.rows, self.timeout
                )
                if answer is not None:
                    return answer.result
            request = write.request()
            return (await self._next.ingest.WriteRows(request, **self._options())).result

        return await self._call(attempt, idempotent=True)

    async def writer_offset(self, table: TableName, writer_id: str) -> int:
        """Where a writer resumes (0 if new); see ``Lakehouse.writer_offset``."""
        namespace, name = split_table(table)
        request = ingest_service_pb2.GetWriterRequest(
            namespace=namespace, table=name, writer_id=writer_id
        )

        async def attempt() -> int:
            try:
                response = await self._next.ingest.GetWriter(request, **self._options())
            except grpc.aio.AioRpcError as e:
                if decode_error(e).reason == "WRITER_NOT_FOUND":
                    return 0
                raise
            return int(response.writer.next_offset)

        return await self._call(attempt, idempotent=True)

    async def append(
        self,
        table: TableName,
        data: pa.Table | pa.RecordBatch | Sequence[pa.RecordBatch],
        *,
        writer_id: str,
        start_offset: int | None = None,
    ) -> int:
        """Appends rows exactly once, resumably; see ``Lakehouse.append``.

        Returns:
            The writer's next offset after these rows.
        """
        namespace, name = split_table(table)
        rows = as_table(data)
        if start_offset is None:
            start_offset = await self.writer_offset(table, writer_id)
        start: int = start_offset
        end: int = start + rows.num_rows
        first = [True]

        async def attempt() -> int:
            resume_at = start
            if not first[0]:
                resume_at = max(start, await self.writer_offset(table, writer_id))
            first[0] = False
            if resume_at >= end and rows.num_rows:
                return end
            # The request generator encodes Arrow batches: small, CPU-bound work that
            # grpc.aio pulls one request at a time.
            requests = append_rows_requests(
                namespace,
                name,
                rows.slice(resume_at - start),
                writer_id=writer_id,
                start_offset=resume_at,
            )
            call = self._next.ingest.AppendRows(requests, **self._options())
            async for ack in call:
                if ack.HasField("error"):
                    call.cancel()
                    raise error_from_status(ack.error)
            return end

        return await self._call(attempt, idempotent=True)

    async def read(
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
        """Reads a table into Arrow; see ``Lakehouse.read``."""
        request = table_read_request(table, columns, filter, snapshot_id, as_of, ref, limit)
        # Retried call by call within the policy and the read's deadline: see Lakehouse.read.
        stubs = self._reads.for_read(limit, self.read_streams, self._server)
        plan = AttemptPlan(len(stubs), self.retry, self.on_retry, Deadline.after(self.timeout))
        try:
            return await read_rows_async(
                stubs, request, self.read_streams, plan, self._metadata, self._server
            )
        except grpc.RpcError as e:
            raise decode_error(e) from None

    async def sql(
        self,
        statement: str,
        *,
        default_namespace: str = "",
        preview_rows: int = 0,
        destination: TableName | None = None,
        request_id: str | None = None,
    ) -> Job:
        """Starts a SQL job, retry-safe by its request id; see ``Lakehouse.sql``."""
        request = sql_job_request(
            statement,
            default_namespace=default_namespace,
            preview_rows=preview_rows,
            destination=destination,
            request_id=request_id,
        )

        async def attempt() -> Job:
            return Job.from_proto((await self._next.jobs.CreateJob(request, **self._options())).job)

        return await self._call(attempt, idempotent=True)

    async def get_job(self, job: Job | str) -> Job:
        """The job as it is now."""
        request = job_service_pb2.GetJobRequest(job_id=job if isinstance(job, str) else job.id)

        async def attempt() -> Job:
            return Job.from_proto((await self._next.jobs.GetJob(request, **self._options())).job)

        return await self._call(attempt, idempotent=True)

    async def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """Waits until the job finished and returns it if it SUCCEEDED; see ``Lakehouse.wait``.

        Raises:
            LakehouseError: The job FAILED (its decoded error) or was CANCELLED.
            TimeoutError: The job did not finish within timeout.
        """
        job_id = job if isinstance(job, str) else job.id
        request = job_service_pb2.WatchJobRequest(job_id=job_id)

        async def attempt() -> Job:
            async for response in self._next.jobs.WatchJob(request, metadata=self._metadata):
                latest = Job.from_proto(response.job)
                if latest.finished:
                    return latest
            raise LakehouseError(grpc.StatusCode.UNAVAILABLE, f"the watch of job {job_id} ended")

        try:
            finished = await asyncio.wait_for(self._call(attempt, idempotent=True), timeout)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s") from None
        return succeeded(finished)

    def preview(self, job: Job) -> pa.Table:
        """A succeeded SQL job's preview rows as a table (no call: the job holds them)."""
        return sql_preview(job)
