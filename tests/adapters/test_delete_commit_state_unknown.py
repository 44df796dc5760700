"""A delete whose commit may have happened keeps the files it wrote: they may be the table's.

A REST catalog behind a gateway can commit and then lose its answer (502/504): pyiceberg
raises ``CommitStateUnknownException``. The table may then reference the rewritten files, so
deleting them as "uncommitted" would leave the table pointing at files that do not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitStateUnknownException
from pyiceberg.expressions import EqualTo
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableResponse, Table
from pyiceberg.types import LongType, NestedField

from lakehouse.adapters.iceberg.planned_changes import planned_delete

NAME = ("ns", "t")


class AnswerLostCatalog(SqlCatalog):
    """A SQL catalog whose commits happen but whose answer never arrives, as a REST catalog
    behind a gateway that times out reports it (pyiceberg: ``CommitStateUnknownException``)."""

    def commit_table(self, table: Table, *args: Any, **kwargs: Any) -> CommitTableResponse:
        super().commit_table(table, *args, **kwargs)
        raise CommitStateUnknownException("502 Bad Gateway")


def _catalog(kind: type[SqlCatalog], tmp_path: Path) -> SqlCatalog:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir(exist_ok=True)
    return kind("lakehouse", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=warehouse.as_uri())


def test_a_delete_whose_commit_state_is_unknown_leaves_the_files_it_wrote(
    tmp_path: Path,
) -> None:
    catalog = _catalog(SqlCatalog, tmp_path)
    catalog.create_namespace(NAME[0])
    schema = Schema(NestedField(1, "id", LongType(), required=False))
    table = catalog.create_table(NAME, schema)
    for start in (0, 10):  # two data files; the delete rewrites the first
        table.append(pa.table({"id": pa.array(range(start, start + 10), pa.int64())}))

    lossy = _catalog(AnswerLostCatalog, tmp_path)
    with pytest.raises(CommitStateUnknownException):
        planned_delete(
            lambda: lossy.load_table(NAME),
            EqualTo("id", 3),
            request_id="",
            expected_etag="",
            ledger=None,
            request_id_window_ms=0,
            max_attempts=1,
        )

    # The commit did happen: the table reads, without row 3, from files that all exist.
    after = catalog.load_table(NAME)
    assert after.current_snapshot() != table.current_snapshot()
    ids = sorted(after.scan().to_arrow()["id"].to_pylist())
    assert ids == [i for i in range(20) if i != 3]
    for task in after.scan().plan_files():
        assert Path(task.file.file_path.removeprefix("file://")).exists(), task.file.file_path
