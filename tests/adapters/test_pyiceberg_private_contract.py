"""Contract tests of the private pyiceberg API behind ``lakehouse.adapters.pyiceberg_private``.

One test per wrapped name, against the pyiceberg installed: when an upgrade removes a name
or changes what the wrapper relies on, the test that names it fails here, not a SQL job in
production. (The location-provider hooks and ``_dataframe_to_data_files`` have theirs in
``tests/hardening/test_table_properties.py`` and ``tests/hardening/test_stalled_readers.py``.)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.io import FileIO
from pyiceberg.io import pyarrow as pyiceberg_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import Transaction
from pyiceberg.table.update import update_table_metadata
from pyiceberg.types import LongType, NestedField, StringType

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.pyiceberg_private.commits import (
    cheap_commits,
    is_stale_sequence_number,
    transaction,
    updated_metadata,
)
from lakehouse.adapters.pyiceberg_private.writes import check_arrow_schema_fits, transaction_io

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType(), required=False),
)


@pytest.fixture
def catalog(local_settings: Any) -> Catalog:
    """A pyiceberg catalog on the embedded default (SQLite, local warehouse)."""
    Path(local_settings.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(local_settings)
    catalog.create_namespace("contract")
    return catalog


def test_check_pyarrow_schema_compatible_checks_what_an_append_would() -> None:
    """``_check_pyarrow_schema_compatible(requested, provided_schema=, format_version=)``."""
    parameters = inspect.signature(pyiceberg_pyarrow._check_pyarrow_schema_compatible).parameters
    assert {"provided_schema", "format_version"} <= set(parameters)

    fits = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())])
    check_arrow_schema_fits(SCHEMA, fits, format_version=2)
    # An optional column may be left out; a narrower integer is promoted, as append does.
    check_arrow_schema_fits(
        SCHEMA, pa.schema([pa.field("id", pa.int32(), nullable=False)]), format_version=2
    )
    # What the DuckDB engine turns into "the result does not fit table ...": a ValueError.
    with pytest.raises(ValueError, match="id"):
        check_arrow_schema_fits(SCHEMA, pa.schema([("id", pa.string())]), format_version=2)
    with pytest.raises(ValueError):
        check_arrow_schema_fits(SCHEMA, pa.schema([("name", pa.string())]), format_version=2)
    with pytest.raises(ValueError):
        check_arrow_schema_fits(
            SCHEMA,
            pa.schema([pa.field("id", pa.int64(), nullable=False), ("extra", pa.string())]),
            format_version=2,
        )


def test_transaction_table_is_the_table_the_transaction_changes(catalog: Catalog) -> None:
    """``Transaction._table``: its ``io`` writes where the table, new or existing, lives."""
    table = catalog.create_table(("contract", "existing"), SCHEMA)
    transaction = table.transaction()
    assert isinstance(transaction, Transaction) and transaction._table is table
    assert transaction_io(transaction) is table.io

    created = catalog.create_table_transaction(("contract", "created"), SCHEMA)
    io = transaction_io(created)
    assert isinstance(io, FileIO)
    location = f"{created.table_metadata.location}/data/probe.bin"
    with io.new_output(location).create() as stream:
        stream.write(b"probe")
    assert io.new_input(location).exists()
    io.delete(location)


ROWS_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])


def test_a_memoized_transaction_sees_every_staged_change_and_commits_as_pyiceberg(
    catalog: Catalog,
) -> None:
    """``Transaction._table`` and ``_updates`` (a tuple ``_apply`` replaces): the memoized
    ``table_metadata`` is pyiceberg's own after each staged change, computed once per change,
    and a commit through it lands as one through ``table.transaction()`` would."""
    table = catalog.create_table(("contract", "memo"), SCHEMA)
    table.append(pa.table({"id": [1], "name": ["a"]}, schema=ROWS_SCHEMA))
    table = catalog.load_table(("contract", "memo"))
    tx = transaction(table)
    before = tx.table_metadata
    assert tx.table_metadata is before  # nothing staged: the same result, not a new copy
    assert before == Transaction(table).table_metadata

    tx.set_properties(owner="contract")
    staged = tx.table_metadata
    assert staged is not before and staged.properties["owner"] == "contract"
    # pyiceberg stamps last_updated_ms with the clock on each computation: two computations
    # may fall in different milliseconds, so the stamp is left out of the comparison.
    expected = update_table_metadata(table.metadata, tx._updates)
    assert staged.model_copy(update={"last_updated_ms": 0}) == expected.model_copy(
        update={"last_updated_ms": 0}
    )

    with tx.update_snapshot().fast_append() as append:
        for data_file in _data_files(
            table, pa.table({"id": [2], "name": ["b"]}, schema=ROWS_SCHEMA)
        ):
            append.append_data_file(data_file)
    tx.commit_transaction()
    committed = catalog.load_table(("contract", "memo"))
    assert committed.properties["owner"] == "contract"
    assert sorted(committed.scan().to_arrow().column("id").to_pylist()) == [1, 2]
    assert len(committed.snapshots()) == 2


def test_updated_metadata_is_pyiceberg_update_without_the_deep_copy(catalog: Catalog) -> None:
    """``_apply_table_update`` and ``_TableMetadataUpdateContext``: the updates of an append
    (a snapshot, the branch moved) give pyiceberg's metadata, sharing the snapshots it kept
    with the base and leaving the base as it was."""
    table = catalog.create_table(("contract", "updated"), SCHEMA)
    table.append(pa.table({"id": [1], "name": ["a"]}, schema=ROWS_SCHEMA))
    table = catalog.load_table(("contract", "updated"))
    base = table.metadata
    assert updated_metadata(base, ()) is base
    tx = Transaction(table)
    with tx.update_snapshot().fast_append() as append:
        for data_file in _data_files(
            table, pa.table({"id": [2], "name": ["b"]}, schema=ROWS_SCHEMA)
        ):
            append.append_data_file(data_file)
    updates = tx._updates
    assert updates, "the append staged no update"
    ours = updated_metadata(base, updates)
    expected = update_table_metadata(base, updates)
    assert ours.model_copy(update={"last_updated_ms": 0}) == expected.model_copy(
        update={"last_updated_ms": 0}
    )
    assert len(ours.snapshots) == 2 and ours.snapshots[0] is base.snapshots[0]
    assert len(base.snapshots) == 1 and base == catalog.load_table(("contract", "updated")).metadata


def test_cheap_commits_stage_what_pyiceberg_stages(catalog: Catalog) -> None:
    """``MetastoreCatalog._update_and_stage_table(current, identifier, requirements,
    updates)``, ``_parse_metadata_version`` and ``_load_file_io``: an existing table's commit
    is staged as pyiceberg stages it (metadata log, next version's location), and commits
    through the catalog land; a new table is still created by pyiceberg's own code."""
    identifier = ("contract", "cheap")
    original = type(catalog)._update_and_stage_table.__get__(catalog)
    cheap_commits(catalog)
    table = catalog.create_table(identifier, SCHEMA)
    table.append(pa.table({"id": [1], "name": ["a"]}, schema=ROWS_SCHEMA))
    table = catalog.load_table(identifier)
    tx = Transaction(table)
    tx.set_properties(owner="contract")
    with tx.update_snapshot().fast_append() as append:
        for data_file in _data_files(
            table, pa.table({"id": [2], "name": ["b"]}, schema=ROWS_SCHEMA)
        ):
            append.append_data_file(data_file)
    staged = catalog._update_and_stage_table(table, identifier, tx._requirements, tx._updates)  # type: ignore[attr-defined]
    expected = original(table, identifier, tx._requirements, tx._updates)
    version = expected.metadata_location.rsplit("/", 1)[1].split("-")[0]  # "00002"
    assert staged.metadata_location.rsplit("/", 1)[1].startswith(f"{version}-")
    assert staged.metadata.model_copy(update={"last_updated_ms": 0}) == (
        expected.metadata.model_copy(update={"last_updated_ms": 0})
    )
    assert staged.metadata.metadata_log[-1].metadata_file == table.metadata_location

    tx.commit_transaction()
    committed = catalog.load_table(identifier)
    assert committed.properties["owner"] == "contract"
    assert sorted(committed.scan().to_arrow().column("id").to_pylist()) == [1, 2]
    assert committed.metadata_location.rsplit("/", 1)[1].startswith(f"{version}-")


def _data_files(table: Any, data: pa.Table) -> list[Any]:
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    return list(_dataframe_to_data_files(table_metadata=table.metadata, df=data, io=table.io))


# -- names the replace producer and the per-file scan rely on ----------------------------------


def _private_names() -> list[tuple[Any, str, tuple[str, ...] | None]]:
    from pyiceberg.table.update import snapshot, validate

    """(owner, attribute, the parameter names it must start with, or None: only exists)."""
    return [
        # ReplaceFiles (pyiceberg_private.commits) subclasses _OverwriteFiles and overrides:
        (snapshot, "_OverwriteFiles", None),
        (snapshot._OverwriteFiles, "_existing_manifests", ("self",)),
        (snapshot._OverwriteFiles, "_deleted_entries", ("self",)),
        (snapshot._OverwriteFiles, "_summary", ("self", "snapshot_properties")),
        (snapshot._OverwriteFiles, "_build_delete_files_partition_predicate", ("self",)),
        (snapshot._OverwriteFiles, "_validate_concurrency", ("self",)),
        (snapshot._OverwriteFiles, "_build_manifest_evaluator", ("self", "spec_id")),
        (snapshot, "CommitWindow", None),
        (validate, "_validate_data_files_exist", None),
        (validate, "_validate_no_new_deletes_for_data_files", None),
        # scans: one file read as pyiceberg's scan reads it.
        (pyiceberg_pyarrow, "_read_all_delete_files", ("io", "tasks")),
        (pyiceberg_pyarrow, "_combine_positional_deletes", None),
        (pyiceberg_pyarrow, "_get_column_projection_values", None),
        (pyiceberg_pyarrow, "_to_requested_schema", None),
        (
            pyiceberg_pyarrow.ArrowScan,
            "_record_batches_from_scan_tasks_and_deletes",
            ("self", "tasks", "deletes_per_file"),
        ),
    ]


def test_the_private_names_the_wrappers_rely_on_are_there() -> None:
    missing = []
    for owner, name, parameters in _private_names():
        value = getattr(owner, name, None)
        if value is None:
            missing.append(f"{getattr(owner, '__name__', owner)}.{name} is gone")
            continue
        if parameters is not None:
            found = tuple(inspect.signature(value).parameters)
            if found[: len(parameters)] != parameters:
                missing.append(f"{name} takes {found}, not {parameters}")
    assert missing == [], "pyiceberg changed what pyiceberg_private relies on: " + "; ".join(
        missing
    )


def test_an_arrow_scan_keeps_the_state_the_per_file_reader_reads(catalog: Catalog) -> None:
    table = catalog.create_table(("contract", "scan_state"), schema=SCHEMA)
    scan = table.scan(row_filter="id > 1", selected_fields=("id",))
    arrow = pyiceberg_pyarrow.ArrowScan(
        table.metadata, table.io, scan.projection(), scan.row_filter, scan.case_sensitive, None
    )
    for attribute in (
        "_projected_schema",
        "_bound_row_filter",
        "_case_sensitive",
        "_projected_field_ids",
        "_downcast_ns_timestamp_to_us",
    ):
        assert hasattr(arrow, attribute), f"ArrowScan.{attribute} is gone"


def test_a_snapshot_numbered_on_stale_metadata_is_refused_with_the_text_we_recognise(
    catalog: Catalog,
) -> None:
    """``is_stale_sequence_number``: pyiceberg refuses a branch commit planned before another
    branch moved with a ``ValueError`` known only by its text; the wrapper must recognise it
    (and nothing else), or a lost race between branches surfaces as an error to the caller."""
    table = catalog.create_table(("contract", "stale"), SCHEMA)
    table.append(pa.table({"id": [1], "name": ["a"]}, schema=ROWS_SCHEMA))
    head = table.metadata.current_snapshot_id
    assert head is not None
    table.manage_snapshots().create_branch(head, "audit").commit()
    stale = catalog.load_table(("contract", "stale"))
    table.append(pa.table({"id": [2], "name": ["b"]}, schema=ROWS_SCHEMA))

    tx = stale.transaction()
    tx.append(pa.table({"id": [3], "name": ["c"]}, schema=ROWS_SCHEMA), branch="audit")
    with pytest.raises(ValueError) as refused:
        tx.commit_transaction()
    assert is_stale_sequence_number(refused.value)
    assert not is_stale_sequence_number(ValueError("Cannot add snapshot: some other reason"))
