"""What RegisterTable refuses: shared or foreign locations, unusable properties, files outside."""

from __future__ import annotations

from collections.abc import Sequence

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io import FileIO
from pyiceberg.table.metadata import TableMetadata

from lakehouse.adapters.iceberg.fast_paths import ALL_LOCATIONS_QUERY
from lakehouse.adapters.iceberg.locations import canonical_location, within_location
from lakehouse.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
)
from lakehouse.domain.table_properties import property_value_problem


def refuse_shared_location(c: Catalog, location: str) -> None:
    """Refuses a table folder that is, contains or lies in another table's (SQL catalogs).

    A table's folder is taken from its metadata location (``<folder>/metadata/<file>``, the
    layout this service writes; ``write.metadata.path`` is refused). A REST catalog offers no
    cheap listing and is not checked.

    Raises:
        FailedPrecondition: ``LOCATION_IN_USE``, naming the other table.
    """
    if not isinstance(c, SqlCatalog):
        return
    new = location.rstrip("/") + "/"
    with c.engine.connect() as conn:
        rows = conn.execute(ALL_LOCATIONS_QUERY, {"catalog": c.name}).all()
    for other_namespace, other_name, metadata_location in rows:
        folder, sep, _ = str(metadata_location or "").rpartition("/metadata/")
        if not sep:
            continue
        other = folder.rstrip("/") + "/"
        if new.startswith(other) or other.startswith(new):
            raise FailedPrecondition(
                f"the table's folder {location} overlaps the folder of table "
                f"{other_namespace}.{other_name}; purging either would delete the other's files",
                reason="LOCATION_IN_USE",
                metadata={"other_namespace": other_namespace, "other_table": other_name},
            )


def refuse_unusable_properties(metadata: TableMetadata) -> None:
    """Refuses to register a table carrying a property value the writers cannot use.

    CreateTable and UpdateTable refuse such values, but a table's metadata file may say
    anything: ``write.parquet.page-row-limit: 0`` made every write spin a catalog thread
    forever, an unknown codec failed every write. Keys no client may set are not refused
    here (other engines write their own); the ones that name paths or classes are ignored
    by ``pyiceberg_private``.

    Raises:
        InvalidArgument: ``INVALID_PROPERTY`` on ``metadata_location``, naming the key.
    """
    problem = property_value_problem(metadata.properties)
    if problem is not None:
        key, description = problem
        raise InvalidArgument.field(
            "metadata_location",
            f"the table's property {key[:64]!r} cannot be used: {description}",
            reason="INVALID_PROPERTY",
        )


def refuse_outside(location: str, roots: Sequence[str], what: str) -> None:
    """Refuses a registered table's ``location`` unless it lies inside one of ``roots``.

    ``roots`` are the warehouse, then ``catalog.register_prefixes``. A REST catalog's
    warehouse is a name: its server places tables, and nothing is checked.

    Raises:
        InvalidArgument: ``LOCATION_OUTSIDE_WAREHOUSE`` on ``metadata_location``; the message
            names what was outside, not the path (it may be a server path).
    """
    if canonical_location(roots[0]) is None:  # a REST catalog's warehouse name
        return
    if not any(within_location(location, root) for root in roots):
        raise InvalidArgument.field(
            "metadata_location",
            f"the table's {what} lies outside the warehouse; only tables whose files are all "
            "inside it (or under catalog.register_prefixes) can be registered",
            reason="LOCATION_OUTSIDE_WAREHOUSE",
        )


#: Most manifests plus file entries RegisterTable reads to check where a table's files are.
#: It bounds the work of one call (each entry is a few hundred bytes of Avro); a larger
#: table is refused rather than half checked.
MAX_REGISTER_CHECKED_ENTRIES = 200_000


def refuse_files_outside(metadata: TableMetadata, io: FileIO, roots: Sequence[str]) -> None:
    """Refuses a table to register unless every file its metadata reaches is in the warehouse.

    Walks the table location, the statistics files, the previous metadata files, every
    snapshot's manifest list, each distinct manifest and every entry in it (deleted ones
    included: time travel and the change feed read them); each path is checked before it is
    read. At most ``MAX_REGISTER_CHECKED_ENTRIES`` manifests and entries are read.

    Raises:
        InvalidArgument: ``LOCATION_OUTSIDE_WAREHOUSE``, or ``TABLE_TOO_LARGE_TO_REGISTER``.
    """
    if canonical_location(roots[0]) is None:
        return
    refuse_outside(metadata.location, roots, "location")
    for stats in (*metadata.statistics, *metadata.partition_statistics):
        refuse_outside(stats.statistics_path, roots, "statistics file")
    for logged in metadata.metadata_log:  # snapshot expiry deletes these
        refuse_outside(logged.metadata_file, roots, "previous metadata file")
    budget = MAX_REGISTER_CHECKED_ENTRIES
    seen: set[str] = set()
    for snapshot in metadata.snapshots:
        refuse_outside(snapshot.manifest_list, roots, "manifest list")
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            refuse_outside(manifest.manifest_path, roots, "manifest")
            budget -= 1
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                budget -= 1
                if budget < 0:
                    raise InvalidArgument.field(
                        "metadata_location",
                        f"the table has more than {MAX_REGISTER_CHECKED_ENTRIES} manifests "
                        "and files to check",
                        reason="TABLE_TOO_LARGE_TO_REGISTER",
                    )
                refuse_outside(entry.data_file.file_path, roots, "data file")
