"""Which rows a change removes: by filter (DeleteRows, OVERWRITE), by partition, by key (UPSERT).

Each builds a ``RowMatcher`` for ``lakehouse.adapters.iceberg.row_changes``: a ``scope`` for
the scan planner to prune files with, the columns to read, and the per-batch mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    BoundIn,
    BoundIsNull,
    BoundNotIn,
    GreaterThanOrEqual,
    In,
    IsNull,
    LessThanOrEqual,
    Not,
    Or,
)
from pyiceberg.expressions.visitors import bind, extract_field_ids
from pyiceberg.io.pyarrow import expression_to_pyarrow
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record

from lakehouse.adapters.iceberg.row_changes import RowMatcher
from lakehouse.domain.errors import FailedPrecondition

#: Up to this many distinct key values prune files by value (an IN); above, by range only.
IN_SCOPE_VALUES = 1_000


def filter_matcher(table: Table, row_filter: BooleanExpression) -> RowMatcher:
    """The rows ``row_filter`` matches; a row for which it is NULL is kept, as in SQL."""
    schema = table.schema()
    bound = bind(schema, row_filter, case_sensitive=True)
    expression = sql_nulls(bound, schema)
    columns = tuple(sorted({schema.find_column_name(i) or "" for i in extract_field_ids(bound)}))

    def matches(batch: pa.RecordBatch) -> pa.Array:
        return evaluate(batch, expression)

    # A filter without columns (TRUE, FALSE) still needs a column to count rows by.
    return RowMatcher(row_filter, matches, columns or _first_column(table))


def sql_nulls(bound: BooleanExpression, schema: Schema) -> pc.Expression:
    """The Arrow expression of a bound filter, where IN and NOT IN give NULL for a NULL value.

    Arrow's ``is_in`` answers false for a null, so ``NOT (x IN (...))`` (and ``x NOT IN``,
    its negation) would be true for a row whose ``x`` is NULL, and delete it; in SQL both
    are NULL and the row is kept. Every other predicate already propagates NULL.
    """
    if isinstance(bound, And):
        return sql_nulls(bound.left, schema) & sql_nulls(bound.right, schema)
    if isinstance(bound, Or):
        return sql_nulls(bound.left, schema) | sql_nulls(bound.right, schema)
    if isinstance(bound, Not):
        return ~sql_nulls(bound.child, schema)
    expression = expression_to_pyarrow(bound, schema)
    if isinstance(bound, (BoundIn, BoundNotIn)):
        is_null = expression_to_pyarrow(cast(Any, BoundIsNull)(bound.term), schema)
        return cast(pc.Expression, pc.if_else(is_null, pa.scalar(None, pa.bool_()), expression))
    return expression


def evaluate(batch: pa.RecordBatch, expression: pc.Expression) -> pa.Array:
    """``expression`` evaluated on each row of ``batch``, NULL as false.

    Arrow evaluates an expression only in a dataset projection; a one-batch dataset costs
    nothing to build.
    """
    evaluated = ds.dataset(pa.Table.from_batches([batch])).to_table(columns={"m": expression})
    return pc.fill_null(evaluated["m"].combine_chunks(), False)


def partition_matcher(table: Table, data: pa.Table, added: Sequence[DataFile]) -> RowMatcher:
    """The rows in the partitions (current spec) that ``data``, written as ``added``, falls in.

    A file of the current spec is decided by its partition alone (removed whole or left); a
    file of an older spec is read, and each row's partition under the current spec computed
    from its source columns.

    Raises:
        FailedPrecondition: The table is not partitioned (TABLE_NOT_PARTITIONED), or a
            transform of its spec cannot be computed here.
    """
    spec = table.spec()
    if spec.is_unpartitioned():
        raise FailedPrecondition(
            f"table {'.'.join(table.name())} is not partitioned: OVERWRITE_PARTITIONS "
            "replaces the partitions the rows fall in; use OVERWRITE with a filter",
            reason="TABLE_NOT_PARTITIONED",
        )
    schema = table.schema()
    sources = [schema.find_column_name(f.source_id) or "" for f in spec.fields]
    transforms = []
    for f in spec.fields:
        source_type = schema.find_type(f.source_id)
        try:
            transforms.append(f.transform.pyarrow_transform(source_type))
        except (NotImplementedError, ModuleNotFoundError, ValueError) as exc:
            raise FailedPrecondition(
                f"cannot compute partition transform {f.transform} here: {exc}",
                reason="FAILED_PRECONDITION",
            ) from exc
    # ``added`` were written for the current spec (ChangeCommitter writes them again after a
    # spec change); a freshly written DataFile has no spec_id to compare (AttributeError).
    touched_records = {_values(f.partition) for f in added}

    def partitions(batch: pa.RecordBatch | pa.Table) -> list[tuple[Any, ...]]:
        columns = [
            t(_column(batch, name)).to_pylist() for t, name in zip(transforms, sources, strict=True)
        ]
        return list(zip(*columns, strict=True))

    # The partitions of the rows sent matter only for files of an older spec, so they are
    # computed on first need, and as distinct values: one Python tuple per row took half
    # the commit of a 100k-row reload that never needed them (bench overwrite_partitions).
    touched_rows: set[tuple[Any, ...]] | None = None

    def decide(file: DataFile) -> bool | None:
        if file.spec_id == spec.spec_id:
            return _values(file.partition) in touched_records
        return None

    def matches(batch: pa.RecordBatch) -> pa.Array:
        nonlocal touched_rows
        if touched_rows is None:
            touched_rows = _distinct_partitions(
                [t(_column(data, name)) for t, name in zip(transforms, sources, strict=True)]
            )
        return pa.array([p in touched_rows for p in partitions(batch)], pa.bool_())

    scope = _partitions_scope(schema, spec, touched_records)
    return RowMatcher(scope, matches, tuple(sorted(set(sources))), decide=decide)


def _partitions_scope(
    schema: Schema, spec: PartitionSpec, partitions: set[tuple[Any, ...]]
) -> BooleanExpression:
    """A filter that lets the scan planner skip what cannot hold a row of ``partitions``.

    Every manifest and file is skipped unless it may: the identity fields' source values, by
    IN (one of them: the same
    pruning as pyiceberg's ``dynamic_partition_overwrite``, which reads only the manifests
    whose partition ranges hold a reloaded day). Other transforms are not turned back into
    source ranges: they only narrow what ``decide`` then decides exactly. AlwaysTrue when
    nothing can be pruned this way (no identity field, too many partitions, a value the
    filter cannot bind).
    """
    identity = [
        (i, schema.find_column_name(f.source_id))
        for i, f in enumerate(spec.fields)
        if isinstance(f.transform, IdentityTransform)
    ]
    if not identity or not partitions or len(partitions) > IN_SCOPE_VALUES:
        return AlwaysTrue()
    scope: BooleanExpression = AlwaysTrue()
    for i, name in identity:
        if name is None:
            return AlwaysTrue()
        values = {p[i] for p in partitions}
        present = {v for v in values if v is not None}
        # pyiceberg's expression constructors are typed for bound terms; names bind later.
        field: BooleanExpression = cast(Any, In)(name, present) if present else AlwaysFalse()
        if None in values:
            field = Or(field, cast(Any, IsNull)(name))
        scope = And(scope, field)
    try:
        bind(schema, scope, case_sensitive=True)
    except (TypeError, ValueError):  # a partition value the filter cannot hold as a literal
        return AlwaysTrue()
    return scope


def _distinct_partitions(columns: list[pa.Array | pa.ChunkedArray]) -> set[tuple[Any, ...]]:
    """The distinct rows of the partition value ``columns``, as tuples."""
    names = [f"p{i}" for i in range(len(columns))]
    values = pa.table(dict(zip(names, columns, strict=True)))
    # A type Arrow cannot group by keeps every row: the set below deduplicates them.
    with contextlib.suppress(pa.ArrowNotImplementedError, pa.ArrowTypeError):
        values = values.group_by(names).aggregate([])
    return set(zip(*(values[n].to_pylist() for n in names), strict=True))


def key_matcher(
    table: Table, keys: tuple[str, ...], changes: pa.Table, replacing: pa.Array
) -> RowMatcher:
    """The rows whose key (``keys`` columns) is one of ``changes``'.

    ``replacing`` marks the changes that replace their key's row (UPSERT, the others
    delete it): the removed rows of those keys count as updated.
    """
    wanted = key_values(changes, keys)
    replaced_keys = pc.filter(wanted, replacing)

    def matches(batch: pa.RecordBatch) -> pa.Array:
        return pc.fill_null(pc.is_in(key_values(batch, keys), value_set=wanted), False)

    def replaced(batch: pa.RecordBatch, mask: pa.Array) -> int:
        doomed = batch.filter(mask)
        hit = pc.is_in(key_values(doomed, keys), value_set=replaced_keys)
        return int(pc.sum(hit).as_py() or 0)

    return RowMatcher(_key_scope(changes, keys), matches, tuple(keys), replaced=replaced)


def key_values(data: pa.RecordBatch | pa.Table, keys: Sequence[str]) -> pa.Array:
    """One comparable value per row for its key.

    A single key column is used as it is; a composite key becomes a string of its parts,
    each prefixed by its length, so that no two different keys give the same string.
    """
    if len(keys) == 1:
        column = _column(data, keys[0])
        return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    parts = []
    for name in keys:
        text = pc.cast(_column(data, name), pa.string())
        length = pc.cast(pc.utf8_length(text), pa.string())
        parts.extend([length, pa.scalar(":"), text])
    joined = pc.binary_join_element_wise(*parts, "|")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _key_scope(changes: pa.Table, keys: Sequence[str]) -> BooleanExpression:
    """Files that may hold one of the keys: by value for a few, by range for many."""
    scope: BooleanExpression = AlwaysTrue()
    for name in keys:
        column = _column(changes, name)
        distinct = pc.unique(column).drop_null()
        if len(distinct) == 0:
            continue
        try:
            if len(distinct) <= IN_SCOPE_VALUES:
                part: BooleanExpression = cast(Any, In)(name, distinct.to_pylist())
            else:
                bounds = pc.min_max(distinct)
                part = And(
                    cast(Any, GreaterThanOrEqual)(name, bounds["min"].as_py()),
                    cast(Any, LessThanOrEqual)(name, bounds["max"].as_py()),
                )
            scope = And(scope, part)
        except (TypeError, ValueError):
            continue  # a type pyiceberg has no literal for: no pruning on that column
    return scope


def _column(data: pa.RecordBatch | pa.Table, dotted: str) -> pa.Array | pa.ChunkedArray:
    """The column at a dotted path (struct fields by name)."""
    head, *rest = dotted.split(".")
    column = data.column(head)
    for name in rest:
        column = pc.struct_field(column, name)
    return column


def _values(record: Record) -> tuple[Any, ...]:
    return tuple(record[i] for i in range(len(record)))


def _first_column(table: Table) -> tuple[str, ...]:
    return (table.schema().fields[0].name,)
