"""OVERWRITE_PARTITIONS' matcher: files of the current spec decided by their partition, rows of
files of an older spec by the partition their values fall in under the current one."""

from __future__ import annotations

import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

from lakehouse.adapters.iceberg.row_matchers import _distinct_partitions, partition_matcher


def test_distinct_partitions_are_the_distinct_value_tuples_nulls_included() -> None:
    days = pa.array([1, 2, 1, None, 2, None], pa.int32())
    regions = pa.chunked_array([["eu", "us", "eu"], [None, "eu", None]])
    assert _distinct_partitions([days, regions]) == {(1, "eu"), (2, "us"), (None, None), (2, "eu")}


def test_rows_of_an_older_spec_match_by_their_partition_under_the_current_one(
    tmp_path: Path,
) -> None:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=tmp_path.as_uri())
    catalog.create_namespace("ns")
    old = pa.table({"id": [1, 2, 3, 4], "region": ["eu", "us", "apac", None]})
    table = catalog.create_table(("ns", "t"), schema=old.schema)
    table.append(old)  # written unpartitioned (spec 0)
    with table.update_spec() as spec:
        spec.add_identity("region")
    table = catalog.load_table(("ns", "t"))
    sent = pa.table({"id": [9, 10], "region": ["us", None]})

    matcher = partition_matcher(table, sent, [])
    (task,) = table.scan().plan_files()

    assert matcher.decide is not None and matcher.decide(task.file) is None  # read it
    mask = matcher.matches(old.to_batches()[0])
    assert mask.to_pylist() == [False, True, False, True]
    assert pc.sum(mask).as_py() == 2


def test_the_scope_plans_only_the_files_of_the_partitions_sent(tmp_path: Path) -> None:
    """The scan planner skips the manifests and files of other partitions (an ingested table
    has a manifest per commit), nulls included; the files it keeps are then decided."""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=tmp_path.as_uri())
    catalog.create_namespace("ns")
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("day", pa.date32())])
    table = catalog.create_table(("ns", "t"), schema=schema)
    with table.update_spec() as spec:
        spec.add_identity("day")
    table = catalog.load_table(("ns", "t"))
    days = [datetime.date(2026, 1, d) for d in (1, 2, 3)] + [None]
    for i, day in enumerate(days):  # one commit, one manifest, one file per day
        table.append(pa.table({"id": [i], "day": pa.array([day], pa.date32())}, schema=schema))
    sent = pa.table({"id": [7, 8], "day": pa.array([days[1], None], pa.date32())}, schema=schema)
    added = list(_dataframe_to_data_files(table_metadata=table.metadata, df=sent, io=table.io))

    matcher = partition_matcher(table, sent, added)
    planned = list(table.scan(row_filter=matcher.scope).plan_files())

    assert sorted(t.file.record_count for t in planned) == [1, 1]
    assert {t.file.partition[0] for t in planned} == {
        None,
        (days[1] - datetime.date(1970, 1, 1)).days,
    }
    assert matcher.decide is not None and all(matcher.decide(t.file) for t in planned)
