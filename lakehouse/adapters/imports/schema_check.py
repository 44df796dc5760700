"""The import's schema check: whether a file's columns fit the table, before anything is written.

The rules are ``conform_arrow``'s (the ingest path's own), applied to a one-row probe of the
file's schema, so an import accepts exactly what ``WriteRows`` accepts.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema
from pyiceberg.types import IcebergType, ListType, MapType, NestedField, StructType

from lakehouse.adapters.imports.read_errors import row_problem
from lakehouse.adapters.imports.sources import Source
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.rows.arrow_conform import conform_arrow


def _relaxed_type(t: IcebergType) -> IcebergType:
    if isinstance(t, StructType):
        return StructType(*(_relaxed_field(f) for f in t.fields))
    if isinstance(t, ListType):
        return ListType(t.element_id, _relaxed_type(t.element_type), element_required=False)
    if isinstance(t, MapType):
        return MapType(
            t.key_id, t.key_type, t.value_id, _relaxed_type(t.value_type), value_required=False
        )
    return t


def _relaxed_field(f: NestedField) -> NestedField:
    return NestedField(f.field_id, f.name, _relaxed_type(f.field_type), required=False)


def _relaxed(schema: Schema) -> Schema:
    """The schema with every field optional.

    A probe of nulls checked against it reports type and name problems only: required
    columns are checked by name, and their values when the rows are read.
    """
    return Schema(*(_relaxed_field(f) for f in schema.fields), schema_id=schema.schema_id)


def _probe_key(t: pa.DataType) -> pa.Array | None:
    """One non-null value of a map key type (Arrow maps refuse null keys), if easy to make."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.array([""], t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.array([b""], t)
    if pa.types.is_fixed_size_binary(t):
        return pa.array([bytes(t.byte_width)], t)
    try:
        return pc.cast(pa.array([0], pa.int32()), t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _probe(t: pa.DataType) -> pa.Array:
    """One row of type ``t``: containers present (so their children get checked), leaves null."""
    if pa.types.is_dictionary(t):
        return _probe(t.value_type)
    if pa.types.is_struct(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays([_probe(f.type) for f in fields], fields=fields)
    if pa.types.is_list(t):
        return pa.ListArray.from_arrays(pa.array([0, 1], pa.int32()), _probe(t.value_type), type=t)
    if pa.types.is_large_list(t):
        offsets = pa.array([0, 1], pa.int64())
        return pa.LargeListArray.from_arrays(offsets, _probe(t.value_type), type=t)
    if pa.types.is_map(t):
        key = _probe_key(t.key_type)
        if key is not None:
            offsets = pa.array([0, 1], pa.int32())
            return pa.MapArray.from_arrays(offsets, key, _probe(t.item_type), type=t)
    return pa.nulls(1, t)


def _missing_required(
    fields: Sequence[pa.Field], iceberg_fields: Sequence[NestedField], path: str
) -> str | None:
    """The dotted path of the first required table column the file lacks, if any."""
    present = {f.name: f for f in fields}
    for nested in iceberg_fields:
        where = f"{path}.{nested.name}" if path else nested.name
        found = present.get(nested.name)
        if found is None:
            if nested.required:
                return where
            continue
        t, it = found.type, nested.field_type
        if isinstance(it, StructType) and pa.types.is_struct(t):
            inner = _missing_required(list(t), it.fields, where)
        elif (
            isinstance(it, ListType)
            and isinstance(it.element_type, StructType)
            and (pa.types.is_list(t) or pa.types.is_large_list(t))
            and pa.types.is_struct(t.value_type)
        ):
            inner = _missing_required(
                list(t.value_type), it.element_type.fields, f"{where}.element"
            )
        else:
            inner = None
        if inner is not None:
            return inner
    return None


class SchemaCheck:
    """Whether a file's columns fit the table.

    Every name known, every type castable, every required column present: the rules are
    ``conform_arrow``'s, the ingest path's own, so an import accepts what WriteRows accepts.
    """

    def __init__(self, schema: Schema) -> None:
        self._schema = schema
        self._relaxed = _relaxed(schema)

    def check(self, source: Source, file_schema: pa.Schema) -> None:
        """Refuses a file whose columns do not fit the table.

        Raises:
            InvalidArgument: Naming the file and the first column that does not fit.
        """
        probe = pa.Table.from_arrays(
            [_probe(f.type) for f in file_schema], names=list(file_schema.names)
        )
        decoded = conform_arrow(probe, self._relaxed)
        if decoded.problems:
            problem = decoded.problems[0]
            raise InvalidArgument.field(source.field, f"{source.uri}: {row_problem(problem)}")
        missing = _missing_required(list(file_schema), self._schema.fields, "")
        if missing is not None:
            raise InvalidArgument.field(
                source.field, f"{source.uri}: required column {missing!r} is missing"
            )
