"""DELETE and UPDATE statements of DuckDB jobs, as matchers for the copy-on-write engine.

The statement's WHERE and SET expressions are evaluated by DuckDB, batch by batch, over the
target table's rows as ``lakehouse.adapters.iceberg.row_changes`` streams them: each batch is
registered on the job's own connection under the target's alias, so the expressions read
exactly as written (columns bare or qualified by the alias) and their subqueries read the
lakehouse tables the job opened, at the snapshot each was loaded at when the job started.
Only the files that hold matching rows are rewritten, and everything lands in one commit
(``lakehouse.adapters.iceberg.planned_changes.planned_change``), planned again on fresh
metadata when a concurrent commit wins the race, so rows appended meanwhile are kept.

Which files to read, and which of their columns, DuckDB says itself: the statement's WHERE
first runs once over a probe of the target that has its columns but no rows, and records
the scans DuckDB asks of it, with the predicates it pushes down (``pushdown``, the same
translation the job's reads use) and the columns it needs. The pushed predicates hold for
every matching row, so they prune files by partition and column statistics; the counting
pass reads only the columns the WHERE uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from duckdb._sources import ArrowScanSource
from duckdb._sources.nodes import Node
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, Or
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from lakehouse.adapters.duckdb.parse_tree import invalid, quote
from lakehouse.adapters.duckdb.pushdown import to_iceberg
from lakehouse.adapters.duckdb.row_statements import RowChange
from lakehouse.adapters.iceberg.row_changes import RowMatcher
from lakehouse.adapters.iceberg.scan import small_offsets

#: The hidden name a batch of the target's rows is registered under while it is evaluated.
BATCH_NAME = "__lakehouse_batch"
#: The column that numbers a batch's rows, so results can be put back in row order.
ROW_NUMBER = "__lakehouse_row"
#: The hidden name of the probe the WHERE runs over once, to learn what it reads.
PROBE_NAME = "__lakehouse_probe"


def change_matcher(con: duckdb.DuckDBPyConnection, change: RowChange, table: Table) -> RowMatcher:
    """The rows ``change`` deletes or updates in ``table``, evaluated by DuckDB on ``con``.

    Each file the WHERE's pushed-down predicates do not rule out is read once, only the
    columns the WHERE uses, to count its matching rows; only files with some are written
    again.

    Raises:
        InvalidArgument: An UPDATE sets a column the table does not have.
    """
    evaluator = _Evaluator(con, change, table)
    scope, _ = _probe(con, change, table, pushdown=True)
    _, columns = _probe(con, change, table, pushdown=False)
    # One DuckDB connection evaluates every batch: it refuses a second caller, so files are
    # rewritten one at a time.
    if change.kind == "DELETE":
        return RowMatcher(scope, evaluator.matches, columns, concurrent=False)
    return RowMatcher(
        scope,
        evaluator.matches,
        columns,
        replace=evaluator.replace,
        replaced=lambda _batch, mask: int(pc.sum(mask).as_py() or 0),
        concurrent=False,
    )


def _probe(
    con: duckdb.DuckDBPyConnection, change: RowChange, table: Table, *, pushdown: bool
) -> tuple[BooleanExpression, tuple[str, ...] | None]:
    """What DuckDB reads of the target to evaluate the WHERE: a dry run over no rows.

    With ``pushdown`` the predicates it pushes (their AND, and an OR over scans); without,
    every column it needs (it then evaluates the whole WHERE itself). A WHERE that DuckDB
    decides without scanning gives no answer: every file, every column.
    """
    probe = _ScanProbe(table, pushdown=pushdown)
    with _registered(con, PROBE_NAME, probe):
        con.sql(change.query(PROBE_NAME, ["1"])).to_arrow_table()
    if not probe.scans:
        return AlwaysTrue(), None
    scope: BooleanExpression | None = None
    needed: list[str] = []
    for columns, expression in probe.scans:
        scope = expression if scope is None else Or(scope, expression)
        needed.extend(c for c in columns if c not in needed)
    assert scope is not None
    return scope, tuple(needed) or None


class _ScanProbe(ArrowScanSource):
    """The target's columns and no rows, recording each scan DuckDB asks of it."""

    schema_is_stable = True

    def __init__(self, table: Table, *, pushdown: bool) -> None:
        super().__init__(table)
        self._schema = small_offsets(schema_to_pyarrow(table.schema()))
        self._types = {f.name: f.field_type for f in table.schema().fields}
        self._pushdown = pushdown
        self.scans: list[tuple[list[str], BooleanExpression]] = []

    def __arrow_c_schema__(self) -> object:
        return self._schema.__arrow_c_schema__()

    def accepts(self, predicate: Node) -> bool:
        """Takes what the job's table scans take (``pushdown.to_iceberg``), when asked to."""
        if not self._pushdown:
            return False
        try:
            return to_iceberg(predicate, self._types) is not None
        except Exception:  # a node shape we do not know: DuckDB keeps the predicate
            return False

    def stream(self, columns: Sequence[int] | None, filters: Sequence[Node]) -> tuple[object, bool]:
        """Records the columns and predicates of the scan; no rows."""
        names = self._schema.names
        wanted = [names[i] for i in columns] if columns else list(names)
        expression: BooleanExpression = AlwaysTrue()
        for node in filters:
            translated = to_iceberg(node, self._types)
            if translated is None:  # accepted earlier, so translatable: never happens
                raise RuntimeError("a pushed-down filter could not be translated")
            expression = And(expression, translated)
        self.scans.append((wanted, expression))
        return self._schema.empty_table().select(wanted).__arrow_c_stream__(), True


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
        with _registered(self._con, BATCH_NAME, arrow_schema.empty_table()):
            return [str(t) for t in self._con.sql(f"SELECT * FROM {BATCH_NAME}").types]

    def _run(self, query: str, batch: pa.RecordBatch) -> pa.Table:
        numbered = batch.append_column(ROW_NUMBER, _row_numbers(batch.num_rows))
        with _registered(self._con, BATCH_NAME, numbered):
            return self._con.sql(query).to_arrow_table()

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


@contextlib.contextmanager
def _registered(
    con: duckdb.DuckDBPyConnection, name: str, source: pa.Table | pa.RecordBatch | ArrowScanSource
) -> Iterator[None]:
    """``source`` readable as ``name`` on ``con`` for the duration of the block."""
    if isinstance(source, ArrowScanSource):
        con._register_arrow_source(name, source)
    else:
        con.register(name, source)
    try:
        yield
    except BaseException:
        # An error aborts the statement's transaction, and unregistering would then fail
        # too, hiding the error that matters (the job ends with it anyway).
        with contextlib.suppress(duckdb.Error):
            con.unregister(name)
        raise
    con.unregister(name)


def _row_numbers(count: int) -> pa.Array:
    """0, 1, ... count - 1, computed in Arrow (a Python range is ten times slower)."""
    ones = pc.fill_null(pa.nulls(count, pa.int64()), 1)
    return pc.subtract(pc.cumulative_sum(ones), 1)
