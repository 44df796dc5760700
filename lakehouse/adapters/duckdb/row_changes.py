"""DELETE and UPDATE statements of DuckDB jobs, as matchers for the copy-on-write engine.

The statement's WHERE and SET expressions are evaluated by DuckDB, batch by batch, over the
target table's rows as ``lakehouse.adapters.iceberg.row_changes`` streams them: each batch is
registered on the job's own connection under the target's alias, so the expressions read
exactly as written (columns bare or qualified by the alias) and their subqueries read the
lakehouse tables the job opened, at the snapshot each was loaded at when the job started.
Only the files that hold matching rows are rewritten, and everything lands in one commit
(``lakehouse.adapters.iceberg.planned_changes.planned_change``), planned again on fresh
metadata when a concurrent commit wins the race, so rows appended meanwhile are kept.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table import Table

from lakehouse.adapters.duckdb.statements import RowChange, invalid, quote
from lakehouse.adapters.iceberg.row_changes import RowMatcher

#: The hidden name a batch of the target's rows is registered under while it is evaluated.
BATCH_NAME = "__lakehouse_batch"
#: The column that numbers a batch's rows, so results can be put back in row order.
ROW_NUMBER = "__lakehouse_row"


def change_matcher(con: duckdb.DuckDBPyConnection, change: RowChange, table: Table) -> RowMatcher:
    """The rows ``change`` deletes or updates in ``table``, evaluated by DuckDB on ``con``.

    ``scope`` is every file: the WHERE is DuckDB's SQL, which the scan planner cannot read,
    so each live file is read once to count its matching rows (and only files with some are
    written again).

    Raises:
        InvalidArgument: An UPDATE sets a column the table does not have.
    """
    evaluator = _Evaluator(con, change, table)
    if change.kind == "DELETE":
        return RowMatcher(AlwaysTrue(), evaluator.matches)
    return RowMatcher(
        AlwaysTrue(),
        evaluator.matches,
        replace=evaluator.replace,
        replaced=lambda _batch, mask: int(pc.sum(mask).as_py() or 0),
    )


class _Evaluator:
    """The statement's two SELECTs over one batch: which rows match, and their new values."""

    def __init__(self, con: duckdb.DuckDBPyConnection, change: RowChange, table: Table) -> None:
        self._con = con
        self._mask_query = change.query(BATCH_NAME, [ROW_NUMBER])
        schema = table.schema()
        by_folded = {f.name.casefold(): f for f in schema.fields}
        self._assigned: list[tuple[str, bool]] = []
        items = [ROW_NUMBER]
        arrow_schema = schema.as_arrow()
        types = self._duckdb_types(arrow_schema)
        for i, (column, expression) in enumerate(change.assignments):
            field = by_folded.get(column.casefold())
            if field is None:
                raise invalid(f"table {'.'.join(table.name())} has no column {column!r}")
            type_text = types[arrow_schema.get_field_index(field.name)]
            # Cast as DuckDB's own UPDATE would: the SET value takes the column's type.
            items.append(f"CAST((\n{expression}\n) AS {type_text}) AS {quote(f'c{i}')}")
            self._assigned.append((field.name, field.required))
        self._update_query = f"{change.query(BATCH_NAME, items, where=False)} ORDER BY 1"

    def _duckdb_types(self, arrow_schema: pa.Schema) -> list[str]:
        self._con.register(BATCH_NAME, arrow_schema.empty_table())
        try:
            return [str(t) for t in self._con.sql(f"SELECT * FROM {BATCH_NAME}").types]
        finally:
            self._con.unregister(BATCH_NAME)

    def _run(self, query: str, batch: pa.RecordBatch) -> pa.Table:
        numbered = batch.append_column(ROW_NUMBER, _row_numbers(batch.num_rows))
        self._con.register(BATCH_NAME, numbered)
        try:
            return self._con.sql(query).to_arrow_table()
        finally:
            self._con.unregister(BATCH_NAME)

    def matches(self, batch: pa.RecordBatch) -> pa.Array:
        """The rows of ``batch`` for which the WHERE is true (NULL does not match, as in SQL)."""
        rows = self._run(self._mask_query, batch)[ROW_NUMBER].combine_chunks()
        return pc.is_in(_row_numbers(batch.num_rows), value_set=rows)

    def replace(self, batch: pa.RecordBatch) -> pa.Table:
        """``batch`` (the matching rows) with the SET columns given their new values.

        Raises:
            InvalidArgument: A required column would be set to NULL.
        """
        result = self._run(self._update_query, batch)
        if result.num_rows != batch.num_rows:  # pragma: no cover - one row out per row in
            raise AssertionError("the UPDATE's SELECT changed the number of rows")
        updated = pa.Table.from_batches([batch])
        for i, (name, required) in enumerate(self._assigned):
            index = updated.schema.get_field_index(name)
            field = updated.schema.field(index)
            values = result[f"c{i}"].cast(field.type)
            if required and values.null_count:
                raise invalid(f"column {name!r} is required: UPDATE cannot set it to NULL")
            updated = updated.set_column(index, field, values)
        return updated


def _row_numbers(count: int) -> pa.Array:
    return pa.array(range(count), pa.int64())
