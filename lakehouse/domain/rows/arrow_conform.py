"""Arrow rows conformed exactly to a table's schema: vectorized casts, per-row work on failures.

A failing cast is retried on halves of the column until the offending values are isolated,
and the problems and payloads of invalid rows are built lazily, when read.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from lakehouse.domain.json_values import json_value
from lakehouse.domain.rows.problems import DecodedRows, RowErrorReason, RowProblem, type_name
from lakehouse.domain.schemas import schema_to_arrow

#: A failing column cast is bisected to isolate its bad values; past this many cast attempts
#: the rest of the column's unresolved slices are marked invalid as a whole.
MAX_CAST_ATTEMPTS = 20_000
_OUT_OF_RANGE_HINTS = ("not in range", "does not fit", "would lose data", "data loss", "overflow")


@dataclass
class _Issue:
    """A problem found at some positions of one array (a column or a nested child).

    ``mask`` marks the affected positions (``None``: every position); ``details`` overrides
    reason and message for single positions (values that failed a cast one by one).
    """

    mask: pa.BooleanArray | None
    column: str
    reason: RowErrorReason
    message: str
    details: dict[int, tuple[RowErrorReason, str]] = field(default_factory=dict)

    def within(self, valid: pa.BooleanArray | None) -> _Issue:
        """The issue restricted to positions whose parent is not null."""
        if valid is None:
            return self
        mask = valid if self.mask is None else pc.and_(self.mask, valid)
        details = {p: d for p, d in self.details.items() if valid[p].as_py()}
        return _Issue(mask, self.column, self.reason, self.message, details)

    def lifted(self, parents: pa.Array, parent_count: int) -> _Issue:
        """The issue moved from list elements to the lists holding them."""
        rows = parents if self.mask is None else pc.filter(parents, self.mask)
        mask = pc.is_in(_arange(parent_count), value_set=rows)
        details: dict[int, tuple[RowErrorReason, str]] = {}
        for p, d in self.details.items():
            details.setdefault(parents[p].as_py(), d)
        return _Issue(mask, self.column, self.reason, self.message, details)


def _full(n: int, value: bool) -> pa.BooleanArray:
    return pc.fill_null(pa.nulls(n, pa.bool_()), value)


def _arange(n: int) -> pa.Array:
    return pc.cast(pc.indices_nonzero(_full(n, True)), pa.int64())


def _unmasked(array: pa.Array, t: pa.DataType, nullable: bool) -> pa.Array:
    """``array`` without nulls in non-nullable children that only a null parent hides.

    A row whose optional struct is null may hold nulls in the struct's required children
    (Parquet readers make exactly that), and conforming keeps them: the values are
    masked by the parent, so they are not missing values. Arrow's Parquet writer still
    refuses a non-nullable column with nulls, so the children's validity is dropped (the
    slots' values are never read). By then every null that a valid parent does not hide was
    refused, so only hidden ones are left to drop.
    """
    if pa.types.is_struct(t):
        fields = list(t)
        children = [_unmasked(array.field(i), f.type, f.nullable) for i, f in enumerate(fields)]
        mask = array.is_null() if nullable and array.null_count else None
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        field = t.value_field
        values = _unmasked(array.values, field.type, field.nullable)
        mask = array.is_null() if nullable and array.null_count else None
        return type(array).from_arrays(array.offsets, values, type=t, mask=mask)
    if nullable or not array.null_count:
        return array
    if isinstance(array, pa.ExtensionArray):
        storage = _unmasked(array.storage, t.storage_type, nullable)
        return pa.ExtensionArray.from_storage(t, storage)
    buffers = array.buffers()
    return pa.Array.from_buffers(t, len(array), [None, *buffers[1:]], offset=array.offset)


def _drop_hidden_nulls(rows: pa.Table) -> pa.Table:
    """The conformed rows with hidden nulls dropped (see ``_unmasked``); cheap: no copies."""
    nested = [
        i
        for i, f in enumerate(rows.schema)
        if pa.types.is_struct(f.type) or pa.types.is_large_list(f.type)
    ]
    for i in nested:
        f = rows.schema.field(i)
        chunks = [_unmasked(c, f.type, f.nullable) for c in rows.column(i).chunks]
        rows = rows.set_column(i, f, pa.chunked_array(chunks, type=f.type))
    return rows


def conform_arrow(table: pa.Table, table_schema: Schema) -> DecodedRows:
    """Validates an Arrow table against ``table_schema`` and conforms its valid rows.

    Columns are matched by name (case-sensitive). Types that cast safely are accepted
    (int32 to long, float to double, string to large_string, lossless timestamp units,
    decimal widening, dictionary-encoded to plain, fixed_size_binary[16] to uuid) and
    missing optional columns are filled with nulls. A value that does not cast (out of
    range, unparseable string) invalidates its row only; a column that cannot be cast at all,
    an unknown column or a missing required column invalidates every row.
    """
    target = schema_to_arrow(table_schema)
    n = table.num_rows
    plan = _plain_plan(target, table.schema)
    if plan is not None:
        plain = _conform_plain(table, target, plan)
        if plain is not None:
            return DecodedRows(plain, range(n), [], {}, n)
    table = table.combine_chunks()
    columns = {name: _single_chunk(table.column(i)) for i, name in enumerate(table.column_names)}
    fields = list(zip(target, table_schema.fields, strict=True))
    out, issues = _conform_fields(
        list(zip(table.column_names, columns.values(), strict=True)), fields, "", n, None
    )
    if not issues:
        valid = _drop_hidden_nulls(pa.Table.from_arrays(out, schema=target))
        return DecodedRows(valid, range(n), [], {}, n)  # no per-row work on the clean path
    bad: pa.BooleanArray | None = None
    first = pa.nulls(n, pa.int32())
    for k, issue in enumerate(issues):
        mask = _full(n, True) if issue.mask is None else issue.mask
        fresh = mask if bad is None else pc.and_(mask, pc.invert(bad))
        first = pc.if_else(fresh, pa.scalar(k, pa.int32()), first)
        bad = mask if bad is None else pc.or_(bad, mask)
    assert bad is not None
    good = pc.invert(bad)
    valid_indices = pc.indices_nonzero(good).to_pylist()
    if valid_indices:
        valid = _drop_hidden_nulls(pa.Table.from_arrays(out, schema=target).filter(good))
    else:
        valid = target.empty_table()
    invalid_rows = pc.indices_nonzero(bad)
    first_issue = pc.take(first, invalid_rows).to_pylist()
    rows = invalid_rows.to_pylist()
    return DecodedRows(
        valid=valid,
        valid_indices=valid_indices,
        problems=_ArrowProblems(rows, first_issue, issues),
        invalid_payloads=_ArrowPayloads(rows, table),
        row_count=n,
    )


#: Casts that cannot fail and that a plain plan may make: the wider offsets of the same data.
_WIDENINGS = {
    (pa.string(), pa.large_string()),
    (pa.binary(), pa.large_binary()),
}

#: A plain plan: for each column of the target, its index among the columns sent (None: left
#: out, filled with nulls), its type and whether it must cast to it, and whether it is required.
_PlainPlan = tuple[tuple[int | None, pa.DataType, bool, bool], ...]


@functools.lru_cache(maxsize=256)
def _plain_plan(target: pa.Schema, source: pa.Schema) -> _PlainPlan | None:
    """How to conform batches of ``source`` to ``target`` without checking values, if it can be.

    It can when every column of the target is of a primitive type, every column sent is one
    of them (once), of its exact type or one that only widens to it, and no required column is
    left out: then conforming is at most a widening cast, and only the required columns'
    nulls are left to check. Decided once per pair of schemas (a writer repeats its own);
    None sends the rows through the general path, which finds and reports every problem.
    """
    names = source.names
    if len(set(names)) != len(names) or any(pa.types.is_nested(f.type) for f in target):
        return None
    known = set(target.names)
    if any(name not in known for name in names):
        return None
    plan: list[tuple[int | None, pa.DataType, bool, bool]] = []
    for f in target:
        index = source.get_field_index(f.name)
        if index < 0:
            if not f.nullable:
                return None
            plan.append((None, f.type, False, False))
            continue
        sent = source.field(index).type
        if sent != f.type and (sent, f.type) not in _WIDENINGS:
            return None
        plan.append((index, f.type, sent != f.type, not f.nullable))
    return tuple(plan)


def _conform_plain(table: pa.Table, target: pa.Schema, plan: _PlainPlan) -> pa.Table | None:
    """``table`` conformed by a plain plan; None when a required column holds nulls."""
    n = table.num_rows
    columns: list[pa.ChunkedArray | pa.Array] = []
    for index, t, cast, required in plan:
        if index is None:
            columns.append(pa.nulls(n, t))
            continue
        column = table.column(index)
        if required and column.null_count:
            return None  # the general path tells which rows
        columns.append(column.cast(t) if cast else column)
    return pa.Table.from_arrays(columns, schema=target)


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.array([], column.type)
    return pa.concat_arrays(column.chunks)


def _conform_fields(
    source: list[tuple[str, pa.Array]],
    targets: list[tuple[pa.Field, NestedField]],
    path: str,
    n: int,
    valid: pa.BooleanArray | None,
) -> tuple[list[pa.Array], list[_Issue]]:
    """Conforms the children of a struct (or the columns of a table) to ``targets``."""
    issues: list[_Issue] = []
    by_name: dict[str, pa.Array] = {}
    counts: dict[str, int] = {}
    for name, array in source:
        counts[name] = counts.get(name, 0) + 1
        by_name.setdefault(name, array)
    known = {f.name for f, _ in targets}
    folded = {name.casefold(): name for name in known}
    for name, count in counts.items():
        where = f"{path}.{name}" if path else name
        if count > 1:
            message = f"column {where!r} appears {count} times; column names must be unique"
            issues.append(_Issue(None, where, RowErrorReason.UNKNOWN_COLUMN, message))
        elif name not in known:
            hint = folded.get(name.casefold())
            message = f"unknown column {where!r}: the table has no such column" + (
                f" (did you mean {hint!r}? names are case-sensitive)" if hint else ""
            )
            issues.append(_Issue(None, where, RowErrorReason.UNKNOWN_COLUMN, message))
    out: list[pa.Array] = []
    for arrow_field, iceberg_field in targets:
        where = f"{path}.{arrow_field.name}" if path else arrow_field.name
        array = by_name.get(arrow_field.name)
        if array is None:
            out.append(pa.nulls(n, arrow_field.type))
            if not arrow_field.nullable:
                message = f"required column {where!r} is missing"
                issues.append(_Issue(None, where, RowErrorReason.MISSING_REQUIRED_COLUMN, message))
            continue
        conformed, child_issues = _conform(array, arrow_field, iceberg_field.field_type, where)
        out.append(conformed)
        issues.extend(child_issues)
    return out, [issue.within(valid) for issue in issues]


def _conform(
    array: pa.Array, target: pa.Field, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    """Conforms one array to ``target``; issues are per position of ``array``."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    t = target.type
    n = len(array)
    issues: list[_Issue]
    if pa.types.is_null(array.type):
        out, issues = pa.nulls(n, t), []
    elif isinstance(itype, StructType):
        if not pa.types.is_struct(array.type):
            return _mismatch(array, t, itype, path)
        source = [(array.type.field(i).name, array.field(i)) for i in range(array.type.num_fields)]
        children, issues = _conform_fields(
            source,
            list(zip(t, itype.fields, strict=True)),
            path,
            n,
            array.is_valid() if array.null_count else None,
        )
        out = pa.StructArray.from_arrays(
            children, fields=list(t), mask=array.is_null() if array.null_count else None
        )
    elif isinstance(itype, ListType):
        if not _is_list(array.type):
            return _mismatch(array, t, itype, path)
        out, issues = _conform_list(array, t, itype, path)
    elif isinstance(itype, MapType):
        if not pa.types.is_map(array.type):
            return _mismatch(array, t, itype, path)
        out, issues = _conform_map(array, t, itype, path)
    else:
        out, issues = _conform_primitive(array, t, itype, path)
    if not target.nullable and out.null_count and not any(i.mask is None for i in issues):
        message = f"required column {path!r} is null"
        issues.append(_Issue(out.is_null(), path, RowErrorReason.MISSING_REQUIRED_COLUMN, message))
    return out, issues


