"""Table changes as domain values: what UpdateTable applies, in order, in one commit."""

from __future__ import annotations

from dataclasses import dataclass

from pyiceberg.types import IcebergType


@dataclass(frozen=True)
class AddColumn:
    """Adds an optional column (or a required one to an empty table) under ``parent``."""

    parent: str
    name: str
    type: IcebergType
    required: bool
    doc: str | None


@dataclass(frozen=True)
class RenameColumn:
    """Renames the column at a dotted path (the last element only)."""

    column: str
    new_name: str


@dataclass(frozen=True)
class DropColumn:
    """Drops a column."""

    column: str


@dataclass(frozen=True)
class WidenColumnType:
    """Widens a primitive column's type (int->long, float->double, decimal precision)."""

    column: str
    type: IcebergType


@dataclass(frozen=True)
class MakeColumnOptional:
    """Makes a required column optional."""

    column: str


@dataclass(frozen=True)
class UpdateColumnDoc:
    """Sets (or, with None, clears) a column's documentation."""

    column: str
    doc: str | None


@dataclass(frozen=True)
class SetProperties:
    """Sets table properties."""

    properties: dict[str, str]


@dataclass(frozen=True)
class RemoveProperties:
    """Removes table properties."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class AddPartitionField:
    """Adds a partition field (partition evolution)."""

    source_column: str
    transform: str
    name: str | None


@dataclass(frozen=True)
class RemovePartitionField:
    """Removes a partition field by name."""

    name: str


@dataclass(frozen=True)
class SortKey:
    """One key of a sort order."""

    column: str
    transform: str
    descending: bool
    nulls_first: bool


@dataclass(frozen=True)
class ReplaceSortOrder:
    """Replaces the sort order; no keys means unsorted."""

    keys: tuple[SortKey, ...]


TableChange = (
    AddColumn
    | RenameColumn
    | DropColumn
    | WidenColumnType
    | MakeColumnOptional
    | UpdateColumnDoc
    | SetProperties
    | RemoveProperties
    | AddPartitionField
    | RemovePartitionField
    | ReplaceSortOrder
)
