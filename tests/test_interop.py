"""Interoperability: the service's tables are plain Iceberg tables, and it reads pyiceberg's.

An independent reader (pyiceberg in a separate process, from the metadata file alone) reads
what the service wrote; the service reads a table created and filled by pyiceberg directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pyarrow as pa

from fixtures.iceberg import append, direct_catalog
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.v1 import schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)

READER = textwrap.dedent(
    """
    import json, sys
    from pyiceberg.table import StaticTable
    location, props = sys.argv[1], json.loads(sys.argv[2])
    table = StaticTable.from_metadata(location, properties=props)
    data = table.scan().to_arrow()
    print(json.dumps({
        "columns": [f.name for f in table.schema().fields],
        "rows": data.num_rows,
        "ids": sorted(data.column("id").to_pylist()),
        "partition": [f.name for f in table.spec().fields],
    }))
    """
)


async def test_an_independent_reader_reads_what_the_service_wrote(
    table_stub: Any, backend: Any
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="interop"))
    await table_stub.CreateTable(
        pb.CreateTableRequest(
            namespace="interop",
            table="t",
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(name="id", type=LONG, required=True),
                    schema_pb2.Field(name="name", type=STRING),
                ]
            ),
            partition_spec=schema_pb2.PartitionSpec(
                fields=[schema_pb2.PartitionField(source_column="id", transform="bucket[4]")]
            ),
        )
    )
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])
    append(
        backend, "interop", "t", pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]}, schema=schema)
    )
    table = (
        await table_stub.UpdateTable(
            pb.UpdateTableRequest(
                namespace="interop",
                table="t",
                changes=[
                    pb.TableChange(
                        add_column=pb.AddColumn(field=schema_pb2.Field(name="extra", type=STRING))
                    )
                ],
            )
        )
    ).table

    props = {
        k: v
        for k, v in catalog_properties(backend).items()
        if k.startswith("s3.") or k == "warehouse"
    }
    proc = subprocess.run(
        [sys.executable, "-c", READER, table.metadata_location, json.dumps(props)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen == {
        "columns": ["id", "name", "extra"],
        "rows": 3,
        "ids": [1, 2, 3],
        "partition": ["id_bucket"],
    }


async def test_the_service_reads_a_table_made_by_pyiceberg(table_stub: Any, backend: Any) -> None:
    catalog = direct_catalog(backend)
    catalog.create_namespace("made_elsewhere")
    data = pa.table({"k": pa.array([10, 20], pa.int32()), "v": ["x", "y"]})
    created = catalog.create_table(("made_elsewhere", "t"), schema=data.schema)
    created.append(data)

    got = (
        await table_stub.GetTable(pb.GetTableRequest(namespace="made_elsewhere", table="t"))
    ).table
    assert [f.name for f in got.schema.fields] == ["k", "v"]
    assert got.stats.row_count == 2
    responses = [
        r
        async for r in table_stub.ReadRows(
            pb.ReadRowsRequest(namespace="made_elsewhere", table="t")
        )
    ]
    schema = pa.ipc.read_schema(pa.py_buffer(responses[0].arrow_schema.serialized_schema))
    batches = [
        pa.ipc.read_record_batch(pa.py_buffer(r.arrow_record_batch.serialized_record_batch), schema)
        for r in responses[1:]
    ]
    assert pa.Table.from_batches(batches, schema).to_pydict() == {"k": [10, 20], "v": ["x", "y"]}
