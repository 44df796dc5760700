"""TableService: namespaces and tables. Proto in, core call, proto out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias

import grpc
import pyarrow as pa

from lakehouse.core.caller import current_principal
from lakehouse.core.job_specs import timestamp_to_ms
from lakehouse.core.read_sessions import ReadSession, ReadSessions
from lakehouse.core.reads import Reads, ReadStart
from lakehouse.core.refs import Refs
from lakehouse.core.row_changes import RowChanges
from lakehouse.core.streams import prefetch
from lakehouse.core.table_health import TableHealthCheck
from lakehouse.core.tables import Tables
from lakehouse.core.watch import TableWatch
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.json_values import batch_to_structs
from lakehouse.domain.refs import RefKind
from lakehouse.services.convert import (
    TableProtoCache,
    arrow_compression_from_proto,
    changes_from_proto,
    check_stream_request,
    delete_outcome_to_proto,
    is_json_row_format,
    namespace_to_proto,
    read_options_from_proto,
    read_session_to_proto,
    ref_to_proto,
    selection_from_proto,
    snapshot_to_proto,
    table_health_to_proto,
    table_to_proto,
)
from lakehouse.services.schemas import (
    partition_spec_from_proto,
    schema_from_proto,
    sort_order_from_proto,
)
from lakehouse.services.wire import encode_arrow_batch_response, serialize_batch
from lakehouse.v1 import rows_pb2, table_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]

#: The Flight ticket and locations of each stream of a session, for its creator (principal,
#: session); none without a Flight port. Made by the transport, which owns the Flight port.
StreamEndpoints: TypeAlias = Callable[[ReadSession], Sequence[tuple[bytes, Sequence[str]]]]


def _no_endpoints(session: ReadSession) -> Sequence[tuple[bytes, Sequence[str]]]:
    return ()


class TableServicer(table_service_pb2_grpc.TableServiceServicer):
    """Implements lakehouse.v1.TableService on top of the core ``Tables`` and ``Reads``."""

    def __init__(
        self,
        tables: Tables,
        reads: Reads,
        row_changes: RowChanges,
        refs: Refs,
        health: TableHealthCheck,
        watch: TableWatch,
        read_sessions: ReadSessions,
        *,
        read_message_bytes: int,
        stream_endpoints: StreamEndpoints = _no_endpoints,
    ) -> None:
        self._read_sessions = read_sessions
        self._stream_endpoints = stream_endpoints
        self._health = health
        self._watch = watch
        self._tables = tables
        self._reads = reads
        self._row_changes = row_changes
        self._refs = refs
        self._read_message_bytes = read_message_bytes
        self._table_protos = TableProtoCache()

    async def CreateNamespace(
        self, request: pb.CreateNamespaceRequest, context: Context
    ) -> pb.CreateNamespaceResponse:
        """Creates a namespace."""
        ns = await self._tables.create_namespace(request.name, dict(request.properties))
        return pb.CreateNamespaceResponse(namespace=namespace_to_proto(ns))

    async def GetNamespace(
        self, request: pb.GetNamespaceRequest, context: Context
    ) -> pb.GetNamespaceResponse:
        """Gets a namespace."""
        ns = await self._tables.get_namespace(request.name)
        return pb.GetNamespaceResponse(namespace=namespace_to_proto(ns))

    async def ListNamespaces(
        self, request: pb.ListNamespacesRequest, context: Context
    ) -> pb.ListNamespacesResponse:
        """Lists namespaces, paged."""
        page = await self._tables.list_namespaces(request.page_size, request.page_token)
        return pb.ListNamespacesResponse(
            namespaces=[namespace_to_proto(ns) for ns in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateNamespaceProperties(
        self, request: pb.UpdateNamespacePropertiesRequest, context: Context
    ) -> pb.UpdateNamespacePropertiesResponse:
        """Sets and removes namespace properties."""
        result = await self._tables.update_namespace_properties(
            request.name, dict(request.updates), list(request.removals)
        )
        return pb.UpdateNamespacePropertiesResponse(
            namespace=namespace_to_proto(result.namespace),
            updated=result.updated,
            removed=result.removed,
            missing=result.missing,
        )

    async def DeleteNamespace(
        self, request: pb.DeleteNamespaceRequest, context: Context
    ) -> pb.DeleteNamespaceResponse:
        """Deletes an empty namespace."""
        await self._tables.delete_namespace(request.name)
        return pb.DeleteNamespaceResponse()

    async def CreateTable(
        self, request: pb.CreateTableRequest, context: Context
    ) -> pb.CreateTableResponse:
        """Creates a table."""
        if not request.HasField("schema"):
            raise InvalidArgument.field("schema", "a schema is required")
        schema = schema_from_proto(request.schema)
        spec = partition_spec_from_proto(request.partition_spec, schema)
        order = sort_order_from_proto(request.sort_order, schema)
        info = await self._tables.create_table(
            request.namespace, request.table, schema, spec, order, dict(request.properties)
        )
        return pb.CreateTableResponse(table=table_to_proto(info))

    async def GetTable(self, request: pb.GetTableRequest, context: Context) -> pb.GetTableResponse:
        """Gets a table."""
        info = await self._tables.get_table(request.namespace, request.table)
        return pb.GetTableResponse(table=self._table_protos.table_to_proto(info))

    async def ListTables(
        self, request: pb.ListTablesRequest, context: Context
    ) -> pb.ListTablesResponse:
        """Lists tables of a namespace, paged."""
        page = await self._tables.list_tables(
            request.namespace, request.page_size, request.page_token
        )
        return pb.ListTablesResponse(
            tables=[
                table_pb2.TableReference(namespace=request.namespace, table=name)
                for name in page.items
            ],
            next_page_token=page.next_page_token,
        )

    async def DeleteTable(
        self, request: pb.DeleteTableRequest, context: Context
    ) -> pb.DeleteTableResponse:
        """Drops a table, optionally purging its files."""
        await self._tables.delete_table(request.namespace, request.table, request.purge)
        return pb.DeleteTableResponse()

    async def RenameTable(
        self, request: pb.RenameTableRequest, context: Context
    ) -> pb.RenameTableResponse:
        """Renames or moves a table."""
        info = await self._tables.rename_table(
            request.namespace, request.table, request.new_namespace, request.new_table
        )
        return pb.RenameTableResponse(table=table_to_proto(info))

    async def RegisterTable(
        self, request: pb.RegisterTableRequest, context: Context
    ) -> pb.RegisterTableResponse:
        """Registers an existing table from its metadata file."""
        info = await self._tables.register_table(
            request.namespace, request.table, request.metadata_location
        )
        return pb.RegisterTableResponse(table=table_to_proto(info))

    async def UpdateTable(
        self, request: pb.UpdateTableRequest, context: Context
    ) -> pb.UpdateTableResponse:
        """Applies schema, partition, sort order and property changes atomically."""
        changes = changes_from_proto(request.changes)
        info = await self._tables.update_table(
            request.namespace, request.table, changes, request.expected_etag
        )
        return pb.UpdateTableResponse(table=table_to_proto(info))

    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: Context
    ) -> pb.ListSnapshotsResponse:
        """Lists snapshots, newest first."""
        page = await self._tables.list_snapshots(
            request.namespace, request.table, request.page_size, request.page_token
        )
        return pb.ListSnapshotsResponse(
            snapshots=[snapshot_to_proto(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: Context
    ) -> pb.GetSnapshotResponse:
        """Gets one snapshot."""
        snapshot = await self._tables.get_snapshot(
            request.namespace, request.table, request.snapshot_id
        )
        return pb.GetSnapshotResponse(snapshot=snapshot_to_proto(snapshot))

    async def RollbackTable(
        self, request: pb.RollbackTableRequest, context: Context
    ) -> pb.RollbackTableResponse:
        """Moves the current snapshot back to an earlier one."""
        target = request.WhichOneof("target")
        info = await self._tables.rollback_table(
            request.namespace,
            request.table,
            snapshot_id=request.snapshot_id if target == "snapshot_id" else None,
            # Checked, not ToMilliseconds(): that raises ValueError (INTERNAL) on a bad time.
            as_of_ms=timestamp_to_ms("as_of_time", request.as_of_time)
            if target == "as_of_time"
            else None,
            expected_etag=request.expected_etag,
        )
        return pb.RollbackTableResponse(table=table_to_proto(info))

    async def ReadRows(  # type: ignore[override]  # yields pre-encoded responses (wire.py)
        self, request: pb.ReadRowsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Streams rows as Arrow record batches (default) or JSON objects; or a session's stream."""
        check_stream_request(request)
        options = read_options_from_proto(request)
        as_json = is_json_row_format(request.format)
        compression = arrow_compression_from_proto(request.arrow_compression)
        # JSON is several times larger than Arrow: cut smaller batches so messages stay small.
        budget = self._read_message_bytes // (4 if as_json else 1)
        snapshot_id: int | None = None

        def encode(item: ReadStart | pa.RecordBatch) -> bytes | None:
            nonlocal snapshot_id
            if isinstance(item, ReadStart):
                snapshot_id = item.snapshot_id
                if as_json:
                    return None
                schema = rows_pb2.ArrowSchema(
                    serialized_schema=item.schema.serialize().to_pybytes()
                )
                return pb.ReadRowsResponse(
                    arrow_schema=schema, snapshot_id=snapshot_id
                ).SerializeToString()
            if as_json:
                return pb.ReadRowsResponse(
                    json_rows=rows_pb2.JsonRows(rows=batch_to_structs(item)),
                    snapshot_id=snapshot_id,
                ).SerializeToString()
            return encode_arrow_batch_response(item, snapshot_id, compression)

        async def encode_in_thread(item: ReadStart | pa.RecordBatch) -> bytes | None:
            # Encoding copies megabytes: off the event loop, overlapping the next file's decode.
            return await asyncio.to_thread(encode, item)

        if request.read_session:
            items = self._read_sessions.read_stream(
                current_principal(), request.read_session, request.stream, budget_bytes=budget
            )
        else:
            items = self._reads.read(request.namespace, request.table, options, budget_bytes=budget)
        json_messages = 0
        async for response in prefetch(items, encode_in_thread, depth=2):
            if response is not None:
                json_messages += as_json
                yield response
        if as_json and json_messages == 0:
            # Every stream carries at least one message, so "no rows" is told from "broken".
            empty = pb.ReadRowsResponse(json_rows=rows_pb2.JsonRows(), snapshot_id=snapshot_id)
            yield empty.SerializeToString()

    async def CreateReadSession(
        self, request: pb.CreateReadSessionRequest, context: Context
    ) -> pb.CreateReadSessionResponse:
        """Plans a read once, pinned to a snapshot, as streams to read in parallel."""
        principal = current_principal()
        session = await self._read_sessions.create(
            request.namespace,
            request.table,
            selection_from_proto(request),
            max_streams=request.max_streams,
            principal=principal,
        )
        endpoints = self._stream_endpoints(session)
        return pb.CreateReadSessionResponse(session=read_session_to_proto(session, endpoints))

    async def DeleteRows(
        self, request: pb.DeleteRowsRequest, context: Context
    ) -> pb.DeleteRowsResponse:
        """Deletes the rows a filter matches, in one snapshot."""
        outcome = await self._row_changes.delete_rows(
            request.namespace,
            request.table,
            request.row_filter,
            request_id=request.request_id,
            expected_etag=request.expected_etag,
            branch=request.branch,
        )
        return delete_outcome_to_proto(outcome)

    async def CreateBranch(
        self, request: pb.CreateBranchRequest, context: Context
    ) -> pb.CreateBranchResponse:
        """Creates a branch at a snapshot."""
        ref = await self._refs.create(
            request.namespace,
            request.table,
            request.name,
            RefKind.BRANCH,
            request.snapshot_id if request.HasField("snapshot_id") else None,
            max_ref_age_ms=_optional(request, "max_ref_age_ms"),
            min_snapshots_to_keep=_optional(request, "min_snapshots_to_keep"),
            max_snapshot_age_ms=_optional(request, "max_snapshot_age_ms"),
        )
        return pb.CreateBranchResponse(ref=ref_to_proto(ref))

    async def CreateTag(
        self, request: pb.CreateTagRequest, context: Context
    ) -> pb.CreateTagResponse:
        """Creates a tag at a snapshot."""
        ref = await self._refs.create(
            request.namespace,
            request.table,
            request.name,
            RefKind.TAG,
            request.snapshot_id if request.HasField("snapshot_id") else None,
            max_ref_age_ms=_optional(request, "max_ref_age_ms"),
        )
        return pb.CreateTagResponse(ref=ref_to_proto(ref))

    async def ListRefs(self, request: pb.ListRefsRequest, context: Context) -> pb.ListRefsResponse:
        """Lists a table's branches and tags."""
        refs = await self._refs.list(request.namespace, request.table)
        return pb.ListRefsResponse(refs=[ref_to_proto(r) for r in refs])

    async def DeleteRef(
        self, request: pb.DeleteRefRequest, context: Context
    ) -> pb.DeleteRefResponse:
        """Deletes a branch or a tag."""
        await self._refs.delete(request.namespace, request.table, request.name)
        return pb.DeleteRefResponse()

    async def PublishBranch(
        self, request: pb.PublishBranchRequest, context: Context
    ) -> pb.PublishBranchResponse:
        """Fast-forwards main to a branch's head."""
        info = await self._refs.publish(
            request.namespace, request.table, request.branch, request.expected_etag
        )
        return pb.PublishBranchResponse(table=table_to_proto(info))

    async def GetTableHealth(
        self, request: pb.GetTableHealthRequest, context: Context
    ) -> pb.GetTableHealthResponse:
        """Reports a table's health."""
        health = await self._health.health(request.namespace, request.table)
        return pb.GetTableHealthResponse(health=table_health_to_proto(health))

    async def WatchTable(
        self, request: pb.WatchTableRequest, context: Context
    ) -> AsyncIterator[pb.WatchTableResponse]:
        """Streams the table's new snapshots, from a cursor."""
        after = request.after_snapshot_id if request.HasField("after_snapshot_id") else None
        budget = self._read_message_bytes if request.include_rows else None
        items = self._watch.watch(
            request.namespace,
            request.table,
            after,
            rows_budget_bytes=budget,
            # Headers once the watch is accepted: a client (or a probe) then knows that the
            # silence that follows is a quiet table, not a call still being checked.
            on_started=lambda: context.send_initial_metadata(WATCH_ACCEPTED),
        )
        async for item in items:
            if isinstance(item, ReadStart):
                schema = item.schema.serialize().to_pybytes()
                yield pb.WatchTableResponse(
                    arrow_schema=rows_pb2.ArrowSchema(serialized_schema=schema)
                )
            elif isinstance(item, pa.RecordBatch):
                batch = await asyncio.to_thread(serialize_batch, item)
                yield pb.WatchTableResponse(
                    arrow_record_batch=rows_pb2.ArrowRecordBatch(
                        serialized_record_batch=batch.to_pybytes(), row_count=item.num_rows
                    )
                )
            else:
                yield pb.WatchTableResponse(
                    snapshot=snapshot_to_proto(item), writer_offsets=item.writer_offsets
                )


#: The response headers of a WatchTable call the server accepted (a refusal has none: its
#: status comes alone).
WATCH_ACCEPTED = (("lakehouse-watch", "accepted"),)


def _optional(request: Any, field: str) -> int | None:
    """An optional scalar field of ``request``: its value, or None when unset."""
    value: int = getattr(request, field)
    return value if request.HasField(field) else None
