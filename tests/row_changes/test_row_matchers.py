"""The partition matcher on files just written (OVERWRITE_PARTITIONS), against a real table.

A data file pyiceberg has just written carries no ``spec_id`` (only files read from a
manifest do): reading it raised AttributeError, which would have failed every
OVERWRITE_PARTITIONS write with INTERNAL.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import LongType, NestedField, StringType

from lakehouse.adapters.iceberg.row_changes import RewriteCache, write_rows
from lakehouse.adapters.iceberg.row_matchers import partition_matcher


def test_partition_matcher_decides_files_by_the_partitions_written(tmp_path: Path) -> None:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=(tmp_path / "w").as_uri())
    catalog.create_namespace("n")
    schema = Schema(
        NestedField(1, "id", LongType(), required=True), NestedField(2, "part", StringType())
    )
    spec = PartitionSpec(PartitionField(2, 1000, IdentityTransform(), "part"))
    table = catalog.create_table(("n", "t"), schema, partition_spec=spec)
    arrow = schema.as_arrow()
    table.append(pa.table({"id": [1, 2, 3], "part": ["a", "b", "c"]}, schema=arrow))
    data = pa.table({"id": [10], "part": ["b"]}, schema=arrow)

    added = write_rows(table, data, RewriteCache())
    matcher = partition_matcher(table, data, added)

    assert matcher.decide is not None
    decided = {
        task.file.partition[0]: matcher.decide(task.file) for task in table.scan().plan_files()
    }
    assert decided == {"a": False, "b": True, "c": False}
