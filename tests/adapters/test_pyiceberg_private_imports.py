"""Contract tests of the private pyiceberg API that ``lakehouse.adapters.pyiceberg_private`` wraps.

pyiceberg is pinned below 0.13 because the service relies on names it does not promise to keep.
Each test here names one private name, what the wrapper relies on it doing, and fails loudly
(with the wrapper to update) when an upgrade removes it or changes that. They run on a real
SQLite catalog and local warehouse; nothing is mocked.
"""

from __future__ import annotations

import inspect
import itertools
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io import pyarrow as pyiceberg_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.update import AssertCurrentSchemaId, AssertDefaultSpecId
from pyiceberg.types import LongType, NestedField, StringType

from lakehouse.adapters.pyiceberg_private.commits import add_commit_requirements
from lakehouse.adapters.pyiceberg_private.writes import write_data_files

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType(), required=False),
)
ROWS = pa.table(
    {"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]},
    schema=pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())]),
)


@pytest.fixture
def table(tmp_path: Path) -> Table:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=tmp_path.as_uri())
    catalog.create_namespace("ns")
    return catalog.create_table(("ns", "t"), SCHEMA)


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


# -- Transaction._apply (add_commit_requirements) -------------------------------------------------


def test_transaction_apply_keeps_its_updates_then_requirements_signature() -> None:
    assert hasattr(Transaction, "_apply"), (
        "pyiceberg removed Transaction._apply: update add_commit_requirements"
    )
    assert _parameters(Transaction._apply)[:3] == ["self", "updates", "requirements"], (
        "Transaction._apply changed its parameters: update add_commit_requirements"
    )


def test_a_requirement_added_to_a_transaction_is_checked_by_the_catalog_at_commit(
    table: Table,
) -> None:
    """What the import commit relies on: a schema change between its check and its commit
    fails the commit instead of appending files written against the old schema."""
    tx = table.transaction()
    add_commit_requirements(
        tx,
        AssertCurrentSchemaId(current_schema_id=table.metadata.current_schema_id),
        AssertDefaultSpecId(default_spec_id=table.metadata.default_spec_id),
    )
    with table.update_schema() as update:  # a concurrent writer changes the schema
        update.add_column("late", StringType())
    tx.set_properties({"touched": "yes"})
    with pytest.raises(CommitFailedException):
        tx.commit_transaction()
    table.refresh()
    assert "touched" not in table.properties


def test_a_requirement_that_holds_lets_the_commit_through(table: Table) -> None:
    tx = table.transaction()
    add_commit_requirements(
        tx, AssertCurrentSchemaId(current_schema_id=table.metadata.current_schema_id)
    )
    tx.set_properties({"touched": "yes"})
    tx.commit_transaction()
    table.refresh()
    assert table.properties["touched"] == "yes"


def test_a_requirement_that_fails_already_is_refused_at_once(table: Table) -> None:
    tx = table.transaction()
    stale = table.metadata.current_schema_id + 1
    with pytest.raises(CommitFailedException):
        add_commit_requirements(tx, AssertCurrentSchemaId(current_schema_id=stale))


# -- _dataframe_to_data_files (write_data_files) -------------------------------------------------


def test_dataframe_to_data_files_keeps_its_name_and_signature() -> None:
    write = getattr(pyiceberg_pyarrow, "_dataframe_to_data_files", None)
    assert write is not None, (
        "pyiceberg removed pyiceberg.io.pyarrow._dataframe_to_data_files: update write_data_files"
    )
    assert _parameters(write)[:5] == ["table_metadata", "df", "io", "write_uuid", "counter"], (
        "_dataframe_to_data_files changed its parameters: update write_data_files"
    )


def test_data_files_written_are_uncommitted_and_hold_the_rows(table: Table) -> None:
    files = list(write_data_files(table.metadata, ROWS, table.io, uuid.uuid4(), itertools.count()))
    assert sum(f.record_count for f in files) == ROWS.num_rows
    assert all(f.file_path.startswith(table.metadata.location) for f in files)
    table.refresh()
    assert table.current_snapshot() is None  # written, not committed
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        for data_file in files:
            append.append_data_file(data_file)
    assert table.scan().to_arrow().sort_by("id").equals(ROWS)
