"""The copy-on-write engine of row changes, on real catalogs (both backends)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from fixtures.maintenance import batch, create_table, maintenance_catalog, stored_files
from lakehouse.adapters.iceberg.row_changes import RewriteCache, write_rows


def test_rows_that_no_longer_fit_the_schema_write_no_file(backend: Any) -> None:
    """Rows checked against an older schema (a column since dropped) are refused, as
    pyiceberg's append refuses them, before a file is written."""
    catalog = maintenance_catalog(backend)
    table = create_table(catalog, "drifted")
    table.append(batch(0, 5))
    before = stored_files(backend, table)
    stale = batch(10, 3).append_column("dropped", pa.array([1, 2, 3], pa.int64()))

    with pytest.raises(ValueError):
        write_rows(table, stale, RewriteCache())

    assert stored_files(backend, table) == before
