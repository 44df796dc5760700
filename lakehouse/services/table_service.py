"""TableService: namespaces and tables. Proto in, core call, proto out."""

from __future__ import annotations

from typing import Any

import grpc

from lakehouse.core.tables import Tables
from lakehouse.errors import InvalidArgument
from lakehouse.schemas import partition_spec_from_proto, schema_from_proto, sort_order_from_proto
from lakehouse.services.convert import namespace_to_proto, table_to_proto
from lakehouse.v1 import table_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


class TableServicer(table_service_pb2_grpc.TableServiceServicer):
    """Implements lakehouse.v1.TableService on top of the core ``Tables``.

    Methods of later milestones (UpdateTable, snapshots, ReadRows...) are inherited from the
    generated base class and answer UNIMPLEMENTED until they land.
    """

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

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
        return pb.GetTableResponse(table=table_to_proto(info))

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
