"""Applying domain table changes to a pyiceberg transaction, one change at a time.

Each change runs in its own pyiceberg update so that a rejected change is reported with its
index; the transaction is committed only when every change applied, so a rejected change
leaves the table untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyiceberg.exceptions import ResolveError, ValidationError
from pyiceberg.table import TableProperties, Transaction
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, UNSORTED_SORT_ORDER_ID, NullOrder
from pyiceberg.table.update import (
    AddSortOrderUpdate,
    AssertDefaultSortOrderId,
    SetDefaultSortOrderUpdate,
    TableUpdate,
)
from pyiceberg.transforms import UnknownTransform, parse_transform
from pyiceberg.types import (
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
)

from lakehouse.adapters.pyiceberg_private.commits import apply_updates
from lakehouse.domain.changes import (
    AddColumn,
    AddPartitionField,
    DropColumn,
    MakeColumnOptional,
    RemovePartitionField,
    RemoveProperties,
    RenameColumn,
    ReplaceSortOrder,
    SetProperties,
    TableChange,
    UpdateColumnDoc,
    WidenColumnType,
)
from lakehouse.domain.errors import FieldViolation, InvalidArgument
from lakehouse.domain.table_properties import (
    RESERVED_PROPERTIES,
    compression_level_problem,
    table_property_problem,
)

_COMPRESSION_KEYS = frozenset(
    {TableProperties.PARQUET_COMPRESSION, TableProperties.PARQUET_COMPRESSION_LEVEL}
)


def _check_compression(properties: Mapping[str, str], field: str) -> None:
    """Refuses a change that leaves the table a compression level its codec cannot take.

    Raises:
        ChangeRejected: With reason INVALID_PROPERTY on ``field``.
    """
    problem = compression_level_problem(properties)
    if problem is not None:
        raise ChangeRejected(field, problem[1], "INVALID_PROPERTY")


class ChangeRejected(ValueError):
    """A change cannot apply; ``field`` names the part of the change that is wrong."""

    def __init__(self, field: str, description: str, reason: str = "INCOMPATIBLE_CHANGE") -> None:
        super().__init__(description)
        self.field = field
        self.description = description
        self.reason = reason


def _is_widening(old: IcebergType, new: IcebergType) -> bool:
    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    if isinstance(old, DecimalType) and isinstance(new, DecimalType):
        return new.scale == old.scale and new.precision >= old.precision
    return old == new


def _column(tx: Transaction, path: str, field: str) -> NestedField:
    try:
        return tx.table_metadata.schema().find_field(path, case_sensitive=True)
    except (ValueError, ResolveError):
        raise ChangeRejected(field, f"no column {path!r}") from None


def _transform(text: str, field: str) -> object:
    transform = parse_transform(text or "identity")
    if isinstance(transform, UnknownTransform):
        raise ChangeRejected(field, f"unknown transform {text!r}")
    return transform


def _make_unsorted(tx: Transaction) -> None:
    """Makes the table unsorted, around a pyiceberg bug.

    pyiceberg's ``update_sort_order`` adds the unsorted order (id 0) and then asks for the
    "last added" one, which it takes to be the highest id: on a table created sorted (order
    1, no order 0) the commit failed with ValueError (an INTERNAL found by the fuzz test).
    """
    metadata = tx.table_metadata
    if metadata.default_sort_order_id == UNSORTED_SORT_ORDER_ID:
        return
    updates: list[TableUpdate] = []
    if metadata.sort_order_by_id(UNSORTED_SORT_ORDER_ID) is None:
        updates.append(AddSortOrderUpdate.model_validate({"sort-order": UNSORTED_SORT_ORDER}))
    updates.append(
        SetDefaultSortOrderUpdate.model_validate({"sort-order-id": UNSORTED_SORT_ORDER_ID})
    )
    requirement = AssertDefaultSortOrderId.model_validate(
        {"default-sort-order-id": metadata.default_sort_order_id}
    )
    apply_updates(tx, tuple(updates), requirement)


def apply_change(tx: Transaction, change: TableChange) -> None:
    """Applies one change to ``tx``.

    Raises:
        ChangeRejected: The change is incompatible with the table (pyiceberg's own checks
            included).
    """
    if isinstance(change, AddColumn):
        path = (*change.parent.split("."), change.name) if change.parent else change.name
        if change.parent:
            _column(tx, change.parent, "parent")
        with tx.update_schema(allow_incompatible_changes=False) as update:
            update.add_column(path, change.type, doc=change.doc, required=change.required)
    elif isinstance(change, RenameColumn):
        _column(tx, change.column, "column")
        with tx.update_schema() as update:
            update.rename_column(change.column, change.new_name)
    elif isinstance(change, DropColumn):
        column = _column(tx, change.column, "column")
        if column.field_id in tx.table_metadata.schema().identifier_field_ids:
            raise ChangeRejected("column", f"{change.column!r} is an identifier column")
        with tx.update_schema() as update:
            update.delete_column(change.column)
    elif isinstance(change, WidenColumnType):
        column = _column(tx, change.column, "column")
        if not _is_widening(column.field_type, change.type):
            raise ChangeRejected(
                "type",
                f"cannot change {change.column!r} from {column.field_type} to {change.type}: "
                "only int->long, float->double and a larger decimal precision are allowed",
            )
        with tx.update_schema() as update:
            update.update_column(change.column, field_type=change.type)
    elif isinstance(change, MakeColumnOptional):
        _column(tx, change.column, "column")
        with tx.update_schema() as update:
            update.make_column_optional(change.column)
    elif isinstance(change, UpdateColumnDoc):
        _column(tx, change.column, "column")
        with tx.update_schema() as update:
            update.update_column(change.column, doc=change.doc)
    elif isinstance(change, SetProperties):
        problem = table_property_problem(change.properties, creating=False)
        if problem is not None:
            bad_key, description = problem
            raise ChangeRejected(f"properties[{bad_key[:64]!r}]", description, "INVALID_PROPERTY")
        changed = sorted(_COMPRESSION_KEYS & set(change.properties))
        if changed:
            # The level must suit the codec the table writes with, and either may change:
            # the field names the level if the change sets it, else the codec.
            _check_compression(
                {**tx.table_metadata.properties, **change.properties},
                f"properties[{changed[-1]!r}]",
            )
        tx.set_properties(change.properties)
    elif isinstance(change, RemoveProperties):
        reserved = sorted(set(change.keys) & RESERVED_PROPERTIES)
        if reserved:
            raise ChangeRejected("keys", f"properties {reserved} are managed by the table format")
        # Removing a key that is not set is a no-op; pyiceberg would raise KeyError instead
        # (an INTERNAL found by the fuzz test).
        present = [k for k in change.keys if k in tx.table_metadata.properties]
        if _COMPRESSION_KEYS & set(present):
            # Removing the codec makes the level apply to pyiceberg's default codec.
            left = {k: v for k, v in tx.table_metadata.properties.items() if k not in present}
            _check_compression(left, "keys")
        if present:
            tx.remove_properties(*present)
    elif isinstance(change, AddPartitionField):
        _column(tx, change.source_column, "field.source_column")
        transform = _transform(change.transform, "field.transform")
        with tx.update_spec() as spec:
            spec.add_field(change.source_column, transform, change.name)  # type: ignore[arg-type]
    elif isinstance(change, RemovePartitionField):
        names = {f.name for f in tx.table_metadata.spec().fields}
        if change.name not in names:
            raise ChangeRejected("name", f"no partition field named {change.name!r}")
        with tx.update_spec() as spec:
            spec.remove_field(change.name)
    elif isinstance(change, ReplaceSortOrder) and not change.keys:
        _make_unsorted(tx)
    elif isinstance(change, ReplaceSortOrder):
        with tx.update_sort_order() as order:
            for i, key in enumerate(change.keys):
                where = f"sort_order.fields[{i}]"
                _column(tx, key.column, f"{where}.source_column")
                transform = _transform(key.transform, f"{where}.transform")
                nulls = NullOrder.NULLS_FIRST if key.nulls_first else NullOrder.NULLS_LAST
                if key.descending:
                    order.desc(key.column, transform, nulls)  # type: ignore[arg-type]
                else:
                    order.asc(key.column, transform, nulls)  # type: ignore[arg-type]
    else:  # pragma: no cover - the union above is exhaustive
        raise ChangeRejected("change", f"unsupported change {change!r}")


_CHANGE_FIELDS = {
    AddColumn: "add_column",
    RenameColumn: "rename_column",
    DropColumn: "drop_column",
    WidenColumnType: "widen_column_type",
    MakeColumnOptional: "make_column_optional",
    UpdateColumnDoc: "update_column_doc",
    SetProperties: "set_properties",
    RemoveProperties: "remove_properties",
    AddPartitionField: "add_partition_field",
    RemovePartitionField: "remove_partition_field",
    ReplaceSortOrder: "replace_sort_order",
}


def apply_changes(tx: Transaction, changes: Sequence[TableChange]) -> None:
    """Applies every change in order.

    Raises:
        InvalidArgument: The first change that cannot apply (reason INCOMPATIBLE_CHANGE),
            with the field ``changes[i].<kind>.<part>``.
    """
    for i, change in enumerate(changes):
        prefix = f"changes[{i}].{_CHANGE_FIELDS[type(change)]}"
        try:
            apply_change(tx, change)
        except ChangeRejected as exc:
            raise _rejected(f"{prefix}.{exc.field}", exc.description, exc.reason) from exc
        except (ValueError, ValidationError, ResolveError, TypeError) as exc:
            raise _rejected(prefix, str(exc).splitlines()[0] or type(exc).__name__) from exc


def _rejected(field: str, description: str, reason: str = "INCOMPATIBLE_CHANGE") -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {description}",
        violations=[FieldViolation(field, description)],
        reason=reason,
    )
