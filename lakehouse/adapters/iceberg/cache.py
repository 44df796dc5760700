"""Loaded tables kept per process: their lazy attributes filled once, outside the lock."""

from __future__ import annotations

import functools
import inspect

from pyiceberg.schema import Schema
from pyiceberg.table import Table as IcebergTable
from pyiceberg.types import ListType, MapType, StructType


def fill_lazy_caches(table: IcebergTable) -> None:
    """Computes the lookups pyiceberg caches lazily on a table's schemas and specs, up front.

    A cached table is shared by the pool's threads. pyiceberg stores ``cached_property``
    values in an object's ``__dict__`` on first use, and every transaction deep-copies those
    same objects: a first use on one thread while another thread copied failed the copy with
    "dictionary changed size during iteration" (an INTERNAL found by the fuzz test). Filled in
    before the table is shared, these objects are only read afterwards.
    """
    pending: list[object] = [*table.metadata.schemas, *table.metadata.partition_specs]
    while pending:
        obj = pending.pop()
        for attribute in _lazy_attributes(type(obj)):
            getattr(obj, attribute)
        if isinstance(obj, Schema | StructType):
            pending += [f.field_type for f in obj.fields]
        elif isinstance(obj, ListType):
            pending.append(obj.element_type)
        elif isinstance(obj, MapType):
            pending += [obj.key_type, obj.value_type]


_LAZY_ATTRIBUTES: dict[type, tuple[str, ...]] = {}


def _lazy_attributes(cls: type) -> tuple[str, ...]:
    """The ``cached_property`` names of a class (its bases' included), looked up once."""
    names = _LAZY_ATTRIBUTES.get(cls)
    if names is None:
        names = _LAZY_ATTRIBUTES[cls] = tuple(
            name
            for name, value in inspect.getmembers_static(cls)
            if isinstance(value, functools.cached_property)
        )
    return names