def _is_list(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _mismatch(
    array: pa.Array, t: pa.DataType, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    message = f"column {path!r}: expected {type_name(itype)}, got Arrow type {array.type}"
    return pa.nulls(len(array), t), [_Issue(None, path, RowErrorReason.TYPE_MISMATCH, message)]


def _offsets(lengths: pa.Array, offset_type: pa.DataType) -> pa.Array:
    lengths = pc.cast(pc.fill_null(lengths, 0), pa.int64())
    ends = pc.cumulative_sum(lengths) if len(lengths) else pa.array([], pa.int64())
    return pc.cast(pa.concat_arrays([pa.array([0], pa.int64()), ends]), offset_type)


def _conform_list(
    array: pa.Array, t: pa.DataType, itype: ListType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    values = array.flatten()
    parents = pc.cast(pc.list_parent_indices(array), pa.int64())
    lengths = pc.list_value_length(array)
    out_values, element_issues = _conform(
        values, t.value_field, itype.element_type, f"{path}.element"
    )
    mask = array.is_null() if array.null_count else None
    out = pa.LargeListArray.from_arrays(
        _offsets(lengths, pa.int64()), out_values, type=t, mask=mask
    )
    return out, [issue.lifted(parents, len(array)) for issue in element_issues]


def _conform_map(
    array: pa.MapArray, t: pa.MapType, itype: MapType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    # pyarrow's list kernels do not take maps: view the entries as a list of structs.
    entries = pa.ListArray.from_arrays(array.offsets, array.values)
    flat = entries.flatten()
    parents = pc.cast(pc.list_parent_indices(entries), pa.int64())
    keys, key_issues = _conform(flat.field(0), t.key_field, itype.key_type, f"{path}.key")
    items, value_issues = _conform(flat.field(1), t.item_field, itype.value_type, f"{path}.value")
    out = pa.MapArray.from_arrays(
        _offsets(pc.list_value_length(entries), pa.int32()),
        keys,
        items,
        type=t,
        mask=array.is_null() if array.null_count else None,
    )
    valid = array.is_valid() if array.null_count else None
    issues = [i.lifted(parents, len(array)).within(valid) for i in key_issues + value_issues]
    return out, issues


def _castable(source: pa.DataType, itype: IcebergType) -> bool:
    """Which Arrow types may be cast to which Iceberg type (values are still checked)."""
    types = pa.types
    stringy = (
        types.is_string(source) or types.is_large_string(source) or types.is_string_view(source)
    )
    binary = (
        types.is_binary(source)
        or types.is_large_binary(source)
        or types.is_binary_view(source)
        or types.is_fixed_size_binary(source)
    )
    numeric = types.is_integer(source) or types.is_floating(source) or types.is_decimal(source)
    if isinstance(itype, (IntegerType, LongType, FloatType, DoubleType, DecimalType)):
        return bool(numeric or stringy)
    if isinstance(itype, StringType):
        return bool(stringy)
    if isinstance(itype, BooleanType):
        return bool(types.is_boolean(source))
    if isinstance(itype, DateType):
        return bool(types.is_date(source) or stringy)
    if isinstance(itype, TimeType):
        return bool(types.is_time(source))
    if isinstance(itype, TimestamptzType):
        return bool((types.is_timestamp(source) and source.tz is not None) or stringy)
    if isinstance(itype, TimestampType):
        return bool((types.is_timestamp(source) and source.tz is None) or stringy)
    if isinstance(itype, UUIDType):
        return bool(source == pa.uuid() or source == pa.binary(16))
    if isinstance(itype, (BinaryType, FixedType)):
        return bool(binary)
    return False


def _conform_primitive(
    array: pa.Array, t: pa.DataType, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    if array.type == t:
        return array, []
    if not _castable(array.type, itype):
        return _mismatch(array, t, itype, path)
    try:
        return pc.cast(array, t, safe=True), []
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _mismatch(array, t, itype, path)
    except pa.ArrowInvalid:
        pass
    return _cast_by_parts(array, t, itype, path)


def _cast_by_parts(
    array: pa.Array, t: pa.DataType, itype: IcebergType, path: str
) -> tuple[pa.Array, list[_Issue]]:
    """Casts a column whose cast failed, isolating the failing values by bisection."""
    pieces: list[tuple[int, pa.Array]] = []
    details: dict[int, tuple[RowErrorReason, str]] = {}
    unresolved: list[tuple[int, int, str]] = []
    attempts = 0
    stack = [(0, len(array))]
    while stack:
        start, length = stack.pop()
        part = array.slice(start, length)
        attempts += 1
        try:
            pieces.append((start, pc.cast(part, t, safe=True)))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            error = str(exc)
        if length == 1:
            pieces.append((start, pa.nulls(1, t)))
            details[start] = _cast_problem(part[0], array.type, itype, path, error)
        elif attempts >= MAX_CAST_ATTEMPTS:
            pieces.append((start, pa.nulls(length, t)))
            unresolved.append((start, length, error))
        else:
            half = length // 2
            stack.append((start + half, length - half))
            stack.append((start, half))
    pieces.sort(key=lambda piece: piece[0])
    out = pa.concat_arrays([piece for _, piece in pieces])
    positions = list(details) + [p for s, ln, _ in unresolved for p in range(s, s + ln)]
    for start, length, error in unresolved:
        message = (
            f"column {path!r}: expected {type_name(itype)}; too many invalid values to check "
            f"them one by one: {error}"
        )
        for p in range(start, start + length):
            details[p] = (RowErrorReason.TYPE_MISMATCH, message)
    mask = pc.is_in(_arange(len(array)), value_set=pa.array(positions, pa.int64()))
    first = next(iter(details.values()))
    return out, [_Issue(mask, path, first[0], first[1], details)]


def _cast_problem(
    value: pa.Scalar, source: pa.DataType, itype: IcebergType, path: str, error: str
) -> tuple[RowErrorReason, str]:
    out_of_range = any(hint in error for hint in _OUT_OF_RANGE_HINTS)
    reason = RowErrorReason.VALUE_OUT_OF_RANGE if out_of_range else RowErrorReason.TYPE_MISMATCH
    try:
        shown = repr(value.as_py())
    except (ValueError, OverflowError, pa.ArrowException):  # e.g. nanoseconds
        shown = _scalar_text(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    message = f"column {path!r}: expected {type_name(itype)}, got {source} {shown}: {error}"
    return reason, message


class _ArrowProblems(Sequence[RowProblem]):
    """The first problem of each invalid Arrow row, built on access."""

    def __init__(self, rows: list[int], first_issue: list[int], issues: list[_Issue]) -> None:
        self._rows = rows
        self._first = first_issue
        self._issues = issues

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> RowProblem: ...
    @overload
    def __getitem__(self, index: slice) -> list[RowProblem]: ...
    def __getitem__(self, index: int | slice) -> RowProblem | list[RowProblem]:
        if isinstance(index, slice):
            return [self._problem(i) for i in range(*index.indices(len(self._rows)))]
        return self._problem(range(len(self._rows))[index])

    def _problem(self, i: int) -> RowProblem:
        row = self._rows[i]
        issue = self._issues[self._first[i]]
        reason, message = issue.details.get(row, (issue.reason, issue.message))
        return RowProblem(row, issue.column, reason, message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} row problems>"


class _ArrowPayloads(Mapping[int, str]):
    """Invalid Arrow rows rendered as JSON objects, on access."""

    def __init__(self, rows: list[int], table: pa.Table) -> None:
        self._rows = rows
        self._set = set(rows)
        self._table = table

    def __getitem__(self, row: int) -> str:
        if row not in self._set:
            raise KeyError(row)
        obj: dict[str, Any] = {}
        for name, column in zip(self._table.column_names, self._table.columns, strict=True):
            scalar = column[row]
            try:
                obj[name] = json_value(scalar.as_py())
            except (ValueError, OverflowError, TypeError, pa.ArrowException):
                obj[name] = _scalar_text(scalar)
        return json.dumps(obj, ensure_ascii=False, default=str)

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"<{len(self)} invalid payloads>"


def _scalar_text(scalar: pa.Scalar) -> str:
    """A scalar Python cannot hold (nanoseconds, years past 9999) as Arrow formats it."""
    try:
        return str(pc.cast(scalar, pa.string()).as_py())
    except (pa.ArrowException, ValueError):
        return f"<unprintable {scalar.type} value>"
