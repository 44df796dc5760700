"""Raw SQL on the SQL catalog's own tables, where pyiceberg's API costs a round trip per item."""

from __future__ import annotations

from pyiceberg.catalog.sql import IcebergNamespaceProperties, IcebergTables, SqlCatalog
from sqlalchemy import bindparam, select

from lakehouse.adapters.iceberg.conversions import public_namespace_properties

# One precompiled statement: revalidating a cached table is a single indexed lookup.
LOCATION_QUERY = select(IcebergTables.metadata_location).where(
    IcebergTables.catalog_name == bindparam("catalog"),
    IcebergTables.table_namespace == bindparam("namespace"),
    IcebergTables.table_name == bindparam("name"),
)


RAW_LOCATION_QUERY = {
    style: "SELECT metadata_location FROM iceberg_tables "
    f"WHERE catalog_name = {mark} AND table_namespace = {mark} AND table_name = {mark}"
    for style, mark in (("qmark", "?"), ("format", "%s"), ("pyformat", "%s"))
}


#: Every table's metadata location in one catalog (for RegisterTable's overlap check).
ALL_LOCATIONS_QUERY = select(
    IcebergTables.table_namespace, IcebergTables.table_name, IcebergTables.metadata_location
).where(IcebergTables.catalog_name == bindparam("catalog"))


#: Namespaces per query: SQLite allows 999 bound parameters in older builds.
NAMESPACES_PER_QUERY = 500


def sql_namespace_properties(c: SqlCatalog, names: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The properties of many namespaces in one query per 500 names.

    pyiceberg's ``load_namespace_properties`` costs three queries a namespace, so a page of
    1,000 namespaces cost 3,000 (found by the fuzz test: ListNamespaces was its slowest call).
    A namespace that only holds tables has no property rows; it is listed with none.
    """
    found: dict[str, dict[str, str]] = {}
    props = IcebergNamespaceProperties
    with c.engine.connect() as conn:
        for start in range(0, len(names), NAMESPACES_PER_QUERY):
            chunk = names[start : start + NAMESPACES_PER_QUERY]
            rows = conn.execute(
                select(props.namespace, props.property_key, props.property_value).where(
                    props.catalog_name == c.name, props.namespace.in_(chunk)
                )
            )
            for namespace, key, value in rows:
                found.setdefault(namespace, {})[key] = value
    return [(n, public_namespace_properties(found.get(n, {}))) for n in names]
